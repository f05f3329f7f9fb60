// The vectorised pieces of the ranking (ranking.h has the rest, order_keys.h the keys): AVX2, for
// 32-bit keys, picked at run time by ranking.h.
#include "ranking.h"

#if defined(CAMDROP_X86)
#include <immintrin.h>

namespace camdrop {

namespace {

// For an 8-bit lane mask: byte r of pack[mask] = the index of mask's r-th set bit; byte l of
// rank[mask] = the number of set bits of mask below bit l.
struct LaneTables {
    uint64_t pack[256];
    uint64_t rank[256];
};

constexpr LaneTables make_lane_tables() {
    LaneTables t{};
    for (int mask = 0; mask < 256; ++mask) {
        uint64_t v = 0, r = 0;
        for (int lane = 0, n = 0; lane < 8; ++lane) {
            r |= (uint64_t)n << (8 * lane);
            if ((mask >> lane) & 1) v |= (uint64_t)lane << (8 * n++);
        }
        t.pack[mask] = v;
        t.rank[mask] = r;
    }
    return t;
}

constexpr LaneTables kLanes = make_lane_tables();

} // namespace

// take_top where every tie is in (entries >= t): eight at a time, a lane's rank from its mask's
// bits below it; the taken entries' indices packed to the front and stored whole at chan_row + j
// (chan_row holds L + 8: the extra lanes are overwritten or past the last rank).
CAMDROP_AVX2 int64_t take_top32_avx2(const uint32_t *key, int64_t L, uint32_t t, int32_t *slot, int32_t *chan_row) {
    const __m256i tv = _mm256_set1_epi32((int)t), none = _mm256_set1_epi32(-1);
    int64_t j = 0, k = 0;
    for (; k + 8 <= L; k += 8) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(key + k));
        const __m256i take = _mm256_cmpeq_epi32(_mm256_max_epu32(v, tv), v); // v >= t, unsigned
        const int mask = _mm256_movemask_ps(_mm256_castsi256_ps(take));
        if (!mask) {
            _mm256_storeu_si256((__m256i *)(slot + k), none);
            continue;
        }
        const __m256i rank = _mm256_add_epi32(_mm256_set1_epi32((int)j),
                                              _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)kLanes.rank[mask])));
        _mm256_storeu_si256((__m256i *)(slot + k), _mm256_blendv_epi8(none, rank, take));
        const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32((int)k),
                                             _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)kLanes.pack[mask])));
        _mm256_storeu_si256((__m256i *)(chan_row + j), idx);
        j += __builtin_popcount((unsigned)mask);
    }
    for (; k < L; ++k) {
        const int tk = key[k] >= t;
        slot[k] = tk ? (int32_t)j : -1;
        chan_row[j] = (int32_t)k;
        j += tk;
    }
    return j;
}

// Eight lanes at a time: compare, then the kept lanes moved to the front with one permute and
// stored whole (the extra lanes land at or below entries already read, and are overwritten).
CAMDROP_AVX2 int64_t compact32_avx2(const uint32_t *src, int64_t m, uint32_t *dst, int shift, uint32_t prefix) {
    const __m256i want = _mm256_set1_epi32((int)prefix);
    const __m128i count = _mm_cvtsi32_si128(shift);
    int64_t kept = 0, t = 0;
    for (; t + 8 <= m; t += 8) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(src + t));
        const __m256i eq = _mm256_cmpeq_epi32(_mm256_srl_epi32(v, count), want);
        const int mask = _mm256_movemask_ps(_mm256_castsi256_ps(eq));
        const __m256i perm = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)kLanes.pack[mask]));
        _mm256_storeu_si256((__m256i *)(dst + kept), _mm256_permutevar8x32_epi32(v, perm));
        kept += __builtin_popcount((unsigned)mask);
    }
    for (; t < m; ++t) {
        const uint32_t v = src[t];
        dst[kept] = v;
        kept += (v >> shift) == prefix;
    }
    return kept;
}
} // namespace camdrop
#endif
