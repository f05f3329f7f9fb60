/*
 * camdrop_kernels._native: the CPU kernels of SPEC.md, for 1-D, 2-D and 3-D maps.
 *
 *   build   steps 1-7 for a batch: top pixels and channels per sample, the seed rate, Philox
 *           seeds at the eligible positions only, blocks stamped as runs of bits into a bit
 *           mask over the top channels, dropped counts, per-sample scales. Writes the saved
 *           state (slots, bits, scale) and the statistics (dropped, rate).
 *   apply   step 8: y = +0.0 where the state says dropped, else x * scale rounded once to
 *           x's dtype, in one pass over x for any strides (the backward is this on dy).
 *   forward both in one parallel region: build, a barrier, the scales, a barrier, apply. The
 *           apply then reads the build's own slots (this call's memory), not the caller's.
 *
 * Safety: every tensor arrives as a DLPack capsule (torch.utils.dlpack.to_dlpack), so this file
 * reads shapes, strides, dtypes and devices from the tensors themselves and checks all of them,
 * and every index it will use (slot values, counts, block geometry), before touching memory.
 * Nothing here trusts its caller: wrong arguments raise TypeError/ValueError naming them.
 *
 * Threads: the loops run on torch's own OpenMP pool. The GOMP entry points of the OpenMP
 * runtime torch loaded are looked up at run time (dlsym); the caller passes
 * torch.get_num_threads(). So this code adds no threads of its own and cannot oversubscribe
 * the cores torch uses; without such a runtime everything runs on the calling thread (and
 * without GOMP_barrier the forward forks twice, build then apply).
 *
 * No torch headers: this builds in a second or two with any C compiler, and does not depend
 * on the torch version it runs beside.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if !defined(_WIN32)
#include <dlfcn.h>
#endif

/* ------------------------------------------------------------------------------------------ */
/* DLPack (the stable C ABI of dlpack.h, v0.8 and v1.x capsules)                               */
/* ------------------------------------------------------------------------------------------ */
typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;
    int64_t *strides;
    uint64_t byte_offset;
} DLTensor;
typedef struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensor *);
} DLManagedTensor;
typedef struct { uint32_t major; uint32_t minor; } DLPackVersion;
typedef struct DLManagedTensorVersioned {
    DLPackVersion version;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensorVersioned *);
    uint64_t flags;
    DLTensor dl_tensor;
} DLManagedTensorVersioned;

enum { DL_INT = 0, DL_UINT = 1, DL_FLOAT = 2, DL_BFLOAT = 4, DL_BOOL = 6, DL_CPU = 1 };
enum { T_F16, T_BF16, T_F32, T_F64, T_I32, T_I64, T_OTHER };
static const char *TYPE_NAMES[] = {"float16", "bfloat16", "float32", "float64", "int32", "int64", "other"};
#define MAX_DIMS 8
#define BATCH 2048 /* Philox draws per batch in build */

typedef struct {
    char *data;
    int ndim;
    int type;
    int esize;
    int64_t shape[MAX_DIMS];
    int64_t strides[MAX_DIMS]; /* in elements */
    int64_t numel;
    int read_only;             /* DLPack 1.x's read-only flag */
} View;

#define DLPACK_FLAG_READ_ONLY 1u

/* Reads a DLPack capsule into a View; fails (with an exception naming ``name``) unless it is an
   unconsumed capsule of a CPU tensor with at most MAX_DIMS dims and non-negative strides. */
static int get_view(PyObject *obj, const char *name, View *v) {
    DLTensor *t = NULL;
    v->read_only = 0;
    if (PyCapsule_IsValid(obj, "dltensor")) {
        t = &((DLManagedTensor *)PyCapsule_GetPointer(obj, "dltensor"))->dl_tensor;
    } else if (PyCapsule_IsValid(obj, "dltensor_versioned")) {
        DLManagedTensorVersioned *m = PyCapsule_GetPointer(obj, "dltensor_versioned");
        if (m->version.major != 1) {
            PyErr_Format(PyExc_TypeError, "%s: unsupported DLPack version %u", name, m->version.major);
            return -1;
        }
        v->read_only = (m->flags & DLPACK_FLAG_READ_ONLY) != 0;
        t = &m->dl_tensor;
    } else {
        PyErr_Format(PyExc_TypeError, "%s must be a DLPack capsule of a tensor (torch.utils.dlpack.to_dlpack)", name);
        return -1;
    }
    if (t->device.device_type != DL_CPU) {
        PyErr_Format(PyExc_ValueError, "%s must be a CPU tensor", name);
        return -1;
    }
    if (t->ndim < 0 || t->ndim > MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "%s has %d dimensions; at most %d are supported", name, (int)t->ndim, MAX_DIMS);
        return -1;
    }
    if (t->dtype.lanes != 1) {
        PyErr_Format(PyExc_TypeError, "%s must have a scalar dtype", name);
        return -1;
    }
    int type = T_OTHER;
    if (t->dtype.code == DL_FLOAT && t->dtype.bits == 16) type = T_F16;
    else if (t->dtype.code == DL_BFLOAT && t->dtype.bits == 16) type = T_BF16;
    else if (t->dtype.code == DL_FLOAT && t->dtype.bits == 32) type = T_F32;
    else if (t->dtype.code == DL_FLOAT && t->dtype.bits == 64) type = T_F64;
    else if (t->dtype.code == DL_INT && t->dtype.bits == 32) type = T_I32;
    else if (t->dtype.code == DL_INT && t->dtype.bits == 64) type = T_I64;
    v->type = type;
    v->esize = t->dtype.bits / 8;
    v->ndim = t->ndim;
    v->data = (char *)t->data + t->byte_offset;
    v->numel = 1;
    int64_t expected = 1;
    for (int d = t->ndim - 1; d >= 0; --d) {
        if (t->shape[d] < 0) {
            PyErr_Format(PyExc_ValueError, "%s has a negative size", name);
            return -1;
        }
        v->shape[d] = t->shape[d];
        v->strides[d] = t->strides ? t->strides[d] : expected;
        if (v->strides[d] < 0) {
            PyErr_Format(PyExc_ValueError, "%s has a negative stride", name);
            return -1;
        }
        expected *= t->shape[d];
        v->numel *= t->shape[d];
    }
    return 0;
}

static int check_type(const View *v, const char *name, int type) {
    if (v->type != type) {
        PyErr_Format(PyExc_TypeError, "%s must be %s; got %s", name, TYPE_NAMES[type], TYPE_NAMES[v->type]);
        return -1;
    }
    return 0;
}

static int is_contiguous(const View *v) {
    int64_t expected = 1;
    for (int d = v->ndim - 1; d >= 0; --d) {
        if (v->shape[d] != 1 && v->strides[d] != expected) return 0;
        expected *= v->shape[d];
    }
    return 1;
}

/* A contiguous tensor of ``type`` with exactly the given shape. */
static int check_dense(const View *v, const char *name, int type, int ndim, const int64_t *shape) {
    if (check_type(v, name, type)) return -1;
    int ok = v->ndim == ndim;
    for (int d = 0; ok && d < ndim; ++d) ok = v->shape[d] == shape[d];
    if (!ok) {
        char want[160] = "(", *p = want + 1;
        for (int d = 0; d < ndim && p < want + 120; ++d)
            p += snprintf(p, 24, d ? ", %lld" : "%lld", (long long)shape[d]);
        snprintf(p, 4, ")");
        PyErr_Format(PyExc_ValueError, "%s must have shape %s", name, want);
        return -1;
    }
    if (!is_contiguous(v)) {
        PyErr_Format(PyExc_ValueError, "%s must be contiguous", name);
        return -1;
    }
    return 0;
}

/* No two elements of v share memory (sufficient test: sorted by stride, each stride exceeds the
   span of the smaller ones), so writing every element never writes one location twice. */
static int non_overlapping(const View *v) {
    int order[MAX_DIMS], n = 0;
    for (int d = 0; d < v->ndim; ++d)
        if (v->shape[d] > 1) order[n++] = d;
    for (int a = 1; a < n; ++a)
        for (int b = a; b > 0 && v->strides[order[b]] < v->strides[order[b - 1]]; --b) {
            int t = order[b]; order[b] = order[b - 1]; order[b - 1] = t;
        }
    int64_t span = 0;
    for (int k = 0; k < n; ++k) {
        if (v->strides[order[k]] <= span) return 0;
        span += (v->shape[order[k]] - 1) * v->strides[order[k]];
    }
    return 1;
}

/* The bytes [lo, hi) an array's elements occupy (empty for no elements). */
static void byte_range(const View *v, uintptr_t *lo, uintptr_t *hi) {
    *lo = *hi = (uintptr_t)v->data;
    if (v->numel == 0) return;
    uint64_t span = 0;
    for (int d = 0; d < v->ndim; ++d) span += (uint64_t)(v->shape[d] - 1) * (uint64_t)v->strides[d];
    *hi = *lo + (uintptr_t)((span + 1) * (uint64_t)v->esize);
}

/* Outputs must be writable and share no memory with any other argument: a kernel that writes
   one array while reading another through the same bytes would read what it wrote. ``same`` is
   the index of an input the first output may alias exactly (in place: x and y), or -1. */
static int check_outputs(View **views, const char **names, int n, int first_output, int same) {
    for (int o = first_output; o < n; ++o) {
        if (views[o]->read_only) {
            PyErr_Format(PyExc_ValueError, "%s is read-only", names[o]);
            return -1;
        }
        uintptr_t olo, ohi;
        byte_range(views[o], &olo, &ohi);
        for (int k = 0; k < n; ++k) {
            if (k == o) continue;
            uintptr_t lo, hi;
            byte_range(views[k], &lo, &hi);
            if (!(olo < hi && lo < ohi)) continue; /* disjoint */
            if (o == first_output && k == same && views[k]->data == views[o]->data) {
                int identical = views[k]->ndim == views[o]->ndim;
                for (int d = 0; identical && d < views[k]->ndim; ++d)
                    identical = views[k]->shape[d] == views[o]->shape[d] &&
                                (views[k]->shape[d] == 1 || views[k]->strides[d] == views[o]->strides[d]);
                if (identical) continue; /* in place */
            }
            PyErr_Format(PyExc_ValueError, "%s shares memory with %s", names[o], names[k]);
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Threads: torch's OpenMP pool, found at run time                                             */
/* ------------------------------------------------------------------------------------------ */
typedef void (*gomp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
typedef int (*omp_int_fn)(void);
static gomp_parallel_fn gomp_parallel = NULL;
static omp_int_fn omp_thread_num = NULL, omp_num_threads = NULL;
static void (*gomp_barrier)(void) = NULL;

static void find_openmp(void) {
#if !defined(_WIN32)
    gomp_parallel = (gomp_parallel_fn)dlsym(RTLD_DEFAULT, "GOMP_parallel");
    omp_thread_num = (omp_int_fn)dlsym(RTLD_DEFAULT, "omp_get_thread_num");
    omp_num_threads = (omp_int_fn)dlsym(RTLD_DEFAULT, "omp_get_num_threads");
    gomp_barrier = (void (*)(void))dlsym(RTLD_DEFAULT, "GOMP_barrier");
    if (!omp_thread_num || !omp_num_threads) gomp_parallel = NULL;
#endif
}

/* body(ctx, begin, end, thread) over [0, total), split into contiguous ranges, one per thread. */
typedef struct {
    void (*body)(void *, int64_t, int64_t, int);
    void *ctx;
    int64_t total;
} Job;

static void job_entry(void *p) {
    Job *job = p;
    int64_t t = omp_thread_num(), T = omp_num_threads();
    int64_t begin = job->total * t / T, end = job->total * (t + 1) / T;
    if (begin < end) job->body(job->ctx, begin, end, (int)t);
}

static void run_job(Job *job, int threads) {
    if (threads > 1 && gomp_parallel && job->total > 1) {
        if (threads > job->total) threads = (int)job->total;
        gomp_parallel(job_entry, job, (unsigned)threads, 0);
    } else if (job->total > 0) {
        job->body(job->ctx, 0, job->total, 0);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* SPEC.md's random stream: Philox4x32-10, key (seed lo, hi), counter (o lo, o hi, 0, 0)        */
/* ------------------------------------------------------------------------------------------ */
static float philox_uniform(uint64_t seed, uint64_t offset) {
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    uint32_t c0 = (uint32_t)offset, c1 = (uint32_t)(offset >> 32), c2 = 0, c3 = 0;
    for (int r = 0; r < 10; ++r) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p2 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p2 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p2;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    int32_t x = (int32_t)c0;
    if (x < 0) x = -x - 1;                /* c0 >= 2**31: 2**32 - 1 - c0, never overflows */
    return (float)x * 4.6566127342e-10f; /* float32 product, as tl.rand */
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86 1

/* hi and lo 32-bit halves of a * b for four uint32 lanes: pmuludq multiplies the even lanes;
   the odd lanes are shifted down first, and the halves are interleaved back. */
static inline void mulhilo4(__m128i a, __m128i b, __m128i *hi, __m128i *lo) {
    const __m128i low = _mm_set1_epi64x(0xFFFFFFFFll);
    __m128i even = _mm_mul_epu32(a, b);
    __m128i odd = _mm_mul_epu32(_mm_srli_epi64(a, 32), _mm_srli_epi64(b, 32));
    *lo = _mm_or_si128(_mm_and_si128(even, low), _mm_slli_epi64(odd, 32));
    *hi = _mm_or_si128(_mm_srli_epi64(even, 32), _mm_andnot_si128(low, odd));
}

static void philox_sse2(uint64_t seed, const uint64_t *offsets, float *out, int64_t n) {
    const __m128i A = _mm_set1_epi32((int)0xD2511F53u), B = _mm_set1_epi32((int)0xCD9E8D57u);
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
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        __m128i x = _mm_xor_si128(c0, _mm_srai_epi32(c0, 31)); /* x < 0 -> -x - 1 == ~x */
        _mm_storeu_ps(out + k, _mm_mul_ps(_mm_cvtepi32_ps(x), _mm_set1_ps(4.6566127342e-10f)));
    }
    for (; k < n; ++k) out[k] = philox_uniform(seed, offsets[k]);
}

__attribute__((target("avx2"))) static inline void mulhilo8(__m256i a, __m256i b, __m256i *hi, __m256i *lo) {
    const __m256i low = _mm256_set1_epi64x(0xFFFFFFFFll);
    __m256i even = _mm256_mul_epu32(a, b);
    __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), _mm256_srli_epi64(b, 32));
    *lo = _mm256_or_si256(_mm256_and_si256(even, low), _mm256_slli_epi64(odd, 32));
    *hi = _mm256_or_si256(_mm256_srli_epi64(even, 32), _mm256_andnot_si256(low, odd));
}

/* Eight lanes at a time where the CPU has AVX2 (chosen at run time). */
__attribute__((target("avx2"))) static void philox_avx2(uint64_t seed, const uint64_t *offsets, float *out,
                                                        int64_t n) {
    const __m256i A = _mm256_set1_epi32((int)0xD2511F53u), B = _mm256_set1_epi32((int)0xCD9E8D57u);
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
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        __m256i x = _mm256_xor_si256(c0, _mm256_srai_epi32(c0, 31));
        _mm256_storeu_ps(out + k, _mm256_mul_ps(_mm256_cvtepi32_ps(x), _mm256_set1_ps(4.6566127342e-10f)));
    }
    for (; k < n; ++k) out[k] = philox_uniform(seed, offsets[k]);
}
#endif

static int have_avx2 = 0;

/* U(seed, offsets[k]) for k < n. */
static void philox_batch(uint64_t seed, const uint64_t *offsets, float *out, int64_t n) {
#if defined(HAVE_X86)
    if (have_avx2) {
        philox_avx2(seed, offsets, out, n);
        return;
    }
    philox_sse2(seed, offsets, out, n);
#else
    for (int64_t k = 0; k < n; ++k) out[k] = philox_uniform(seed, offsets[k]);
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* Ranking (SPEC.md steps 1-2): larger first, NaN as -inf, -0.0 == +0.0, ties to lower index    */
/* ------------------------------------------------------------------------------------------ */

static double read_float(const char *base, int type, int64_t k) {
    switch (type) {
    case T_F16: {
        uint16_t h;
        memcpy(&h, base + 2 * k, 2);
        uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
        if (exp == 0x1F) bits = sign | 0x7F800000u | (mant << 13);
        else if (exp) bits = sign | ((exp + 112) << 23) | (mant << 13);
        else {
            float f = (float)mant * 5.9604644775390625e-8f; /* subnormal: mant * 2**-24, exact */
            return sign ? -(double)f : (double)f;
        }
        float f;
        memcpy(&f, &bits, 4);
        return f;
    }
    case T_BF16: {
        uint16_t h;
        memcpy(&h, base + 2 * k, 2);
        uint32_t bits = (uint32_t)h << 16;
        float f;
        memcpy(&f, &bits, 4);
        return f;
    }
    case T_F32: {
        float f;
        memcpy(&f, base + 4 * k, 4);
        return f;
    }
    default: {
        double d;
        memcpy(&d, base + 8 * k, 8);
        return d;
    }
    }
}

/* An unsigned integer that orders like the ranking key: NaN as -inf, -0.0 as +0.0, then the IEEE
   bits with every bit flipped for negatives and the sign bit flipped for the rest (branch-free).
   float16/bfloat16/float32 rows use 32-bit keys of their exact float32 values; float64 64-bit. */
static inline uint64_t order_key64(double v) {
    v = v != v ? -INFINITY : v + 0.0;
    uint64_t u;
    memcpy(&u, &v, 8);
    uint64_t neg = (uint64_t)((int64_t)u >> 63);
    return u ^ (neg | ((uint64_t)1 << 63));
}

static inline uint32_t order_key32(uint32_t u) {
    u = (int32_t)(u & 0x7FFFFFFFu) > 0x7F800000 ? 0xFF800000u : u; /* NaN -> -inf (a signed compare: vectorises) */
    u = u == 0x80000000u ? 0u : u;                                /* -0.0 -> +0.0 */
    uint32_t neg = (uint32_t)((int32_t)u >> 31);
    return u ^ (neg | 0x80000000u);
}

/* Built for AVX2 and for the baseline, picked at load time where the toolchain supports it. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

/* key[k] = the order key of row[k] for k < n: 32-bit keys (uint32_t) for float16/bfloat16/float32,
   64-bit (uint64_t) for float64; returns the key width. The dtype switch once per row. */
CLONES static int row_keys(const char *base, int type, int64_t start, int64_t n, void *keys) {
    uint32_t *restrict key = keys;
    switch (type) {
    case T_F32: {
        const uint32_t *restrict v = (const uint32_t *)base + start;
        for (int64_t k = 0; k < n; ++k) key[k] = order_key32(v[k]);
        return 32;
    }
    case T_BF16: {
        const uint16_t *restrict v = (const uint16_t *)base + start;
        for (int64_t k = 0; k < n; ++k) key[k] = order_key32((uint32_t)v[k] << 16);
        return 32;
    }
    case T_F16: {
        for (int64_t k = 0; k < n; ++k) {
            float f = (float)read_float(base, type, start + k);
            uint32_t u;
            memcpy(&u, &f, 4);
            key[k] = order_key32(u);
        }
        return 32;
    }
    default: {
        uint64_t *restrict key64 = keys;
        const double *restrict v = (const double *)base + start;
        for (int64_t k = 0; k < n; ++k) key64[k] = order_key64(v[k]);
        return 64;
    }
    }
}

#define ALL_TIES INT64_MAX /* need_eq when every key equal to the threshold is in */

/* dst[0..kept) = the entries v of src[0..m) with v >> shift == prefix, in order (dst may be src);
   returns kept. */
static int64_t compact64(const uint64_t *src, int64_t m, uint64_t *dst, int shift, uint64_t prefix) {
    int64_t kept = 0;
    for (int64_t t = 0; t < m; ++t) {
        uint64_t v = src[t];
        dst[kept] = v;
        kept += (v >> shift) == prefix;
    }
    return kept;
}

#if defined(HAVE_X86)
static uint64_t pack_lanes[256]; /* byte r of pack_lanes[mask] = the index of mask's r-th set bit */
static uint64_t rank_lanes[256]; /* byte l of rank_lanes[mask] = the set bits of mask below bit l */

static void init_pack_lanes(void) {
    for (int mask = 0; mask < 256; ++mask) {
        uint64_t v = 0, r = 0;
        for (int lane = 0, n = 0; lane < 8; ++lane) {
            r |= (uint64_t)n << (8 * lane);
            if ((mask >> lane) & 1) v |= (uint64_t)lane << (8 * n++);
        }
        pack_lanes[mask] = v;
        rank_lanes[mask] = r;
    }
}

/* take_top32 where every tie is in (entries >= t): eight at a time, a lane's rank from its mask's
   bits below it; the taken entries' indices packed to the front and stored whole at chan_row + j
   (chan_row holds L + 8: the extra lanes are overwritten or past the last rank). */
__attribute__((target("avx2"))) static int64_t take_top32_avx2(const uint32_t *key, int64_t L, uint32_t t,
                                                               int32_t *slot, int32_t *chan_row) {
    const __m256i tv = _mm256_set1_epi32((int)t), none = _mm256_set1_epi32(-1);
    int64_t j = 0, k = 0;
    for (; k + 8 <= L; k += 8) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(key + k));
        __m256i take = _mm256_cmpeq_epi32(_mm256_max_epu32(v, tv), v); /* v >= t, unsigned */
        int mask = _mm256_movemask_ps(_mm256_castsi256_ps(take));
        if (!mask) {
            _mm256_storeu_si256((__m256i *)(slot + k), none);
            continue;
        }
        __m256i rank = _mm256_add_epi32(_mm256_set1_epi32((int)j),
                                        _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)rank_lanes[mask])));
        _mm256_storeu_si256((__m256i *)(slot + k), _mm256_blendv_epi8(none, rank, take));
        __m256i idx = _mm256_add_epi32(_mm256_set1_epi32((int)k),
                                       _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)pack_lanes[mask])));
        _mm256_storeu_si256((__m256i *)(chan_row + j), idx);
        j += __builtin_popcount((unsigned)mask);
    }
    for (; k < L; ++k) {
        int tk = key[k] >= t;
        slot[k] = tk ? (int32_t)j : -1;
        chan_row[j] = (int32_t)k;
        j += tk;
    }
    return j;
}

/* Eight lanes at a time: compare, then the kept lanes moved to the front with one permute and
   stored whole (the extra lanes land at or below entries already read, and are overwritten). */
__attribute__((target("avx2"))) static int64_t compact32_avx2(const uint32_t *src, int64_t m, uint32_t *dst,
                                                              int shift, uint32_t prefix) {
    const __m256i want = _mm256_set1_epi32((int)prefix);
    const __m128i count = _mm_cvtsi32_si128(shift);
    int64_t kept = 0, t = 0;
    for (; t + 8 <= m; t += 8) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(src + t));
        __m256i eq = _mm256_cmpeq_epi32(_mm256_srl_epi32(v, count), want);
        int mask = _mm256_movemask_ps(_mm256_castsi256_ps(eq));
        __m256i perm = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)pack_lanes[mask]));
        _mm256_storeu_si256((__m256i *)(dst + kept), _mm256_permutevar8x32_epi32(v, perm));
        kept += __builtin_popcount((unsigned)mask);
    }
    for (; t < m; ++t) {
        uint32_t v = src[t];
        dst[kept] = v;
        kept += (v >> shift) == prefix;
    }
    return kept;
}
#endif

static int64_t compact32(const uint32_t *src, int64_t m, uint32_t *dst, int shift, uint32_t prefix) {
#if defined(HAVE_X86)
    if (have_avx2 && m >= 64) return compact32_avx2(src, m, dst, shift, prefix);
#endif
    int64_t kept = 0;
    for (int64_t t = 0; t < m; ++t) {
        uint32_t v = src[t];
        dst[kept] = v;
        kept += (v >> shift) == prefix;
    }
    return kept;
}

/* The ranking, for 32-bit keys (suffix 32) and 64-bit keys (suffix 64):

   top_n_heap: a heap of the n best entries so far, its worst on top (fed in index order, so an
   entry that only ties the top never displaces it): O(L log n) comparisons in the worst case,
   and about L when n is much smaller than L, since nearly every entry then fails one comparison.

   nth_key: the n-th largest key t of key[0..L) (1 <= n < L), and need_eq: the top n entries are
   every key above t and the first need_eq keys equal to t in index order (ALL_TIES: all of them).
   Radix select, most significant byte first: a 256-bin histogram of the current byte over the
   candidates tells which byte value b holds the n-th entry; entries above b are in, entries at b
   stay candidates (their key values, compacted branch-free into ``cand``; where every candidate
   shares b the list stays as it is), and the next byte's histogram is counted over the kept ones
   only. At most (bits / 8) rounds over shrinking lists, so O(2 (bits / 8) L) in the worst case
   (all keys equal) whatever the input: no input makes it quadratic.

   take_top: slot[k] = the entry's rank in index order among the top n (t, need_eq from nth_key)
   or -1, and chan_row[r] = the entry of rank r (chan_row holds L + 8: entries past the last rank
   are written); returns n.

   top_n: mark[k] = 1 for the n top entries (1 <= n <= L), else 0.

   ``cand`` holds L keys; *visits counts element visits (for the tests). */
#define RANKING(S, KT)                                                                                       \
static void top_n_heap##S(const KT *key, int64_t L, int64_t n, int64_t *heap, uint8_t *mark, uint64_t *visits) { \
    for (int64_t k = 0; k < L; ++k) {                                                                        \
        int64_t c;                                                                                           \
        if (k < n) { /* grow: sift the new entry up */                                                       \
            heap[k] = k;                                                                                     \
            for (c = k; c > 0 && WORSE(heap[c], heap[(c - 1) / 2]); c = (c - 1) / 2) {                      \
                int64_t t = heap[c]; heap[c] = heap[(c - 1) / 2]; heap[(c - 1) / 2] = t;                    \
                ++*visits;                                                                                   \
            }                                                                                                \
            continue;                                                                                        \
        }                                                                                                    \
        ++*visits;                                                                                           \
        if (!(key[k] > key[heap[0]])) continue; /* a tie with the top loses: its index is larger */         \
        heap[0] = k;                                                                                         \
        for (c = 0;;) { /* sift down */                                                                      \
            int64_t l = 2 * c + 1, r = l + 1, m = c;                                                         \
            if (l < n && WORSE(heap[l], heap[m])) m = l;                                                     \
            if (r < n && WORSE(heap[r], heap[m])) m = r;                                                     \
            ++*visits;                                                                                       \
            if (m == c) break;                                                                               \
            int64_t t = heap[c]; heap[c] = heap[m]; heap[m] = t;                                            \
            c = m;                                                                                           \
        }                                                                                                    \
    }                                                                                                        \
    memset(mark, 0, (size_t)L);                                                                              \
    for (int64_t k = 0; k < n; ++k) mark[heap[k]] = 1;                                                       \
}                                                                                                            \
                                                                                                             \
static KT nth_key##S(const KT *key, int64_t L, int64_t n, KT *cand, int64_t *need_eq, uint64_t *visits) {   \
    int32_t h4[4][256];                                                                                      \
    int64_t hist[256];                                                                                       \
    const KT *src = key; /* the candidates: every entry, then the compacted list */                         \
    int64_t m = L, need = n;                                                                                 \
    int shift = (int)(8 * sizeof(KT)) - 8;                                                                   \
    memset(hist, 0, sizeof(hist));                                                                           \
    for (int64_t k0 = 0; k0 < L; k0 += (int64_t)1 << 28) { /* int32 counts: 2**28 entries at a time */      \
        const int64_t k1 = L - k0 < ((int64_t)1 << 28) ? L : k0 + ((int64_t)1 << 28);                        \
        int64_t k = k0;                                                                                      \
        memset(h4, 0, sizeof(h4));                                                                           \
        for (; k + 4 <= k1; k += 4) { /* four sub-histograms: no chain of increments on one bin */           \
            h4[0][(key[k] >> shift) & 255]++;                                                                \
            h4[1][(key[k + 1] >> shift) & 255]++;                                                            \
            h4[2][(key[k + 2] >> shift) & 255]++;                                                            \
            h4[3][(key[k + 3] >> shift) & 255]++;                                                            \
        }                                                                                                    \
        for (; k < k1; ++k) h4[0][(key[k] >> shift) & 255]++;                                                \
        for (int d = 0; d < 256; ++d) hist[d] += h4[0][d] + h4[1][d] + h4[2][d] + h4[3][d];                  \
    }                                                                                                        \
    *visits += (uint64_t)L;                                                                                  \
    KT prefix = 0; /* the bytes fixed so far: every candidate's key >> shift equals prefix */               \
    for (;;) {                                                                                               \
        int b = 255;                                                                                         \
        int64_t above = 0;                                                                                   \
        while (above + hist[b] < need) above += hist[b--]; /* hist sums to m >= need: b stays >= 0 */        \
        need -= above;                                                                                       \
        prefix = (KT)(prefix << 8) | (KT)b;                                                                   \
        if (hist[b] != m) { /* keep the candidates at b (in place: kept <= t) */                             \
            int64_t kept = compact##S(src, m, cand, shift, prefix);                                          \
            *visits += (uint64_t)m;                                                                          \
            src = cand;                                                                                      \
            m = kept;                                                                                        \
        }                                                                                                    \
        if (need == m) { /* every candidate is in: t is the smallest, and every tie with it is in */         \
            KT t = src[0];                                                                                   \
            for (int64_t k = 1; k < m; ++k) t = src[k] < t ? src[k] : t;                                     \
            *visits += (uint64_t)m;                                                                          \
            *need_eq = ALL_TIES;                                                                             \
            return t;                                                                                        \
        }                                                                                                    \
        if (shift == 0) { /* the candidates share one key: the first `need` of them in index order */        \
            *need_eq = need;                                                                                 \
            return src[0];                                                                                   \
        }                                                                                                    \
        shift -= 8;                                                                                          \
        memset(hist, 0, sizeof(hist));                                                                       \
        for (int64_t t = 0; t < m; ++t) hist[(src[t] >> shift) & 255]++;                                     \
        *visits += (uint64_t)m;                                                                              \
    }                                                                                                        \
}                                                                                                            \
                                                                                                             \
static int64_t take_top##S(const KT *key, int64_t L, KT t, int64_t need_eq, int32_t *slot, int32_t *chan_row) { \
    int64_t j = 0;                                                                                           \
    if (need_eq == ALL_TIES && TAKE_FAST##S(key, L, t, slot, chan_row, &j)) return j;                        \
    if (need_eq == ALL_TIES) {                                                                               \
        for (int64_t k = 0; k < L; ++k) {                                                                    \
            int take = key[k] >= t;                                                                          \
            slot[k] = take ? (int32_t)j : -1;                                                                \
            chan_row[j] = (int32_t)k; /* overwritten by the next entry unless this one is taken */           \
            j += take;                                                                                       \
        }                                                                                                    \
        return j;                                                                                            \
    }                                                                                                        \
    int64_t eq = 0;                                                                                          \
    for (int64_t k = 0; k < L; ++k) {                                                                        \
        int at = key[k] == t, take = (key[k] > t) | (at & (eq < need_eq));                                   \
        eq += at;                                                                                            \
        slot[k] = take ? (int32_t)j : -1;                                                                    \
        chan_row[j] = (int32_t)k;                                                                            \
        j += take;                                                                                           \
    }                                                                                                        \
    return j;                                                                                                \
}                                                                                                            \
                                                                                                             \
static void top_n##S(const KT *key, int64_t L, int64_t n, int64_t *cand, uint8_t *mark, uint64_t *visits) {  \
    if (n >= L) {                                                                                            \
        memset(mark, 1, (size_t)L);                                                                          \
        return;                                                                                              \
    }                                                                                                        \
    if (32 * n <= L) { /* few winners: the heap touches each entry about once */                             \
        top_n_heap##S(key, L, n, cand, mark, visits);                                                        \
        return;                                                                                              \
    }                                                                                                        \
    int64_t need_eq, eq = 0;                                                                                 \
    const KT t = nth_key##S(key, L, n, (KT *)cand, &need_eq, visits);                                        \
    for (int64_t k = 0; k < L; ++k) {                                                                        \
        int at = key[k] == t;                                                                                \
        mark[k] = (uint8_t)((key[k] > t) | (at & (eq < need_eq)));                                           \
        eq += at;                                                                                            \
    }                                                                                                        \
    *visits += (uint64_t)L;                                                                                  \
}

static inline int take_fast32(const uint32_t *key, int64_t L, uint32_t t, int32_t *slot, int32_t *chan_row, int64_t *j) {
#if defined(HAVE_X86)
    if (have_avx2) {
        *j = take_top32_avx2(key, L, t, slot, chan_row);
        return 1;
    }
#endif
    (void)key, (void)L, (void)t, (void)slot, (void)chan_row, (void)j;
    return 0;
}
#define TAKE_FAST32 take_fast32
#define TAKE_FAST64(key, L, t, slot, chan_row, j) 0
#define WORSE(a, b) (key[a] < key[b] || (key[a] == key[b] && (a) > (b)))
RANKING(32, uint32_t)
RANKING(64, uint64_t)
#undef WORSE

/* mark[k] = 1 for the n top entries of a row's keys (row_keys: ``bits`` wide), else 0. */
static void top_n(const void *key, int bits, int64_t L, int64_t n, int64_t *cand, uint8_t *mark, uint64_t *visits) {
    if (bits == 32) top_n32(key, L, n, cand, mark, visits);
    else top_n64(key, L, n, cand, mark, visits);
}

/* ------------------------------------------------------------------------------------------ */
/* Geometry (SPEC.md step 3), derived here from the map's shape, not taken from the caller      */
/* ------------------------------------------------------------------------------------------ */
typedef struct {
    int64_t S[3];       /* spatial dims, leading ones for 1-D/2-D maps: (D, H, W) */
    int64_t P;          /* pixels per plane */
    int64_t lo[3], hi[3]; /* valid centres: lo[k] <= u[k] < hi[k] */
    int64_t area;       /* A */
    int64_t valid;      /* |V| */
    int64_t nruns;      /* the block as runs along the last axis: start offset and length */
    int64_t *run_delta, *run_len;
} Geometry;

/* rank = number of real spatial axes (the last `rank` of the three). Returns -1 on no memory. */
static int make_geometry(Geometry *g, const int64_t *S, int rank, int64_t block_size, int diamond) {
    int64_t up[3] = {0, 0, 0}, down[3] = {0, 0, 0}, rho = 0;
    for (int k = 0; k < 3; ++k) g->S[k] = S[k];
    g->P = S[0] * S[1] * S[2];
    if (diamond) {
        int64_t side = INT64_MAX;
        for (int k = 3 - rank; k < 3; ++k) side = S[k] < side ? S[k] : side;
        rho = (block_size < side ? block_size : side) / 2;
        if (2 * rho + 1 > side) rho = side >= 1 ? (side - 1) / 2 : 0;
        for (int k = 3 - rank; k < 3; ++k) up[k] = down[k] = rho;
    } else {
        for (int k = 3 - rank; k < 3; ++k) {
            int64_t r = block_size < S[k] ? block_size : S[k];
            if (r < 1) r = 1;
            up[k] = r / 2;       /* a seed at u covers u - r//2 .. u + (r-1)//2 */
            down[k] = (r - 1) / 2;
        }
    }
    g->valid = 1;
    for (int k = 0; k < 3; ++k) {
        g->lo[k] = up[k];
        g->hi[k] = S[k] - down[k];
        g->valid *= g->hi[k] > g->lo[k] ? g->hi[k] - g->lo[k] : 0;
    }
    /* Runs: one per (d, h) offset of the block, along w. */
    int64_t rows = (up[0] + down[0] + 1) * (up[1] + down[1] + 1);
    g->run_delta = malloc(sizeof(int64_t) * (size_t)rows);
    g->run_len = malloc(sizeof(int64_t) * (size_t)rows);
    if (!g->run_delta || !g->run_len) {
        free(g->run_delta);
        free(g->run_len);
        return -1;
    }
    g->nruns = 0;
    g->area = 0;
    for (int64_t dd = -up[0]; dd <= down[0]; ++dd)
        for (int64_t dh = -up[1]; dh <= down[1]; ++dh) {
            int64_t left, len;
            if (diamond) {
                int64_t half = rho - llabs(dd) - llabs(dh);
                if (half < 0) continue;
                left = half;
                len = 2 * half + 1;
            } else {
                left = up[2];
                len = up[2] + down[2] + 1;
            }
            g->run_delta[g->nruns] = (dd * S[1] + dh) * S[2] - left;
            g->run_len[g->nruns] = len;
            g->nruns++;
            g->area += len;
        }
    return 0;
}

static void free_geometry(Geometry *g) {
    free(g->run_delta);
    free(g->run_len);
}

/* Sets bits [start, start + len) of a plane's words. */
static inline void set_run(uint32_t *w, int64_t start, int64_t len) {
    int64_t end = start + len - 1; /* inclusive */
    int64_t ws = start >> 5, we = end >> 5;
    uint32_t first = 0xFFFFFFFFu << (start & 31), last = 0xFFFFFFFFu >> (31 - (end & 31));
    if (ws == we) {
        w[ws] |= first & last;
        return;
    }
    w[ws] |= first;
    for (int64_t k = ws + 1; k < we; ++k) w[k] = 0xFFFFFFFFu;
    w[we] |= last;
}

/* Set bits of a word (SWAR: no dependence on the compiler targeting POPCNT). */
static inline int popcount32(uint32_t x) {
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0F0F0F0Fu;
    return (int)((x * 0x01010101u) >> 24);
}

/* ------------------------------------------------------------------------------------------ */
/* build                                                                                       */
/* ------------------------------------------------------------------------------------------ */
typedef struct {
    const Geometry *g;
    const char *cam, *alpha;
    int cam_type, alpha_type;
    int64_t N, C, n_pix, n_chan, words;
    int eligible;
    double p_gs;       /* drop_prob * gamma_scale */
    uint64_t seed;
    int32_t *slots, *bits; /* the caller's outputs: written, never read back */
    int64_t *dropped;
    float *rate;
    char *scratch;     /* per thread */
    size_t scratch_bytes;
    int32_t *slot_own; /* (N, C) this call's own copy of the slots: what the kernels read */
    int32_t *chan;     /* (N, n'): the channel of each slot */
    int64_t *ntop;     /* (N,): top channels per sample */
    int64_t *count;    /* (N,): dropped elements per sample (this call's own copy) */
    uint32_t *keep;    /* (N, C) or NULL: all ones outside the top channels, 0 at them */
} BuildCtx;

static void build_body(void *p, int64_t begin, int64_t end, int tid) {
    BuildCtx *b = p;
    const Geometry *g = b->g;
    const int64_t C = b->C, P = g->P, longest = P > C ? P : C;
    char *s = b->scratch + (size_t)tid * b->scratch_bytes;
    uint64_t *key = (uint64_t *)s;
    int64_t *heap = (int64_t *)(key + longest);
    int64_t *elig = heap + longest;
    uint64_t *offs = (uint64_t *)(elig + P);
    float *u = (float *)(offs + BATCH);
    int32_t *chan_row = (int32_t *)(u + BATCH); /* C + 8 entries: take_top writes past the last slot */
    uint8_t *mark = (uint8_t *)(chan_row + C + 8);
    uint64_t cmp = 0;
    for (int64_t i = begin; i < end; ++i) {
        /* Step 2: the top channels, numbered in ascending channel order. */
        int bits = row_keys(b->alpha, b->alpha_type, i * C, C, key);
        int32_t *slot = b->slot_own + i * C, *slot_out = b->slots + i * C, *chan = b->chan + i * b->n_chan;
        int64_t j = 0;
        if (b->n_chan < C && 32 * b->n_chan > C) { /* the usual n' = C/8: the n'-th key, then one pass */
            int64_t need_eq;
            if (bits == 32) {
                const uint32_t t = nth_key32((const uint32_t *)key, C, b->n_chan, (uint32_t *)heap, &need_eq, &cmp);
                j = take_top32((const uint32_t *)key, C, t, need_eq, slot, chan_row);
            } else {
                const uint64_t t = nth_key64((const uint64_t *)key, C, b->n_chan, (uint64_t *)heap, &need_eq, &cmp);
                j = take_top64((const uint64_t *)key, C, t, need_eq, slot, chan_row);
            }
            if (j == b->n_chan) memcpy(chan, chan_row, sizeof(int32_t) * (size_t)j);
            else j = -1; /* (never: exactly n' by construction; the marks below would redo it) */
        }
        if (j < 0 || !(b->n_chan < C && 32 * b->n_chan > C)) {
            j = 0;
            top_n(key, bits, C, b->n_chan, heap, mark, &cmp);
            for (int64_t c = 0; c < C; ++c) {
                slot[c] = mark[c] ? (int32_t)j : -1;
                if (mark[c]) chan[j++] = (int32_t)c;
            }
        }
        b->ntop[i] = j;
        for (int64_t q = j; q < b->n_chan; ++q) chan[q] = -1; /* (only when C < n': no channels) */
        memcpy(slot_out, slot, sizeof(int32_t) * (size_t)C);
        if (b->keep)
            for (int64_t c = 0; c < C; ++c) b->keep[i * C + c] = slot[c] >= 0 ? 0u : 0xFFFFFFFFu;
        /* Step 1 and 3: the top pixels that are valid centres (S_i ∩ V), ascending. */
        bits = row_keys(b->cam, b->cam_type, i * P, P, key);
        top_n(key, bits, P, b->n_pix, heap, mark, &cmp);
        int64_t m = 0;
        for (int64_t q = 0; q < P; ++q) {
            if (!mark[q]) continue;
            int64_t w = q % g->S[2], h = (q / g->S[2]) % g->S[1], d = q / (g->S[2] * g->S[1]);
            if (d >= g->lo[0] && d < g->hi[0] && h >= g->lo[1] && h < g->hi[1] && w >= g->lo[2] && w < g->hi[2])
                elig[m++] = q;
        }
        /* Step 4: the seed rate, float64 left to right, clamped, rounded to float32. */
        double rate;
        if (b->eligible) { /* (the integer products are exact in double below 2**53, like the ints of SPEC.md) */
            rate = m ? b->p_gs * (double)(C * P) / ((double)g->area * (double)b->n_chan * (double)m) : 0.0;
        } else {
            rate = g->valid ? b->p_gs * (double)P / ((double)g->area * (double)g->valid) : 0.0;
        }
        float gamma = (float)(rate > 0.0 ? (rate < 1.0 ? rate : 1.0) : 0.0); /* NaN -> 0 */
        b->rate[i] = gamma;
        /* Steps 5-6: seeds at (top channel, eligible pixel), blocks stamped as runs of bits. */
        int64_t count = 0;
        uint32_t *planes = (uint32_t *)b->bits + i * b->n_chan * b->words;
        memset(planes, 0, sizeof(uint32_t) * (size_t)(b->n_chan * b->words));
        if (gamma >= 1.0f) {
            /* U < 1 always (its largest value is 1 - 2**-24): every eligible seed fires, and every
               top channel's plane is the same. Stamp one, copy it. */
            uint32_t *plane = planes;
            for (int64_t k = 0; k < m; ++k)
                for (int64_t r = 0; r < g->nruns; ++r) /* valid centres: every run lies in the plane */
                    set_run(plane, elig[k] + g->run_delta[r], g->run_len[r]);
            int64_t plane_count = 0;
            for (int64_t w = 0; w < b->words; ++w) plane_count += popcount32(plane[w]);
            for (int64_t j = 1; j < b->n_chan; ++j)
                memcpy(planes + j * b->words, plane, sizeof(uint32_t) * (size_t)b->words);
            count = plane_count * b->n_chan;
        } else if (gamma > 0.0f && m > 0) {
            /* U at every (top channel, eligible pixel), BATCH draws at a time across planes. */
            int64_t pending = 0;
            int64_t c_of[BATCH / 1 + 1];
            for (int64_t c = 0; c <= C; ++c) {
                int flush = c == C || (slot[c] >= 0 && pending + m > BATCH);
                if (flush && pending) {
                    philox_batch(b->seed, offs, u, pending);
                    for (int64_t e0 = 0, t = 0; e0 < pending; e0 += m, ++t) {
                        uint32_t *plane = planes + slot[c_of[t]] * b->words;
                        for (int64_t k = 0; k < m; ++k)
                            if (u[e0 + k] < gamma)
                                for (int64_t r = 0; r < g->nruns; ++r)
                                    set_run(plane, elig[k] + g->run_delta[r], g->run_len[r]);
                    }
                    pending = 0;
                }
                if (c == C || slot[c] < 0) continue;
                uint64_t base = (uint64_t)((i * C + c) * P); /* logical index o of (i, c, pixel 0) */
                for (int64_t k0 = 0; k0 < m; k0 += BATCH) { /* (a plane with more than BATCH eligible pixels) */
                    int64_t k1 = k0 + BATCH < m ? k0 + BATCH : m;
                    if (m <= BATCH) {
                        c_of[pending / m] = c;
                        for (int64_t k = 0; k < m; ++k) offs[pending + k] = base + (uint64_t)elig[k];
                        pending += m;
                        break;
                    }
                    for (int64_t k = k0; k < k1; ++k) offs[k - k0] = base + (uint64_t)elig[k];
                    philox_batch(b->seed, offs, u, k1 - k0);
                    uint32_t *plane = planes + slot[c] * b->words;
                    for (int64_t k = k0; k < k1; ++k)
                        if (u[k - k0] < gamma)
                            for (int64_t r = 0; r < g->nruns; ++r)
                                set_run(plane, elig[k] + g->run_delta[r], g->run_len[r]);
                }
            }
            for (int64_t w = 0; w < b->n_chan * b->words; ++w) count += popcount32(planes[w]);
        }
        b->dropped[i] = count;
        b->count[i] = count;
    }
}

static double read_scalar_f64(const View *v) {
    double d;
    memcpy(&d, v->data, 8);
    return d;
}

/* A build's checked arguments, geometry and buffers. */
typedef struct {
    Geometry g;
    BuildCtx b;
    int T;               /* threads worth waking for it */
    long long normalize;
    View scale;
    char *own;           /* slot_own, chan, ntop, keep: one allocation */
} BuildPlan;

static void build_release(BuildPlan *bp) {
    free(bp->b.scratch);
    free(bp->own);
    free_geometry(&bp->g);
}

/* Checks the build's arguments (every view, value and count; the callers check aliasing) and
   allocates its buffers: scratch for the bp->T threads its own rule picks, keep masks when
   ``want_keep``. -1 with an exception set. */
static int build_prepare(BuildPlan *bp, View *cam, View *alpha, View *seed, View *pv, View *slots, View *bits,
                         View *scale, View *dropped, View *rate, long long block_size, long long diamond,
                         long long n_pix, long long n_chan, long long eligible, double gamma_scale,
                         long long normalize, long long threads, int want_keep) {
    memset(bp, 0, sizeof(*bp));
    if (cam->ndim < 2 || cam->ndim > 4) {
        PyErr_Format(PyExc_ValueError, "cam must be (N, *S) with 1 to 3 spatial dims");
        return -1;
    }
    if (cam->type > T_F64 || alpha->type > T_F64) {
        PyErr_Format(PyExc_TypeError, "cam and alpha must be float16, bfloat16, float32 or float64");
        return -1;
    }
    const int rank = cam->ndim - 1;
    const int64_t N = cam->shape[0];
    int64_t S[3] = {1, 1, 1};
    for (int k = 0; k < rank; ++k) S[3 - rank + k] = cam->shape[1 + k];
    const int64_t P = S[0] * S[1] * S[2];
#define FAIL(exc, ...) do { PyErr_Format(exc, __VA_ARGS__); return -1; } while (0)
    if (!is_contiguous(cam)) FAIL(PyExc_ValueError, "cam must be contiguous");
    if (alpha->ndim != 2 || alpha->shape[0] != N) FAIL(PyExc_ValueError, "alpha must be (N, C) with cam's N");
    if (!is_contiguous(alpha)) FAIL(PyExc_ValueError, "alpha must be contiguous");
    const int64_t C = alpha->shape[1];
    if (check_type(seed, "seed", T_I64) || check_type(pv, "drop_prob", T_F64)) return -1;
    if (seed->numel != 1 || pv->numel != 1) FAIL(PyExc_ValueError, "seed and drop_prob must hold one value each");
    int64_t seed_value;
    memcpy(&seed_value, seed->data, 8);
    if (seed_value < 0) FAIL(PyExc_ValueError, "seed must be in [0, 2**63)");
    const double p = read_scalar_f64(pv);
    if (!(p >= 0.0 && p <= 1.0)) FAIL(PyExc_ValueError, "drop_prob must be in [0, 1]");
    if (block_size < 1) FAIL(PyExc_ValueError, "block_size must be >= 1");
    if (diamond != 0 && diamond != 1) FAIL(PyExc_ValueError, "diamond must be 0 or 1");
    if (eligible != 0 && eligible != 1) FAIL(PyExc_ValueError, "eligible must be 0 or 1");
    if (normalize < 0 || normalize > 2) FAIL(PyExc_ValueError, "normalize must be 0, 1 or 2");
    if (!(gamma_scale >= 0.0 && isfinite(gamma_scale))) FAIL(PyExc_ValueError, "gamma_scale must be finite and >= 0");
    if (threads < 1 || threads > 4096) FAIL(PyExc_ValueError, "threads must be in [1, 4096]");
    const int64_t max_pix = P > 0 ? P : 1, max_chan = C > 0 ? C : 1;
    if (n_pix < 1 || n_pix > max_pix) FAIL(PyExc_ValueError, "top_pixels must be in [1, %lld]", (long long)max_pix);
    if (n_chan < 1 || n_chan > max_chan) FAIL(PyExc_ValueError, "top_channels must be in [1, %lld]", (long long)max_chan);
    const int64_t words = (P + 31) / 32;
    const int64_t s2[2] = {N, C}, s3[3] = {N, n_chan, words}, s1[1] = {N};
    if (check_dense(slots, "slots", T_I32, 2, s2) || check_dense(bits, "bits", T_I32, 3, s3) ||
        check_dense(dropped, "dropped", T_I64, 1, s1) || check_dense(rate, "rate", T_F32, 1, s1))
        return -1;
    if (scale->type != T_F32 && scale->type != T_F64) FAIL(PyExc_TypeError, "scale must be float32 or float64");
    if (check_dense(scale, "scale", scale->type, 1, s1)) return -1;
    /* Products below stay exact in int64 and double: refuse maps beyond that. */
    if (P > ((int64_t)1 << 40) || C > ((int64_t)1 << 30) || (P > 0 && C > (((int64_t)1 << 52) / P)))
        FAIL(PyExc_ValueError, "the tensor is too large for the CPU kernels");
#undef FAIL
    if (make_geometry(&bp->g, S, rank, block_size, (int)diamond)) {
        PyErr_NoMemory();
        return -1;
    }
    const int64_t longest = P > C ? P : C;
    BuildCtx b = {&bp->g, cam->data, alpha->data, cam->type, alpha->type, N, C, n_pix, n_chan, words, (int)eligible,
                  p * gamma_scale, (uint64_t)seed_value, (int32_t *)slots->data, (int32_t *)bits->data,
                  (int64_t *)dropped->data, (float *)rate->data, NULL, 0, NULL, NULL, NULL, NULL, NULL};
    /* key + candidate index + mark per entry of the longest row; the eligible list; a batch of
       offsets and U; a row of slot channels. */
    b.scratch_bytes = (size_t)longest * 17 + (size_t)P * 8 + (size_t)BATCH * 12 + (size_t)(C + 8) * 4 + 64;
    b.scratch_bytes = (b.scratch_bytes + 63) & ~(size_t)63;
    int T = (int)threads;
    if (T > N) T = N > 0 ? (int)N : 1;
    if ((double)N * (double)(P + C) < 8192.0) T = 1; /* not worth waking the pool */
    bp->T = T;
    /* The kernels' own slots, slot channels, top counts and keep masks (never the caller's memory). */
    size_t own = sizeof(int32_t) * (size_t)(N * C + N * n_chan) + sizeof(int64_t) * (size_t)(2 * N) + 8 +
                 (want_keep ? sizeof(uint32_t) * (size_t)(N * C) : 0);
    bp->own = malloc(own);
    b.scratch = malloc(b.scratch_bytes * (size_t)T);
    if (!bp->own || !b.scratch) {
        free(b.scratch);
        free(bp->own);
        free_geometry(&bp->g);
        PyErr_NoMemory();
        return -1;
    }
    b.slot_own = (int32_t *)bp->own;
    b.chan = b.slot_own + N * C;
    b.ntop = (int64_t *)(((uintptr_t)(b.chan + N * n_chan) + 7) & ~(uintptr_t)7);
    b.count = b.ntop + N;
    b.keep = want_keep ? (uint32_t *)(b.count + N) : NULL;
    bp->b = b;
    bp->normalize = normalize;
    bp->scale = *scale;
    return 0;
}

/* Step 7: float64 quotient, rounded once to the scale's dtype; kept = 0 gives 0. */
static void build_finish(const BuildPlan *bp) {
    const BuildCtx *b = &bp->b;
    const int64_t N = b->N, C = b->C, P = bp->g.P;
    int64_t total = 0;
    for (int64_t i = 0; i < N; ++i) total += b->dropped[i];
    for (int64_t i = 0; i < N; ++i) {
        double sc = 1.0;
        if (bp->normalize != 2) {
            double numel = (double)(bp->normalize == 0 ? N * C * P : C * P);
            double kept = numel - (double)(bp->normalize == 0 ? total : b->dropped[i]);
            sc = kept == 0.0 ? 0.0 : numel / kept;
        }
        if (bp->scale.type == T_F32) ((float *)bp->scale.data)[i] = (float)sc;
        else ((double *)bp->scale.data)[i] = sc;
    }
}

static PyObject *run_build(PyObject *o_cam, PyObject *o_alpha, PyObject *o_seed, PyObject *o_p, PyObject *o_slots,
                           PyObject *o_bits, PyObject *o_scale, PyObject *o_dropped, PyObject *o_rate,
                           long long block_size, long long diamond, long long n_pix, long long n_chan,
                           long long eligible, double gamma_scale, long long normalize, long long threads) {
    View cam, alpha, seed, pv, slots, bits, scale, dropped, rate;
    if (get_view(o_cam, "cam", &cam) || get_view(o_alpha, "alpha", &alpha) || get_view(o_seed, "seed", &seed) ||
        get_view(o_p, "drop_prob", &pv) || get_view(o_slots, "slots", &slots) || get_view(o_bits, "bits", &bits) ||
        get_view(o_scale, "scale", &scale) || get_view(o_dropped, "dropped", &dropped) ||
        get_view(o_rate, "rate", &rate))
        return NULL;
    BuildPlan bp;
    if (build_prepare(&bp, &cam, &alpha, &seed, &pv, &slots, &bits, &scale, &dropped, &rate, block_size, diamond,
                      n_pix, n_chan, eligible, gamma_scale, normalize, threads, 0))
        return NULL;
    {
        View *views[] = {&cam, &alpha, &seed, &pv, &slots, &bits, &scale, &dropped, &rate};
        const char *names[] = {"cam", "alpha", "seed", "drop_prob", "slots", "bits", "scale", "dropped", "rate"};
        if (check_outputs(views, names, 9, 4, -1)) {
            build_release(&bp);
            return NULL;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    Job job = {build_body, &bp.b, bp.b.N};
    run_job(&job, bp.T);
    build_finish(&bp);
    Py_END_ALLOW_THREADS
    build_release(&bp);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------ */
/* apply                                                                                       */
/* ------------------------------------------------------------------------------------------ */
/* float32 -> bfloat16 / float16, round to nearest even (as torch and the GPU convert). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
}

static inline uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = x & 0x80000000u;
    uint32_t o;
    x ^= sign;
    if (x >= (143u << 23)) {              /* >= 2**16 (or inf, NaN): inf, or a quiet NaN */
        o = x > (255u << 23) ? 0x7E00 : 0x7C00;
    } else if (x < (113u << 23)) {        /* below 2**-14: a subnormal half or zero */
        const uint32_t magic_bits = ((127 - 15) + (23 - 10) + 1) << 23; /* 0.5: aligns the last bit to 2**-24 */
        float fx, magic;
        memcpy(&fx, &x, 4);
        memcpy(&magic, &magic_bits, 4);
        fx += magic;                      /* the FPU rounds to nearest even here */
        uint32_t r;
        memcpy(&r, &fx, 4);
        o = r - magic_bits;
    } else {                              /* normal: rebias, round half to even on bit 13 */
        uint32_t odd = (x >> 13) & 1;
        x += ((uint32_t)(15 - 127) << 23) + 0xFFF + odd;
        o = x >> 13;                      /* a carry into the exponent gives inf correctly */
    }
    return (uint16_t)(o | (sign >> 16));
}

static inline float f16_to_f32(uint16_t h) { return (float)read_float((const char *)&h, T_F16, 0); }
static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* y[k*sy] = x[k*sx] * s for k < n, one rounding to the dtype (float32 math below float64).
   Built for AVX2 and for the baseline, picked at load time where the toolchain supports it: the
   multiply is the bulk of the work and torch's own multiply uses the wider vectors too. */
CLONES static void scale_run(int type, const char *x, int64_t sx, char *y, int64_t sy, int64_t n, double s64, float s32) {
    switch (type) {
    case T_F32: {
        const float *restrict xs = (const float *)x;
        float *restrict ys = (float *)y;
        if (sx == 1 && sy == 1)
            for (int64_t k = 0; k < n; ++k) ys[k] = xs[k] * s32;
        else
            for (int64_t k = 0; k < n; ++k) ys[k * sy] = xs[k * sx] * s32;
        break;
    }
    case T_F64: {
        const double *restrict xs = (const double *)x;
        double *restrict ys = (double *)y;
        if (sx == 1 && sy == 1)
            for (int64_t k = 0; k < n; ++k) ys[k] = xs[k] * s64;
        else
            for (int64_t k = 0; k < n; ++k) ys[k * sy] = xs[k * sx] * s64;
        break;
    }
    case T_BF16: {
        const uint16_t *restrict xs = (const uint16_t *)x;
        uint16_t *restrict ys = (uint16_t *)y;
        for (int64_t k = 0; k < n; ++k) ys[k * sy] = f32_to_bf16(bf16_to_f32(xs[k * sx]) * s32);
        break;
    }
    default: {
        const uint16_t *restrict xs = (const uint16_t *)x;
        uint16_t *restrict ys = (uint16_t *)y;
        for (int64_t k = 0; k < n; ++k) ys[k * sy] = f32_to_f16(f16_to_f32(xs[k * sx]) * s32);
        break;
    }
    }
}

typedef struct {
    View x, y;
    const int32_t *slots;
    const uint32_t *bits;
    const int32_t *chan;  /* (N, n'): the channel of each slot, -1 if none */
    const char *scale;
    int scale_f64;
    int64_t N, C, n_chan, words, S[3], P;
    int64_t sx[5], sy[5]; /* strides of (n, c, d, h, w) in elements (0 for missing axes) */
    int flat;             /* every plane of x and y has pixel q at q * (w stride) */
    int64_t block_channels; /* channels per work item when x and y are dense NCHW */
    const uint32_t *keep;   /* (N, C): all ones outside the top channels, 0 at them */
    int dense_pixels;       /* channels_last without gaps: pixel q of sample i at i*sn + q*C */
    const int64_t *ntop;    /* (N,): top channels per sample */
    const int64_t *count;   /* (N,) or NULL: dropped elements per sample, where the build just counted them */
    int channel_inner;      /* channels innermost in memory (channels_last): the pixel walk */
} ApplyCtx;

static inline void sample_scale(const ApplyCtx *a, int64_t i, double *s64, float *s32) {
    if (a->scale_f64) {
        *s64 = ((const double *)a->scale)[i];
        *s32 = (float)*s64;
    } else {
        *s32 = ((const float *)a->scale)[i];
        *s64 = *s32;
    }
}

/* +0.0 into n elements at y, y + sy, ... (all-zero bytes are +0.0 in every float type). Typed
   stores, not memset: runs are short (a block's width), where a call costs more than the stores.
   (The attribute keeps GCC from turning the loops back into memset calls.) */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-distribute-patterns")))
#endif
static void zero_run(char *y, int64_t sy, int64_t n, int esize) {
    switch (esize) {
    case 2: {
        uint16_t *p = (uint16_t *)y;
        for (int64_t k = 0; k < n; ++k) p[k * sy] = 0;
        break;
    }
    case 4: {
        uint32_t *p = (uint32_t *)y;
        for (int64_t k = 0; k < n; ++k) p[k * sy] = 0;
        break;
    }
    default: {
        uint64_t *p = (uint64_t *)y;
        for (int64_t k = 0; k < n; ++k) p[k * sy] = 0;
        break;
    }
    }
}

/* Zeroes the dropped elements of one row: bits [f0, f0 + n) of ``plane``, element k at y + k*sy. */
static void zero_row(const uint32_t *plane, int64_t f0, int64_t n, char *y, int64_t sy, int esize) {
    int64_t b = f0, end = f0 + n;
    while (b < end) {
        uint32_t word = plane[b >> 5] >> (b & 31);
        if (!word) {
            b = ((b >> 5) + 1) << 5;
            continue;
        }
        b += __builtin_ctz(word);
        if (b >= end) break;
        int64_t start = b;
        for (;;) { /* extend the run of ones (bits past the word's end read as ones, then stop) */
            uint32_t rest = ~(plane[b >> 5] >> (b & 31));
            if (rest == 0) {
                b = ((b >> 5) + 1) << 5;
                if (b >= end) break;
                continue;
            }
            b += __builtin_ctz(rest);
            break;
        }
        int64_t stop = b < end ? b : end;
        zero_run(y + (start - f0) * sy * esize, sy, stop - start, esize);
    }
}

/* Plane-major order. A work item is a segment of a plane laid out flat in x and y (pixel q at
   q * w-stride): the whole plane when it is (contiguous NCHW, the common case), else one row
   (i, c, d, h) of W pixels. Multiply the segment, then zero the runs its mask bits hold. */
static void apply_segments(void *p, int64_t begin, int64_t end, int tid) {
    (void)tid;
    const ApplyCtx *a = p;
    const int64_t D = a->S[0], H = a->S[1], W = a->S[2];
    const int es = a->x.esize;
    const int64_t seg_len = a->flat ? a->P : W, segs = a->flat ? 1 : D * H;
    for (int64_t r = begin; r < end; ++r) {
        int64_t seg = r % segs, c = (r / segs) % a->C, i = r / (segs * a->C);
        int64_t h = seg % H, d = seg / H; /* (0, 0) for a flat plane */
        double s64;
        float s32;
        sample_scale(a, i, &s64, &s32);
        const char *x = a->x.data + (i * a->sx[0] + c * a->sx[1] + d * a->sx[2] + h * a->sx[3]) * es;
        char *y = a->y.data + (i * a->sy[0] + c * a->sy[1] + d * a->sy[2] + h * a->sy[3]) * es;
        scale_run(a->x.type, x, a->sx[4], y, a->sy[4], seg_len, s64, s32);
        int32_t slot = a->slots[i * a->C + c];
        if (slot >= 0)
            zero_row(a->bits + (i * a->n_chan + slot) * a->words, seg * seg_len, seg_len, y, a->sy[4], es);
    }
}

#if defined(HAVE_X86)
/* y[k] = +0.0 where bit k of ``bits`` is set, else x[k] * s (float32, contiguous): the multiply and
   the mask in one pass, 8 lanes at a time (a lane's bit shifted down by its lane index, then a
   compare makes an all-ones keep mask; AND with it zeroes the dropped lanes' bits exactly). */
__attribute__((target("avx2"))) static void scale_masked_f32(const float *x, float *y, int64_t n, float s,
                                                             const uint32_t *bits) {
    const __m256 vs = _mm256_set1_ps(s);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), one = _mm256_set1_epi32(1);
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        uint32_t w = (bits[k >> 5] >> (k & 31)) & 0xFFu; /* k is a multiple of 8: these 8 bits */
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + k), vs);
        if (w) {
            __m256i b = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)w), lane), one);
            v = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, _mm256_setzero_si256())));
        }
        _mm256_storeu_ps(y + k, v);
    }
    for (; k < n; ++k) y[k] = ((bits[k >> 5] >> (k & 31)) & 1) ? 0.0f : x[k] * s;
}
#endif

#if defined(HAVE_X86)
/* y[k] = x[k] * s with the bits of y[k] ANDed with keep[k] (0: +0.0), float32, x and y contiguous. */
__attribute__((target("avx2"))) static void scale_keep_f32(const float *x, float *y, int64_t n, float s,
                                                           const uint32_t *keep) {
    const __m256 vs = _mm256_set1_ps(s);
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + k), vs);
        _mm256_storeu_ps(y + k, _mm256_and_ps(v, _mm256_loadu_ps((const float *)(keep + k))));
    }
    for (; k < n; ++k) y[k] = keep[k] ? x[k] * s : 0.0f;
}
#endif

#if defined(HAVE_X86)
/* y[k] = +0.0 where bit k of ``bits`` is set (float32, contiguous, in place): a mask word's bytes
   turned into 8-lane keep masks (byte AND lane bit == 0), ANDed into y; clear bytes are skipped. */
__attribute__((target("avx2"))) static void mask_plane_f32(float *y, int64_t n, const uint32_t *bits) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128), zero = _mm256_setzero_si256();
    int64_t k = 0;
    for (; k + 32 <= n; k += 32) {
        uint32_t w = bits[k >> 5];
        for (int q = 0; w; ++q, w >>= 8) {
            if (!(w & 0xFFu)) continue;
            __m256i keep = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)(w & 0xFFu)), lane_bit), zero);
            float *p = y + k + 8 * q;
            _mm256_storeu_ps(p, _mm256_and_ps(_mm256_loadu_ps(p), _mm256_castsi256_ps(keep)));
        }
    }
    for (; k < n; ++k)
        if ((bits[k >> 5] >> (k & 31)) & 1) y[k] = 0.0f;
}
#endif

/* Any bit set among a plane's first n bits. */
static inline int plane_any(const uint32_t *plane, int64_t n) {
    uint32_t any = 0;
    for (int64_t w = 0; w < (n >> 5); ++w) any |= plane[w];
    if (n & 31) any |= plane[n >> 5] & ((1u << (n & 31)) - 1);
    return any != 0;
}

/* Dense NCHW (x and y contiguous per sample: plane c at c * P): a work item is a block of
   consecutive channels of one sample. Runs of channels outside the top ones are one plain
   multiply (small maps do not pay a call per plane); a top channel's plane is multiplied and
   masked in one pass where that is vectorised (float32 with AVX2), else multiplied and then its
   dropped runs zeroed. */
static void apply_blocks(void *p, int64_t begin, int64_t end, int tid) {
    (void)tid;
    const ApplyCtx *a = p;
    const int es = a->x.esize;
    const int64_t per_block = a->block_channels, blocks = (a->C + per_block - 1) / per_block, P = a->P;
#if defined(HAVE_X86)
    const int fused = have_avx2 && a->x.type == T_F32;
#else
    const int fused = 0;
#endif
    for (int64_t item = begin; item < end; ++item) {
        int64_t i = item / blocks, c0 = (item % blocks) * per_block;
        int64_t c1 = c0 + per_block < a->C ? c0 + per_block : a->C;
        double s64;
        float s32;
        sample_scale(a, i, &s64, &s32);
        const char *x = a->x.data + i * a->sx[0] * es;
        char *y = a->y.data + i * a->sy[0] * es;
        const int32_t *slot = a->slots + i * a->C;
        if (P < 512) {
            /* Small maps: one multiply for the whole block (a call per plane would cost more than
               the plane), then the top planes' dropped runs zeroed while they are in cache. */
            scale_run(a->x.type, x + c0 * P * es, 1, y + c0 * P * es, 1, (c1 - c0) * P, s64, s32);
            if (a->count && a->count[i] == 0) continue; /* nothing dropped in this sample */
            const int32_t *chan = a->chan + i * a->n_chan;
            for (int64_t j = 0; j < a->n_chan; ++j) { /* the top channels in this block (chan: -1 or < C) */
                const int64_t c = chan[j];
                if (c < c0 || c >= c1) continue;
                const uint32_t *plane = a->bits + (i * a->n_chan + j) * a->words;
                if (!plane_any(plane, P)) continue;
#if defined(HAVE_X86)
                if (fused) {
                    mask_plane_f32((float *)(y + c * P * es), P, plane);
                    continue;
                }
#endif
                zero_row(plane, 0, P, y + c * P * es, 1, es);
            }
            continue;
        }
        int64_t c = c0;
        while (c < c1) {
            int64_t run = c;
            while (run < c1 && slot[run] < 0) ++run; /* channels outside the top ones: one multiply */
            if (run > c) scale_run(a->x.type, x + c * P * es, 1, y + c * P * es, 1, (run - c) * P, s64, s32);
            if (run == c1) break;
            const uint32_t *plane = a->bits + (i * a->n_chan + slot[run]) * a->words;
#if defined(HAVE_X86)
            if (fused) {
                scale_masked_f32((const float *)(x + run * P * es), (float *)(y + run * P * es), P, s32, plane);
                c = run + 1;
                continue;
            }
#endif
            scale_run(a->x.type, x + run * P * es, 1, y + run * P * es, 1, P, s64, s32);
            zero_row(plane, 0, P, y + run * P * es, 1, es);
            c = run + 1;
        }
    }
    (void)fused;
}

/* Channel-inner order (channels_last): work item = 32 pixels (one mask word) of one sample. The
   AND and the OR of the top channels' mask words tell, per pixel, whether every top channel is
   dropped there (the usual case once the rate saturates: then one vectorised multiply ANDed
   with the sample's keep mask, 0 at its top channels), none (a plain multiply), or some (a
   multiply, then a store for each top channel whose bit is set). */
static void apply_pixels(void *p, int64_t begin, int64_t end, int tid) {
    (void)tid;
    const ApplyCtx *a = p;
    const int64_t H = a->S[1], W = a->S[2], C = a->C, nc = a->n_chan;
    const int es = a->x.esize;
#if defined(HAVE_X86)
    const int fused = have_avx2 && a->x.type == T_F32 && a->sx[1] == 1 && a->sy[1] == 1;
#else
    const int fused = 0;
#endif
    for (int64_t item = begin; item < end; ++item) {
        int64_t i = item / a->words, k = item % a->words;
        double s64;
        float s32;
        sample_scale(a, i, &s64, &s32);
        const uint32_t *planes = a->bits + i * nc * a->words;
        const int32_t *chan = a->chan + i * nc;
        uint32_t all = 0xFFFFFFFFu, some = 0;
        for (int64_t j = 0; j < nc; ++j) {
            if (chan[j] < 0) continue;
            all &= planes[j * a->words + k];
            some |= planes[j * a->words + k];
        }
        if (a->ntop[i] == 0) all = 0;
        int64_t f0 = k * 32, f1 = f0 + 32 < a->P ? f0 + 32 : a->P;
        if (a->dense_pixels) {
            /* channels_last with no gaps: the 32 pixels are 32 * C consecutive elements. One multiply
               for all of them, then the dropped ones fixed in place (y's row just written). */
            const int64_t base = i * a->sx[0] + f0 * C, ybase = i * a->sy[0] + f0 * C;
            const int n = (int)(f1 - f0);
            const uint32_t valid = n == 32 ? 0xFFFFFFFFu : (1u << n) - 1;
            uint32_t full = fused ? all & valid : 0; /* pixels where every top channel is dropped */
            if (!full) {
                scale_run(a->x.type, a->x.data + base * es, 1, a->y.data + ybase * es, 1, n * C, s64, s32);
            } else {
#if defined(HAVE_X86)
                /* Runs of the other pixels: one multiply each; those pixels: multiplied and ANDed with
                   the keep mask in one pass. */
                for (int b = 0; b < n;) {
                    if ((full >> b) & 1) {
                        scale_keep_f32((const float *)a->x.data + base + b * C, (float *)a->y.data + ybase + b * C,
                                       C, s32, a->keep + i * C);
                        ++b;
                        continue;
                    }
                    int e = (full >> b) ? b + __builtin_ctz(full >> b) : n;
                    scale_run(a->x.type, a->x.data + (base + b * C) * es, 1, a->y.data + (ybase + b * C) * es, 1,
                              (e - b) * C, s64, s32);
                    b = e;
                }
#endif
            }
            if (!(some & valid & ~full)) continue;
            /* Then each top channel's dropped pixels among the rest: one store each, found by their bits. */
            for (int64_t j = 0; j < nc; ++j) {
                uint32_t w = planes[j * a->words + k] & valid & ~full;
                if (!w || chan[j] < 0) continue;
                char *y = a->y.data + (ybase + chan[j]) * es;
                switch (es) {
                case 2:
                    for (; w; w &= w - 1) ((uint16_t *)y)[__builtin_ctz(w) * C] = 0;
                    break;
                case 4:
                    for (; w; w &= w - 1) ((uint32_t *)y)[__builtin_ctz(w) * C] = 0;
                    break;
                default:
                    for (; w; w &= w - 1) ((uint64_t *)y)[__builtin_ctz(w) * C] = 0;
                    break;
                }
            }
            continue;
        }
        int64_t w = f0 % W, h = (f0 / W) % H, d = f0 / (W * H);
        for (int64_t f = f0; f < f1; ++f) {
            const int b = (int)(f - f0);
            const char *x = a->x.data + (i * a->sx[0] + d * a->sx[2] + h * a->sx[3] + w * a->sx[4]) * es;
            char *y = a->y.data + (i * a->sy[0] + d * a->sy[2] + h * a->sy[3] + w * a->sy[4]) * es;
#if defined(HAVE_X86)
            if (fused && ((all >> b) & 1)) {
                scale_keep_f32((const float *)x, (float *)y, C, s32, a->keep + i * C);
                goto next;
            }
#endif
            scale_run(a->x.type, x, a->sx[1], y, a->sy[1], C, s64, s32);
            if ((some >> b) & 1)
                for (int64_t j = 0; j < nc; ++j) /* the stores of one pixel fall in its own row */
                    if (chan[j] >= 0 && ((planes[j * a->words + k] >> b) & 1))
                        zero_run(y + chan[j] * a->sy[1] * es, 1, 1, es);
#if defined(HAVE_X86)
        next:
#endif
            if (++w == W) {
                w = 0;
                if (++h == H) {
                    h = 0;
                    ++d;
                }
            }
        }
    }
    (void)fused;
}

/* Checks x, y (already read into a), slots, bits and scale, and fills a's sizes and strides.
   -1 with an exception set. (The callers check aliasing.) */
static int apply_check(ApplyCtx *a, View *slots, View *bits, View *scale, long long threads) {
#define FAIL(exc, ...) do { PyErr_Format(exc, __VA_ARGS__); return -1; } while (0)
    if (a->x.type > T_F64) FAIL(PyExc_TypeError, "x must be float16, bfloat16, float32 or float64");
    if (a->x.ndim < 3 || a->x.ndim > 5) FAIL(PyExc_ValueError, "x must be (N, C, *S) with 1 to 3 spatial dims");
    if (a->y.type != a->x.type || a->y.ndim != a->x.ndim) FAIL(PyExc_ValueError, "y must have x's dtype and shape");
    for (int d = 0; d < a->x.ndim; ++d)
        if (a->y.shape[d] != a->x.shape[d]) FAIL(PyExc_ValueError, "y must have x's dtype and shape");
    if (!non_overlapping(&a->y)) FAIL(PyExc_ValueError, "y must not have overlapping elements");
    if (threads < 1 || threads > 4096) FAIL(PyExc_ValueError, "threads must be in [1, 4096]");
#undef FAIL
    const int rank = a->x.ndim - 2;
    a->N = a->x.shape[0];
    a->C = a->x.shape[1];
    a->S[0] = a->S[1] = a->S[2] = 1;
    for (int k = 0; k < rank; ++k) a->S[3 - rank + k] = a->x.shape[2 + k];
    a->P = a->S[0] * a->S[1] * a->S[2];
    a->words = (a->P + 31) / 32;
    if (bits->ndim != 3) {
        PyErr_Format(PyExc_ValueError, "bits must be (N, n', words)");
        return -1;
    }
    a->n_chan = bits->shape[1];
    const int64_t s2[2] = {a->N, a->C}, s3[3] = {a->N, a->n_chan, a->words}, s1[1] = {a->N};
    if (check_dense(slots, "slots", T_I32, 2, s2) || check_dense(bits, "bits", T_I32, 3, s3)) return -1;
    const int want_scale = a->x.type == T_F64 ? T_F64 : T_F32;
    if (check_dense(scale, "scale", want_scale, 1, s1)) return -1;
    a->slots = (const int32_t *)slots->data;
    a->bits = (const uint32_t *)bits->data;
    a->scale = scale->data;
    a->scale_f64 = want_scale == T_F64;
    for (int k = 0; k < 5; ++k) a->sx[k] = a->sy[k] = 0;
    a->sx[0] = a->x.strides[0];
    a->sx[1] = a->x.strides[1];
    a->sy[0] = a->y.strides[0];
    a->sy[1] = a->y.strides[1];
    for (int k = 0; k < rank; ++k) {
        a->sx[5 - rank + k] = a->x.strides[2 + k];
        a->sy[5 - rank + k] = a->y.strides[2 + k];
    }
    /* Channels innermost in memory (channels_last): walk pixels, channels inside; else planes. */
    a->channel_inner = a->C > 1 && a->x.strides[1] == 1 && a->P > 1;
    a->flat = (a->S[1] == 1 || (a->sx[3] == a->S[2] * a->sx[4] && a->sy[3] == a->S[2] * a->sy[4])) &&
              (a->S[0] == 1 || (a->sx[2] == a->S[1] * a->S[2] * a->sx[4] && a->sy[2] == a->S[1] * a->S[2] * a->sy[4]));
    a->dense_pixels = a->channel_inner && a->sx[1] == 1 && a->sy[1] == 1 && a->sx[4] == a->C && a->sy[4] == a->C &&
                      (a->S[1] == 1 || (a->sx[3] == a->S[2] * a->C && a->sy[3] == a->S[2] * a->C)) &&
                      (a->S[0] == 1 || (a->sx[2] == a->S[1] * a->S[2] * a->C && a->sy[2] == a->S[1] * a->S[2] * a->C));
    return 0;
}

/* The apply's work items, and the threads worth waking for them. */
static void apply_job(ApplyCtx *a, Job *job, long long threads, int *T) {
    *T = (int)threads;
    if (a->x.numel < 32768) *T = 1; /* the pool's wake-up costs more than it saves */
    int dense = a->flat && a->sx[4] == 1 && a->sy[4] == 1 && a->sx[1] == a->P && a->sy[1] == a->P;
    if (a->channel_inner) {
        job->body = apply_pixels;
        job->total = a->N * a->words;
    } else if (dense) {
        a->block_channels = a->P >= 16384 ? 1 : 16384 / a->P; /* about 16K elements an item */
        job->body = apply_blocks;
        job->total = a->N * ((a->C + a->block_channels - 1) / a->block_channels);
    } else {
        job->body = apply_segments;
        job->total = a->N * a->C * (a->flat ? 1 : a->S[0] * a->S[1]);
    }
    job->ctx = a;
}

static PyObject *run_apply(PyObject *o_x, PyObject *o_y, PyObject *o_slots, PyObject *o_bits, PyObject *o_scale,
                           long long threads) {
    ApplyCtx a;
    memset(&a, 0, sizeof(a));
    View slots, bits, scale;
    if (get_view(o_x, "x", &a.x) || get_view(o_y, "y", &a.y) || get_view(o_slots, "slots", &slots) ||
        get_view(o_bits, "bits", &bits) || get_view(o_scale, "scale", &scale))
        return NULL;
    if (apply_check(&a, &slots, &bits, &scale, threads)) return NULL;
    {
        View *views[] = {&a.x, &slots, &bits, &scale, &a.y};
        const char *names[] = {"x", "slots", "bits", "scale", "y"};
        if (check_outputs(views, names, 5, 4, 0)) return NULL;
    }
    if (a.N * a.C * a.P == 0) Py_RETURN_NONE;
    /* Every slot must be -1 or name a distinct plane of ``bits``: check all, keep the checked copy
       (the kernels read that, never the caller's memory again), and map slots back to channels. */
    int32_t *chan = malloc(sizeof(int32_t) * (size_t)(a.N * a.n_chan + 2 * a.N * a.C + 2 * a.N + 2));
    if (!chan) return PyErr_NoMemory();
    int32_t *slot_copy = chan + a.N * a.n_chan;
    uint32_t *keep = (uint32_t *)(slot_copy + a.N * a.C);
    int64_t *ntop = (int64_t *)(((uintptr_t)(keep + a.N * a.C) + 7) & ~(uintptr_t)7);
    memcpy(slot_copy, a.slots, sizeof(int32_t) * (size_t)(a.N * a.C));
    a.slots = slot_copy;
    for (int64_t q = 0; q < a.N * a.n_chan; ++q) chan[q] = -1;
    for (int64_t i = 0; i < a.N; ++i)
        for (int64_t c = 0; c < a.C; ++c) {
            int32_t s = a.slots[i * a.C + c];
            if (s < -1 || s >= a.n_chan || (s >= 0 && chan[i * a.n_chan + s] >= 0)) {
                free(chan);
                return PyErr_Format(PyExc_ValueError,
                                    "slots[%lld, %lld] = %d: each entry must be -1 or a distinct slot in [0, %lld)",
                                    (long long)i, (long long)c, (int)s, (long long)a.n_chan);
            }
            if (s >= 0) chan[i * a.n_chan + s] = (int32_t)c;
        }
    for (int64_t i = 0; a.channel_inner && i < a.N; ++i) { /* the keep masks only the pixel walk uses */
        ntop[i] = 0;
        for (int64_t c = 0; c < a.C; ++c) {
            keep[i * a.C + c] = a.slots[i * a.C + c] >= 0 ? 0u : 0xFFFFFFFFu;
            ntop[i] += a.slots[i * a.C + c] >= 0;
        }
    }
    a.chan = chan;
    a.keep = keep;
    a.ntop = ntop;
    int T;
    Job job;
    apply_job(&a, &job, threads, &T);
    Py_BEGIN_ALLOW_THREADS
    run_job(&job, T);
    Py_END_ALLOW_THREADS
    free(chan);
    Py_RETURN_NONE;
}

/* The forward in one parallel region: each thread builds its share of the samples; a barrier;
   one thread derives the scales from every sample's count; a barrier; each applies its share. */
typedef struct {
    BuildPlan *bp;
    Job apply;
    int apply_threads;
} ForwardCtx;

static void forward_entry(void *p) {
    ForwardCtx *f = p;
    const int64_t t = omp_thread_num(), T = omp_num_threads();
    /* Each phase on the threads its own rule picked (the build's scratch is for bp->T of them). */
    const int64_t Tb = f->bp->T < T ? f->bp->T : T, Ta = f->apply_threads < T ? f->apply_threads : T;
    if (t < Tb) {
        int64_t N = f->bp->b.N, begin = N * t / Tb, end = N * (t + 1) / Tb;
        if (begin < end) build_body(&f->bp->b, begin, end, (int)t);
    }
    gomp_barrier();
    if (t == 0) build_finish(f->bp);
    gomp_barrier();
    if (t < Ta) {
        int64_t begin = f->apply.total * t / Ta, end = f->apply.total * (t + 1) / Ta;
        if (begin < end) f->apply.body(f->apply.ctx, begin, end, (int)t);
    }
}

static PyObject *run_forward(PyObject **o, long long block_size, long long diamond, long long n_pix,
                             long long n_chan, long long eligible, double gamma_scale, long long normalize,
                             long long threads) {
    ApplyCtx a;
    memset(&a, 0, sizeof(a));
    View cam, alpha, seed, pv, slots, bits, scale, dropped, rate;
    if (get_view(o[0], "x", &a.x) || get_view(o[1], "y", &a.y) || get_view(o[2], "cam", &cam) ||
        get_view(o[3], "alpha", &alpha) || get_view(o[4], "seed", &seed) || get_view(o[5], "drop_prob", &pv) ||
        get_view(o[6], "slots", &slots) || get_view(o[7], "bits", &bits) || get_view(o[8], "scale", &scale) ||
        get_view(o[9], "dropped", &dropped) || get_view(o[10], "rate", &rate))
        return NULL;
    /* cam (N, *S) and alpha (N, C) must fit x (N, C, *S) */
    int fits = a.x.ndim >= 3 && cam.ndim == a.x.ndim - 1 && alpha.ndim == 2 && cam.shape[0] == a.x.shape[0] &&
               alpha.shape[0] == a.x.shape[0] && alpha.shape[1] == a.x.shape[1];
    for (int d = 2; fits && d < a.x.ndim; ++d) fits = cam.shape[d - 1] == a.x.shape[d];
    if (!fits) {
        PyErr_SetString(PyExc_ValueError, "cam must be (N, *S) and alpha (N, C) for x of shape (N, C, *S)");
        return NULL;
    }
    if (apply_check(&a, &slots, &bits, &scale, threads)) return NULL;
    {   /* y and the state are outputs: none may share memory with anything else (y may be x itself) */
        View *views[] = {&a.x, &cam, &alpha, &seed, &pv, &a.y, &slots, &bits, &scale, &dropped, &rate};
        const char *names[] = {"x", "cam", "alpha", "seed", "drop_prob", "y", "slots", "bits", "scale", "dropped", "rate"};
        if (check_outputs(views, names, 11, 5, 0)) return NULL;
    }
    int Ta = 1;
    Job apply = {apply_blocks, &a, 0}; /* (no items when x is empty) */
    if (a.N * a.C * a.P > 0) apply_job(&a, &apply, threads, &Ta);
    BuildPlan bp;
    if (build_prepare(&bp, &cam, &alpha, &seed, &pv, &slots, &bits, &scale, &dropped, &rate, block_size, diamond,
                      n_pix, n_chan, eligible, gamma_scale, normalize, threads, a.channel_inner))
        return NULL;
    /* The apply reads the build's own slots, never the caller's memory again. */
    a.slots = bp.b.slot_own;
    a.chan = bp.b.chan;
    a.ntop = bp.b.ntop;
    a.count = bp.b.count;
    a.keep = bp.b.keep;
    int T = bp.T > Ta ? bp.T : Ta;
    Py_BEGIN_ALLOW_THREADS
    if (T > 1 && gomp_parallel && gomp_barrier) {
        ForwardCtx f = {&bp, apply, Ta};
        gomp_parallel(forward_entry, &f, (unsigned)T, 0);
    } else {
        Job job = {build_body, &bp.b, bp.b.N};
        run_job(&job, bp.T);
        build_finish(&bp);
        run_job(&apply, Ta);
    }
    Py_END_ALLOW_THREADS
    build_release(&bp);
    Py_RETURN_NONE;
}

static PyObject *py_build(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[9];
    long long block_size, diamond, n_pix, n_chan, eligible, normalize, threads;
    double gamma_scale;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOLLLLLdLL", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8],
                          &block_size, &diamond, &n_pix, &n_chan, &eligible, &gamma_scale, &normalize, &threads))
        return NULL;
    return run_build(o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7], o[8], block_size, diamond, n_pix, n_chan,
                     eligible, gamma_scale, normalize, threads);
}

static PyObject *py_apply(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_x, *o_y, *o_slots, *o_bits, *o_scale;
    long long threads;
    if (!PyArg_ParseTuple(args, "OOOOOL", &o_x, &o_y, &o_slots, &o_bits, &o_scale, &threads)) return NULL;
    return run_apply(o_x, o_y, o_slots, o_bits, o_scale, threads);
}

/* build, then apply with its state: one call for the common forward. */
static PyObject *py_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[11];
    long long block_size, diamond, n_pix, n_chan, eligible, normalize, threads;
    double gamma_scale;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOLLLLLdLL", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8],
                          &o[9], &o[10], &block_size, &diamond, &n_pix, &n_chan, &eligible, &gamma_scale,
                          &normalize, &threads))
        return NULL;
    return run_forward(o, block_size, diamond, n_pix, n_chan, eligible, gamma_scale, normalize, threads);
}

/* ------------------------------------------------------------------------------------------ */
/* Test hooks                                                                                  */
/* ------------------------------------------------------------------------------------------ */
static PyObject *py_uniform(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long seed, offset;
    if (!PyArg_ParseTuple(args, "KK", &seed, &offset)) return NULL;
    return PyFloat_FromDouble((double)philox_uniform(seed, offset));
}

/* top_n(values, n) -> (indices selected, ascending; element visits made): the ranking, for tests. */
static PyObject *py_top_n(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o_v;
    long long n;
    if (!PyArg_ParseTuple(args, "OL", &o_v, &n)) return NULL;
    View v;
    if (get_view(o_v, "values", &v)) return NULL;
    if (v.ndim != 1 || v.type > T_F64 || !is_contiguous(&v))
        return PyErr_Format(PyExc_ValueError, "values must be a contiguous 1-D float tensor");
    const int64_t L = v.shape[0];
    if (n < 1 || n > L) return PyErr_Format(PyExc_ValueError, "n must be in [1, %lld]", (long long)L);
    uint64_t *key = malloc(sizeof(uint64_t) * (size_t)L + 8);
    int64_t *heap = malloc(sizeof(int64_t) * (size_t)L);
    uint8_t *mark = malloc((size_t)L);
    if (!key || !heap || !mark) {
        free(key); free(heap); free(mark);
        return PyErr_NoMemory();
    }
    uint64_t cmp = 0;
    int bits = row_keys(v.data, v.type, 0, L, key);
    top_n(key, bits, L, n, heap, mark, &cmp);
    if (n < L && 32 * n > L) { /* the build's channel path must agree: nth_key, then take_top's ranks */
        int32_t *slot = malloc(sizeof(int32_t) * (size_t)(2 * L + 8));
        uint64_t visits = 0;
        int64_t need_eq, j, bad = 0;
        if (!slot) {
            free(key); free(heap); free(mark);
            return PyErr_NoMemory();
        }
        if (bits == 32) {
            uint32_t t = nth_key32((const uint32_t *)key, L, n, (uint32_t *)heap, &need_eq, &visits);
            j = take_top32((const uint32_t *)key, L, t, need_eq, slot, slot + L);
        } else {
            uint64_t t = nth_key64(key, L, n, (uint64_t *)heap, &need_eq, &visits);
            j = take_top64(key, L, t, need_eq, slot, slot + L);
        }
        for (int64_t k = 0, r = 0; k < L; ++k) {
            bad |= (slot[k] >= 0) != (mark[k] != 0);
            if (slot[k] < 0) continue;
            bad |= slot[k] != r || slot[L + r] != k;
            ++r;
        }
        free(slot);
        if (bad || j != n) {
            free(key); free(heap); free(mark);
            return PyErr_Format(PyExc_RuntimeError, "take_top disagrees with top_n (n = %lld, taken %lld)", n, (long long)j);
        }
    }
    PyObject *list = PyList_New(0);
    for (int64_t k = 0; list && k < L; ++k) {
        if (!mark[k]) continue;
        PyObject *item = PyLong_FromLongLong(k);
        if (!item || PyList_Append(list, item)) {
            Py_XDECREF(item);
            Py_CLEAR(list);
            break;
        }
        Py_DECREF(item);
    }
    free(key); free(heap); free(mark);
    if (!list) return NULL;
    return Py_BuildValue("(NK)", list, (unsigned long long)cmp);
}

static PyObject *py_info(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return Py_BuildValue("{s:O,s:O,s:O}", "openmp", gomp_parallel ? Py_True : Py_False, "avx2",
                         have_avx2 ? Py_True : Py_False, "barrier", gomp_parallel && gomp_barrier ? Py_True : Py_False);
}

static PyMethodDef methods[] = {
    {"build", py_build, METH_VARARGS, "Steps 1-7 of SPEC.md for a batch (see the file's header)."},
    {"apply", py_apply, METH_VARARGS, "Step 8: y = +0.0 where dropped, else x * scale (any strides)."},
    {"forward", py_forward, METH_VARARGS, "forward(x, y, cam, alpha, seed, p, slots, bits, scale, dropped, rate, ...): build, then apply."},
    {"uniform", py_uniform, METH_VARARGS, "U(seed, offset) of SPEC.md, for tests."},
    {"top_n", py_top_n, METH_VARARGS, "The ranking of steps 1-2 on one row, with its element-visit count (tests)."},
    {"info", py_info, METH_NOARGS, "What this build found: torch's OpenMP pool (and its barrier), AVX2."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native",
                                    "Native CPU kernels for camdrop_kernels (see csrc/camdrop_cpu.c).", -1, methods};

PyMODINIT_FUNC PyInit__native(void) {
    find_openmp();
#if defined(HAVE_X86)
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
    init_pack_lanes();
#endif
    return PyModule_Create(&module);
}
