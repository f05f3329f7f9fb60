// float16 and bfloat16 <-> float32, exactly as torch and the GPU convert (round to nearest even).
#pragma once

#include "common.h"

namespace camdrop {

inline float bits_to_f32(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline uint32_t f32_to_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

// Exact: every float16 is a float32.
inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    if (exp == 0x1F) return bits_to_f32(sign | 0x7F800000u | (mant << 13)); // inf, NaN
    if (exp) return bits_to_f32(sign | ((exp + 112) << 23) | (mant << 13));  // normal: rebias 15 -> 127
    const float f = (float)mant * 5.9604644775390625e-8f;                    // subnormal: mant * 2**-24, exact
    return sign ? -f : f;
}

inline float bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

inline uint16_t f32_to_bf16(float f) {
    const uint32_t u = f32_to_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40); // NaN stays NaN
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
}

inline uint16_t f32_to_f16(float f) {
    uint32_t x = f32_to_bits(f);
    const uint32_t sign = x & 0x80000000u;
    uint32_t o;
    x ^= sign;
    if (x >= (143u << 23)) { // >= 2**16 (or inf, NaN): inf, or a quiet NaN
        o = x > (255u << 23) ? 0x7E00 : 0x7C00;
    } else if (x < (113u << 23)) { // below 2**-14: a subnormal half or zero
        const uint32_t magic_bits = ((127 - 15) + (23 - 10) + 1) << 23; // 0.5: aligns the last bit to 2**-24
        const float fx = bits_to_f32(x) + bits_to_f32(magic_bits);       // the FPU rounds to nearest even here
        o = f32_to_bits(fx) - magic_bits;
    } else { // normal: rebias, round half to even on bit 13
        const uint32_t odd = (x >> 13) & 1;
        x += ((uint32_t)(15 - 127) << 23) + 0xFFF + odd;
        o = x >> 13; // a carry into the exponent gives inf correctly
    }
    return (uint16_t)(o | (sign >> 16));
}

} // namespace camdrop
