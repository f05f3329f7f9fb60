// apply's vectorised loops: the scaled copy (built for AVX2 and the baseline) and the float32
// AVX2 passes that multiply and mask in one go.
#include "apply_kernels.h"

#include "floats.h"

#if defined(CAMDROP_X86)
#include <immintrin.h>
#endif

namespace camdrop {

namespace {

// One element type's loop: Load widens to the compute type, Store rounds back once. Inlined into
// each clone of scale_run, so it is compiled for AVX2 there.
template <typename T, typename S, S (*Load)(T), T (*Store)(S)>
__attribute__((always_inline)) inline void scale_loop(const T *x, int64_t sx, T *y, int64_t sy, int64_t n, S s) {
    if (x == y && sx == sy) { // in place: one pointer, so nothing is assumed about aliasing
        for (int64_t k = 0; k < n; ++k) y[k * sy] = Store(Load(y[k * sy]) * s);
        return;
    }
    const T *CAMDROP_RESTRICT xs = x; // distinct from y: the caller checked that no element is shared
    T *CAMDROP_RESTRICT ys = y;
    if (sx == 1 && sy == 1)
        for (int64_t k = 0; k < n; ++k) ys[k] = Store(Load(xs[k]) * s);
    else
        for (int64_t k = 0; k < n; ++k) ys[k * sy] = Store(Load(xs[k * sx]) * s);
}

template <typename T>
inline T same(T v) {
    return v;
}

} // namespace

// The multiply is the bulk of the work, and torch's own multiply uses the wider vectors too.
CAMDROP_CLONES void scale_run(int type, const char *x, int64_t sx, char *y, int64_t sy, int64_t n, double s64,
                              float s32) {
    switch (type) {
    case kF32:
        scale_loop<float, float, same<float>, same<float>>(reinterpret_cast<const float *>(x), sx,
                                                             reinterpret_cast<float *>(y), sy, n, s32);
        break;
    case kF64:
        scale_loop<double, double, same<double>, same<double>>(reinterpret_cast<const double *>(x), sx,
                                                                 reinterpret_cast<double *>(y), sy, n, s64);
        break;
    case kBF16:
        scale_loop<uint16_t, float, bf16_to_f32, f32_to_bf16>(reinterpret_cast<const uint16_t *>(x), sx,
                                                              reinterpret_cast<uint16_t *>(y), sy, n, s32);
        break;
    default:
        scale_loop<uint16_t, float, f16_to_f32, f32_to_f16>(reinterpret_cast<const uint16_t *>(x), sx,
                                                            reinterpret_cast<uint16_t *>(y), sy, n, s32);
        break;
    }
}

#if defined(CAMDROP_X86)
// 8 lanes at a time: a lane's bit shifted down by its lane index, then a compare makes an all-ones
// keep mask; AND with it zeroes the dropped lanes' bits exactly.
CAMDROP_AVX2 void scale_masked_f32(const float *x, float *y, int64_t n, float s, const uint32_t *bits) {
    const __m256 vs = _mm256_set1_ps(s);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), one = _mm256_set1_epi32(1);
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const uint32_t w = (bits[k >> 5] >> (k & 31)) & 0xFFu; // k is a multiple of 8: these 8 bits
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + k), vs);
        if (w) {
            const __m256i b = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)w), lane), one);
            v = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, _mm256_setzero_si256())));
        }
        _mm256_storeu_ps(y + k, v);
    }
    for (; k < n; ++k) y[k] = ((bits[k >> 5] >> (k & 31)) & 1) ? 0.0f : x[k] * s;
}

CAMDROP_AVX2 void scale_keep_f32(const float *x, float *y, int64_t n, float s, const uint32_t *keep) {
    const __m256 vs = _mm256_set1_ps(s);
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + k), vs);
        _mm256_storeu_ps(y + k, _mm256_and_ps(v, _mm256_loadu_ps(reinterpret_cast<const float *>(keep + k))));
    }
    for (; k < n; ++k) y[k] = keep[k] ? x[k] * s : 0.0f;
}

// A mask word's bytes turned into 8-lane keep masks (byte AND lane bit == 0), ANDed into y; clear
// bytes are skipped.
CAMDROP_AVX2 void mask_plane_f32(float *y, int64_t n, const uint32_t *bits) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128), zero = _mm256_setzero_si256();
    int64_t k = 0;
    for (; k + 32 <= n; k += 32) {
        uint32_t w = bits[k >> 5];
        for (int q = 0; w; ++q, w >>= 8) {
            if (!(w & 0xFFu)) continue;
            const __m256i keep =
                _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)(w & 0xFFu)), lane_bit), zero);
            float *p = y + k + 8 * q;
            _mm256_storeu_ps(p, _mm256_and_ps(_mm256_loadu_ps(p), _mm256_castsi256_ps(keep)));
        }
    }
    for (; k < n; ++k)
        if ((bits[k >> 5] >> (k & 31)) & 1) y[k] = 0.0f;
}
#endif

} // namespace camdrop
