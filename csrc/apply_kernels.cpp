// apply's float32 AVX2 passes that multiply and mask in one go.
#include "apply_kernels.h"

#if defined(CAMDROP_X86)
#include <immintrin.h>
#endif

namespace camdrop {

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
