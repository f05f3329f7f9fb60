// Order keys (SPEC.md steps 1-2): a row's values as unsigned integers that order like the ranking
// rule. Included by the translation units that rank (build.cpp, testing.cpp): row_keys is static,
// so each has its own AVX2/baseline pair, resolved inside its own library.
#pragma once

#include <cmath>

#include "common.h"
#include "floats.h"

namespace camdrop {

// An unsigned integer that orders like the ranking key: NaN as -inf, -0.0 as +0.0, then the IEEE
// bits with every bit flipped for negatives and the sign bit flipped for the rest (branch-free).
// float16/bfloat16/float32 rows use 32-bit keys of their exact float32 values; float64 64-bit.
inline uint64_t order_key64(double v) {
    v = v != v ? -INFINITY : v + 0.0;
    uint64_t u;
    std::memcpy(&u, &v, 8);
    const uint64_t neg = (uint64_t)((int64_t)u >> 63);
    return u ^ (neg | ((uint64_t)1 << 63));
}

inline uint32_t order_key32(uint32_t u) {
    u = (int32_t)(u & 0x7FFFFFFFu) > 0x7F800000 ? 0xFF800000u : u; // NaN -> -inf (a signed compare: vectorises)
    u = u == 0x80000000u ? 0u : u;                                // -0.0 -> +0.0
    const uint32_t neg = (uint32_t)((int32_t)u >> 31);
    return u ^ (neg | 0x80000000u);
}

// key[k] = the order key of row[start + k] for k < n (row: float16/bfloat16/float32 -> uint32_t
// keys, float64 -> uint64_t keys, at ``keys``); returns the key width in bits.
// The dtype switch once per row; built for AVX2 and the baseline (the key loops vectorise).
CAMDROP_CLONES static int row_keys(const char *row, int type, int64_t start, int64_t n, void *keys) {
    switch (type) {
    case kF32: {
        uint32_t *CAMDROP_RESTRICT key = static_cast<uint32_t *>(keys);
        const uint32_t *CAMDROP_RESTRICT v = reinterpret_cast<const uint32_t *>(row) + start;
        for (int64_t k = 0; k < n; ++k) key[k] = order_key32(v[k]);
        return 32;
    }
    case kBF16: {
        uint32_t *CAMDROP_RESTRICT key = static_cast<uint32_t *>(keys);
        const uint16_t *CAMDROP_RESTRICT v = reinterpret_cast<const uint16_t *>(row) + start;
        for (int64_t k = 0; k < n; ++k) key[k] = order_key32((uint32_t)v[k] << 16);
        return 32;
    }
    case kF16: {
        uint32_t *CAMDROP_RESTRICT key = static_cast<uint32_t *>(keys);
        const uint16_t *CAMDROP_RESTRICT v = reinterpret_cast<const uint16_t *>(row) + start;
        for (int64_t k = 0; k < n; ++k) key[k] = order_key32(f32_to_bits(f16_to_f32(v[k])));
        return 32;
    }
    default: {
        uint64_t *CAMDROP_RESTRICT key = static_cast<uint64_t *>(keys);
        const double *CAMDROP_RESTRICT v = reinterpret_cast<const double *>(row) + start;
        for (int64_t k = 0; k < n; ++k) key[k] = order_key64(v[k]);
        return 64;
    }
    }
}

} // namespace camdrop
