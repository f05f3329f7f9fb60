// SPEC.md's random stream: Philox4x32-10, key (seed lo, seed hi), counter (o lo, o hi, 0, 0).
#pragma once

#include "common.h"

namespace camdrop {

constexpr uint32_t kPhiloxA = 0xD2511F53u, kPhiloxB = 0xCD9E8D57u; // round multipliers
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u; // key increments
constexpr float kUniformScale = 4.6566127342e-10f;                    // about 2**-31, as tl.rand

// The final c0 as int32 x, x < 0 replaced by -x - 1, to float32 times kUniformScale. For x < 0,
// -x - 1 == ~x (two's complement), which is also right for INT32_MIN (-> INT32_MAX) where the
// signed expression -x overflows: so it is computed on the unsigned word.
inline float uniform_from_word(uint32_t c0) {
    const uint32_t x = (c0 >> 31) ? ~c0 : c0; // < 2**31: fits int32
    return (float)(int32_t)x * kUniformScale; // float32 product, as tl.rand
}

// U(seed, offset), one at a time.
inline float philox_uniform(uint64_t seed, uint64_t offset) {
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    uint32_t c0 = (uint32_t)offset, c1 = (uint32_t)(offset >> 32), c2 = 0, c3 = 0;
    for (int r = 0; r < 10; ++r) {
        const uint64_t p0 = (uint64_t)kPhiloxA * c0;
        const uint64_t p2 = (uint64_t)kPhiloxB * c2;
        const uint32_t n0 = (uint32_t)(p2 >> 32) ^ c1 ^ k0;
        const uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p2;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += kPhiloxW0;
        k1 += kPhiloxW1;
    }
    return uniform_from_word(c0);
}

// out[k] = U(seed, offsets[k]) for k < n: eight lanes at a time with AVX2, else four with SSE2.
void philox_batch(uint64_t seed, const uint64_t *offsets, float *out, int64_t n);

} // namespace camdrop
