// The inner loops of apply: zeroed runs, and the float32 AVX2 passes that multiply and mask at
// once (the scaled copy, scale_run, is in apply.cpp). Pointers are to elements of x and y; strides are in elements.
#pragma once

#include "common.h"

namespace camdrop {

#if defined(CAMDROP_X86)
// float32, x and y contiguous, AVX2 (have_avx2). x == y or disjoint.
// y[k] = +0.0 where bit k of ``bits`` is set, else x[k] * s.
void scale_masked_f32(const float *x, float *y, int64_t n, float s, const uint32_t *bits);
// y[k] = x[k] * s with the bits of y[k] ANDed with keep[k] (0: +0.0).
void scale_keep_f32(const float *x, float *y, int64_t n, float s, const uint32_t *keep);
// y[k] = +0.0 where bit k of ``bits`` is set (in place).
void mask_plane_f32(float *y, int64_t n, const uint32_t *bits);
#endif

// +0.0 into n elements at y, y + sy, ... (all-zero bytes are +0.0 in every float type). Typed
// stores, not memset: runs are short (a block's width), where a call costs more than the stores.
// (The attribute keeps GCC from turning the loops back into memset calls.)
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-distribute-patterns")))
#endif
inline void zero_run(char *y, int64_t sy, int64_t n, int esize) {
    switch (esize) {
    case 2: {
        uint16_t *p = reinterpret_cast<uint16_t *>(y);
        for (int64_t k = 0; k < n; ++k) p[k * sy] = 0;
        break;
    }
    case 4: {
        uint32_t *p = reinterpret_cast<uint32_t *>(y);
        for (int64_t k = 0; k < n; ++k) p[k * sy] = 0;
        break;
    }
    default: {
        uint64_t *p = reinterpret_cast<uint64_t *>(y);
        for (int64_t k = 0; k < n; ++k) p[k * sy] = 0;
        break;
    }
    }
}

// Zeroes the dropped elements of one row: bits [f0, f0 + n) of ``plane``, element k at y + k*sy.
// Bit b is bit (b & 31) of word b >> 5; runs of ones are found a word at a time.
inline void zero_row(const uint32_t *plane, int64_t f0, int64_t n, char *y, int64_t sy, int esize) {
    int64_t b = f0;
    const int64_t end = f0 + n;
    while (b < end) {
        const uint32_t word = plane[b >> 5] >> (b & 31);
        if (!word) {
            b = ((b >> 5) + 1) << 5; // the next word
            continue;
        }
        b += __builtin_ctz(word);
        if (b >= end) break;
        const int64_t start = b;
        for (;;) { // extend the run of ones (bits past the word's end read as ones, then stop)
            const uint32_t rest = ~(plane[b >> 5] >> (b & 31));
            if (rest == 0) {
                b = ((b >> 5) + 1) << 5;
                if (b >= end) break; // (so plane[b >> 5] is never read past the row's last word)
                continue;
            }
            b += __builtin_ctz(rest);
            break;
        }
        const int64_t stop = b < end ? b : end;
        zero_run(y + (start - f0) * sy * esize, sy, stop - start, esize);
    }
}

// Any bit set among a plane's first n bits.
inline bool plane_any(const uint32_t *plane, int64_t n) {
    uint32_t any = 0;
    for (int64_t w = 0; w < (n >> 5); ++w) any |= plane[w];
    if (n & 31) any |= plane[n >> 5] & ((1u << (n & 31)) - 1);
    return any != 0;
}

} // namespace camdrop
