// Philox4x32-10 in batches: SSE2 (every x86-64 CPU) and AVX2 (picked at run time).
#include "philox.h"

#if defined(CAMDROP_X86)
#include <immintrin.h>
#endif

namespace camdrop {

#if defined(CAMDROP_X86)
namespace {

// hi and lo 32-bit halves of a * b for four uint32 lanes: pmuludq multiplies the even lanes;
// the odd lanes are shifted down first, and the halves are interleaved back.
inline void mulhilo4(__m128i a, __m128i b, __m128i *hi, __m128i *lo) {
    const __m128i low = _mm_set1_epi64x(0xFFFFFFFFll);
    const __m128i even = _mm_mul_epu32(a, b);
    const __m128i odd = _mm_mul_epu32(_mm_srli_epi64(a, 32), _mm_srli_epi64(b, 32));
    *lo = _mm_or_si128(_mm_and_si128(even, low), _mm_slli_epi64(odd, 32));
    *hi = _mm_or_si128(_mm_srli_epi64(even, 32), _mm_andnot_si128(low, odd));
}

void philox_sse2(uint64_t seed, const uint64_t *offsets, float *out, int64_t n) {
    const __m128i A = _mm_set1_epi32((int)kPhiloxA), B = _mm_set1_epi32((int)kPhiloxB);
    int64_t k = 0;
    for (; k + 4 <= n; k += 4) {
        __m128i c0 = _mm_set_epi32((int)(uint32_t)offsets[k + 3], (int)(uint32_t)offsets[k + 2],
                                   (int)(uint32_t)offsets[k + 1], (int)(uint32_t)offsets[k]);
        __m128i c1 = _mm_set_epi32((int)(offsets[k + 3] >> 32), (int)(offsets[k + 2] >> 32),
                                   (int)(offsets[k + 1] >> 32), (int)(offsets[k] >> 32));
        __m128i c2 = _mm_setzero_si128(), c3 = _mm_setzero_si128();
        uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int r = 0; r < 10; ++r) {
            __m128i hi0, lo0, hi2, lo2;
            mulhilo4(c0, A, &hi0, &lo0);
            mulhilo4(c2, B, &hi2, &lo2);
            c0 = _mm_xor_si128(_mm_xor_si128(hi2, c1), _mm_set1_epi32((int)k0));
            c2 = _mm_xor_si128(_mm_xor_si128(hi0, c3), _mm_set1_epi32((int)k1));
            c1 = lo2;
            c3 = lo0;
            k0 += kPhiloxW0;
            k1 += kPhiloxW1;
        }
        const __m128i x = _mm_xor_si128(c0, _mm_srai_epi32(c0, 31)); // x < 0 -> ~x == -x - 1
        _mm_storeu_ps(out + k, _mm_mul_ps(_mm_cvtepi32_ps(x), _mm_set1_ps(kUniformScale)));
    }
    for (; k < n; ++k) out[k] = philox_uniform(seed, offsets[k]);
}

CAMDROP_AVX2 inline void mulhilo8(__m256i a, __m256i b, __m256i *hi, __m256i *lo) {
    const __m256i low = _mm256_set1_epi64x(0xFFFFFFFFll);
    const __m256i even = _mm256_mul_epu32(a, b);
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), _mm256_srli_epi64(b, 32));
    *lo = _mm256_or_si256(_mm256_and_si256(even, low), _mm256_slli_epi64(odd, 32));
    *hi = _mm256_or_si256(_mm256_srli_epi64(even, 32), _mm256_andnot_si256(low, odd));
}

CAMDROP_AVX2 void philox_avx2(uint64_t seed, const uint64_t *offsets, float *out, int64_t n) {
    const __m256i A = _mm256_set1_epi32((int)kPhiloxA), B = _mm256_set1_epi32((int)kPhiloxB);
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        int32_t lo[8], hi[8];
        for (int l = 0; l < 8; ++l) {
            lo[l] = (int32_t)(uint32_t)offsets[k + l];
            hi[l] = (int32_t)(uint32_t)(offsets[k + l] >> 32);
        }
        __m256i c0 = _mm256_loadu_si256((const __m256i *)lo), c1 = _mm256_loadu_si256((const __m256i *)hi);
        __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
        uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int r = 0; r < 10; ++r) {
            __m256i hi0, lo0, hi2, lo2;
            mulhilo8(c0, A, &hi0, &lo0);
            mulhilo8(c2, B, &hi2, &lo2);
            c0 = _mm256_xor_si256(_mm256_xor_si256(hi2, c1), _mm256_set1_epi32((int)k0));
            c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32((int)k1));
            c1 = lo2;
            c3 = lo0;
            k0 += kPhiloxW0;
            k1 += kPhiloxW1;
        }
        const __m256i x = _mm256_xor_si256(c0, _mm256_srai_epi32(c0, 31));
        _mm256_storeu_ps(out + k, _mm256_mul_ps(_mm256_cvtepi32_ps(x), _mm256_set1_ps(kUniformScale)));
    }
    for (; k < n; ++k) out[k] = philox_uniform(seed, offsets[k]);
}

} // namespace
#endif

void philox_batch(uint64_t seed, const uint64_t *offsets, float *out, int64_t n) {
#if defined(CAMDROP_X86)
    if (have_avx2) {
        philox_avx2(seed, offsets, out, n);
        return;
    }
    philox_sse2(seed, offsets, out, n);
#else
    for (int64_t k = 0; k < n; ++k) out[k] = philox_uniform(seed, offsets[k]);
#endif
}

} // namespace camdrop
