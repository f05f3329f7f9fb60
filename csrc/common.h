// What every stage of the native kernels shares: the checked view of a tensor, the dtypes, the
// CPU-feature switches and the guarded byte copies. No Python and no torch here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#define CAMDROP_X86 1
#define CAMDROP_AVX2 __attribute__((target("avx2")))
#endif

// A function built twice, for AVX2 and for the baseline, one picked at load time (GCC on Linux
// x86-64: an ifunc). Elsewhere a plain function. Use it on functions with internal linkage only:
// GCC exports a target_clones function's ifunc whatever its visibility.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define CAMDROP_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CAMDROP_CLONES
#endif

#define CAMDROP_RESTRICT __restrict__

namespace camdrop {

enum DType : int { kF16, kBF16, kF32, kF64, kI32, kI64, kOther };
const char *dtype_name(int type);

constexpr int kMaxDims = 8;

// A tensor handed over as a DLPack capsule, read and checked by get_view (dlpack.cpp): a CPU
// tensor, at most kMaxDims dims, non-negative sizes and strides, at most 2**62 elements, every
// element's byte offset below 2**62 and inside the address space, a data pointer aligned to the
// element size, and not null unless there are no elements. So every index product below,
// (index < size) * stride, fits in int64.
struct View {
    char *data;
    int ndim;
    int type;  // DType
    int esize; // bytes per element
    int64_t shape[kMaxDims];
    int64_t strides[kMaxDims]; // in elements
    int64_t numel;
    int read_only; // DLPack 1.x's read-only flag
};

// Set once when the module loads (threads.cpp: init_runtime).
extern bool have_avx2;

// memcpy/memset that accept a null pointer with a zero size (the C functions do not).
inline void copy_bytes(void *dst, const void *src, size_t n) {
    if (n) std::memcpy(dst, src, n);
}
inline void zero_bytes(void *dst, size_t n) {
    if (n) std::memset(dst, 0, n);
}

// *total += n * size bytes; false when that overflows size_t (n >= 0).
inline bool add_bytes(size_t *total, int64_t n, size_t size) {
    size_t part;
    return !__builtin_mul_overflow((size_t)n, size, &part) && !__builtin_add_overflow(*total, part, total);
}

// Set bits of a word (SWAR: no dependence on the compiler targeting POPCNT).
inline int popcount32(uint32_t x) {
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0F0F0F0Fu;
    return (int)((x * 0x01010101u) >> 24);
}

} // namespace camdrop
