/*
 * camdrop_kernels._native: the CPU mask build of SPEC.md in C, for the "torch" backend.
 *
 * Plain torch pays a per-op cost on every one of the ~150 small ops of the mask build
 * (ranking, Philox at the eligible positions, block stamping): about a millisecond a call,
 * several times the one multiply over x that is the CPU path's floor. These two functions
 * do that work in one pass each and leave the multiply to torch:
 *
 *   build_mask   top pixels and channels per sample (SPEC.md steps 1-2), the seed rate (4),
 *                seeds at eligible positions only (5) stamped into blocks (6): a byte mask
 *                over the top channels, and dropped counts per sample.
 *   zero_dropped writes +0.0 (all-zero bytes, for every IEEE float type) into x-shaped
 *                memory at the dropped positions, for any strides.
 *
 * Tensors arrive as addresses of contiguous buffers prepared by torch_backend.py; no
 * torch headers are needed, so this builds in about a second with any C compiler.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- SPEC.md's random stream: Philox4x32-10, key (seed lo, hi), counter (o lo, o hi, 0, 0) ---- */
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
    if (x < 0) x = -x - 1; /* c0 >= 2**31: 2**32 - 1 - c0, never overflows */
    return (float)x * 4.6566127342e-10f; /* float32 product, as tl.rand */
}

#if defined(__SSE2__)
#include <emmintrin.h>

/* hi and lo 32-bit halves of a * b for four uint32 lanes: pmuludq multiplies the even lanes;
   the odd lanes are shifted down first, and the halves are interleaved back. */
static inline void mulhilo4(__m128i a, __m128i b, __m128i *hi, __m128i *lo) {
    const __m128i low = _mm_set1_epi64x(0xFFFFFFFFll);
    __m128i even = _mm_mul_epu32(a, b);
    __m128i odd = _mm_mul_epu32(_mm_srli_epi64(a, 32), _mm_srli_epi64(b, 32));
    *lo = _mm_or_si128(_mm_and_si128(even, low), _mm_slli_epi64(odd, 32));
    *hi = _mm_or_si128(_mm_srli_epi64(even, 32), _mm_andnot_si128(low, odd));
}

/* U for four offsets (lo and hi words in lanes), Philox4x32-10 in SSE2. */
static inline __m128 philox4(uint64_t seed, __m128i c0, __m128i c1) {
    const __m128i A = _mm_set1_epi32((int)0xD2511F53u), B = _mm_set1_epi32((int)0xCD9E8D57u);
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
    return _mm_mul_ps(_mm_cvtepi32_ps(x), _mm_set1_ps(4.6566127342e-10f));
}
#endif

/* U for n offsets (SSE2, four at a time, where the compiler targets it). */
static void philox_uniform_batch(uint64_t seed, const uint64_t *offsets, float *out, int64_t n) {
    int64_t k = 0;
#if defined(__SSE2__)
    for (; k + 4 <= n; k += 4) {
        __m128i c0 = _mm_set_epi32((int)(uint32_t)offsets[k + 3], (int)(uint32_t)offsets[k + 2],
                                   (int)(uint32_t)offsets[k + 1], (int)(uint32_t)offsets[k]);
        __m128i c1 = _mm_set_epi32((int)(offsets[k + 3] >> 32), (int)(offsets[k + 2] >> 32),
                                   (int)(offsets[k + 1] >> 32), (int)(offsets[k] >> 32));
        _mm_storeu_ps(out + k, philox4(seed, c0, c1));
    }
#endif
    for (; k < n; ++k) out[k] = philox_uniform(seed, offsets[k]);
}

/* ---- ranking ---- */
static double rank_key(double v) {
    if (isnan(v)) return -INFINITY; /* NaN ranks as -inf */
    return v + 0.0;                 /* -0.0 + 0.0 == +0.0 */
}

/* The k-th largest (0-based) of a[0..n) by quickselect; reorders a. */
static double kth_largest(double *a, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        double pivot = a[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) { /* descending: bigger first */
            while (a[i] > pivot) ++i;
            while (a[j] < pivot) --j;
            if (i <= j) {
                double t = a[i]; a[i] = a[j]; a[j] = t;
                ++i; --j;
            }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else return a[k];
    }
    return a[k];
}

/* Is entry (ka, ia) ranked below entry (kb, ib)? Larger keys first, then lower indices. */
static int worse(double ka, int64_t ia, double kb, int64_t ib) { return ka < kb || (ka == kb && ia > ib); }

static int cmp_index(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The n top entries of keys[0..L) in one pass, with a heap of the n best so far whose top is the
   worst of them: entries arrive in index order, so one that only ties the top never displaces it.
   For n much smaller than L nearly every entry fails a single well-predicted comparison. */
static void top_n_heap(const double *keys, int64_t L, int64_t n, double *hk, int64_t *hi, int64_t *out) {
    for (int64_t k = 0; k < L; ++k) {
        int64_t c;
        if (k < n) { /* grow: sift the new entry up */
            c = k;
            hk[c] = keys[k]; hi[c] = k;
            while (c > 0 && worse(hk[c], hi[c], hk[(c - 1) / 2], hi[(c - 1) / 2])) {
                int64_t p = (c - 1) / 2;
                double tk = hk[c]; hk[c] = hk[p]; hk[p] = tk;
                int64_t ti = hi[c]; hi[c] = hi[p]; hi[p] = ti;
                c = p;
            }
            continue;
        }
        if (!(keys[k] > hk[0])) continue; /* ties with the top lose: their index is larger */
        hk[0] = keys[k]; hi[0] = k; /* replace the top, sift down */
        c = 0;
        for (;;) {
            int64_t l = 2 * c + 1, r = l + 1, m = c;
            if (l < n && worse(hk[l], hi[l], hk[m], hi[m])) m = l;
            if (r < n && worse(hk[r], hi[r], hk[m], hi[m])) m = r;
            if (m == c) break;
            double tk = hk[c]; hk[c] = hk[m]; hk[m] = tk;
            int64_t ti = hi[c]; hi[c] = hi[m]; hi[m] = ti;
            c = m;
        }
    }
    memcpy(out, hi, sizeof(int64_t) * (size_t)n);
    qsort(out, (size_t)n, sizeof(int64_t), cmp_index);
}

/* Indices (ascending) of the n top entries of v[0..L) (1 <= n <= L). ``keys`` and ``scratch``
   hold L doubles each, ``iscratch`` L indices. Few winners: one heap pass; many: the n-th
   largest key t by quickselect, then every entry above t and the ties at t in index order. */
static void top_n(const double *v, int64_t L, int64_t n, double *keys, double *scratch, int64_t *iscratch,
                  int64_t *out) {
    for (int64_t k = 0; k < L; ++k) keys[k] = rank_key(v[k]);
    if (4 * n <= L) {
        top_n_heap(keys, L, n, scratch, iscratch, out);
        return;
    }
    memcpy(scratch, keys, sizeof(double) * (size_t)L);
    double t = kth_largest(scratch, L, n - 1);
    int64_t above = 0;
    for (int64_t k = 0; k < L; ++k) above += keys[k] > t;
    int64_t ties = n - above, taken = 0;
    for (int64_t k = 0; k < L && taken < n; ++k) {
        if (keys[k] > t) {
            out[taken++] = k;
        } else if (keys[k] == t && ties > 0) {
            --ties;
            out[taken++] = k;
        }
    }
}

/* Flat offsets (du*W + dv) of the elements one seed drops (SPEC.md step 3); returns the count. */
static int64_t block_offsets(int diamond, int64_t rh, int64_t rw, int64_t rho, int64_t W, int64_t *out) {
    int64_t n = 0;
    if (diamond) {
        for (int64_t du = -rho; du <= rho; ++du)
            for (int64_t dv = -rho; dv <= rho; ++dv)
                if (llabs(du) + llabs(dv) <= rho) out[n++] = du * W + dv;
    } else {
        for (int64_t du = -(rh / 2); du <= (rh - 1) / 2; ++du)
            for (int64_t dv = -(rw / 2); dv <= (rw - 1) / 2; ++dv) out[n++] = du * W + dv;
    }
    return n;
}

static PyObject *build_mask(PyObject *self, PyObject *args) {
    unsigned long long cam_a, alpha_a, chan_a, dropped_a, counts_a, scale_a, seed;
    long long N, C, H, W, n_pix, n_chan, row_lo, row_hi, col_lo, col_hi, diamond, rh, rw, rho, eligible,
        den_factor, normalize;
    double gamma_const, gamma_num;
    if (!PyArg_ParseTuple(args, "KKLLLLLLLLLLLLLLLddLLKKKKK", &cam_a, &alpha_a, &N, &C, &H, &W, &n_pix, &n_chan,
                          &row_lo, &row_hi, &col_lo, &col_hi, &diamond, &rh, &rw, &rho, &eligible, &gamma_const,
                          &gamma_num, &den_factor, &normalize, &seed, &chan_a, &dropped_a, &counts_a, &scale_a))
        return NULL;
    const double *cam = (const double *)(uintptr_t)cam_a, *alpha = (const double *)(uintptr_t)alpha_a;
    int64_t *chan = (int64_t *)(uintptr_t)chan_a, *counts = (int64_t *)(uintptr_t)counts_a;
    uint8_t *dropped = (uint8_t *)(uintptr_t)dropped_a;
    double *scale = (double *)(uintptr_t)scale_a;
    const int64_t HW = H * W, longest = HW > C ? HW : C;
    double *scratch = malloc(sizeof(double) * 2 * longest);
    int64_t *iscratch = malloc(sizeof(int64_t) * longest);
    int64_t *pix = malloc(sizeof(int64_t) * n_pix);
    uint64_t *where = malloc(sizeof(uint64_t) * n_pix);
    float *u = malloc(sizeof(float) * n_pix);
    int64_t *offs = malloc(sizeof(int64_t) * (rh * rw > (2 * rho + 1) * (2 * rho + 1) ? rh * rw : (2 * rho + 1) * (2 * rho + 1)));
    if (!scratch || !iscratch || !pix || !where || !u || !offs) {
        free(scratch); free(iscratch); free(pix); free(where); free(u); free(offs);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    const int64_t n_offs = block_offsets((int)diamond, rh, rw, rho, W, offs);
    int64_t total = 0;
    for (int64_t i = 0; i < N; ++i) {
        top_n(alpha + i * C, C, n_chan, scratch, scratch + longest, iscratch, chan + i * n_chan);
        top_n(cam + i * HW, HW, n_pix, scratch, scratch + longest, iscratch, pix);
        int64_t m = 0; /* keep the top pixels that are valid centres (S ∩ V), in order */
        for (int64_t k = 0; k < n_pix; ++k) {
            int64_t r = pix[k] / W, c = pix[k] % W;
            if (r >= row_lo && r < row_hi && c >= col_lo && c < col_hi) pix[m++] = pix[k];
        }
        float gamma = (float)gamma_const;
        if (eligible) { /* float64 left to right, clamped, then rounded to float32 */
            double g = m ? gamma_num / (double)(den_factor * m) : 0.0;
            gamma = (float)(g < 0.0 ? 0.0 : (g > 1.0 ? 1.0 : g));
        }
        int64_t count = 0;
        for (int64_t j = 0; j < n_chan; ++j) {
            uint64_t base = (uint64_t)((i * C + chan[i * n_chan + j]) * HW); /* logical NCHW index */
            uint8_t *plane = dropped + (i * n_chan + j) * HW;
            for (int64_t k = 0; k < m; ++k) where[k] = base + (uint64_t)pix[k];
            philox_uniform_batch(seed, where, u, m);
            for (int64_t k = 0; k < m; ++k) {
                if (!(u[k] < gamma)) continue;
                for (int64_t d = 0; d < n_offs; ++d) { /* valid centres: the block stays inside */
                    uint8_t *b = plane + pix[k] + offs[d];
                    count += !*b;
                    *b = 1;
                }
            }
        }
        counts[i] = count;
        total += count;
    }
    /* SPEC.md step 7: float64 quotient (rounded to the compute dtype by the caller); kept 0 gives 0. */
    for (int64_t i = 0; i < N; ++i) {
        if (normalize == 2) {
            scale[i] = 1.0;
        } else {
            double numel = (double)(normalize == 0 ? N * C * HW : C * HW);
            double kept = numel - (double)(normalize == 0 ? total : counts[i]);
            scale[i] = kept == 0.0 ? 0.0 : numel / kept;
        }
    }
    Py_END_ALLOW_THREADS
    free(scratch);
    free(iscratch);
    free(pix);
    free(where);
    free(u);
    free(offs);
    Py_RETURN_NONE;
}

static PyObject *zero_dropped(PyObject *self, PyObject *args) {
    unsigned long long y_a, chan_a, dropped_a;
    long long esize, sN, sC, sH, sW, N, n_chan, H, W;
    if (!PyArg_ParseTuple(args, "KLLLLLKKLLLL", &y_a, &esize, &sN, &sC, &sH, &sW, &chan_a, &dropped_a, &N,
                          &n_chan, &H, &W))
        return NULL;
    char *y = (char *)(uintptr_t)y_a;
    const int64_t *chan = (const int64_t *)(uintptr_t)chan_a;
    const uint8_t *dropped = (const uint8_t *)(uintptr_t)dropped_a;
    Py_BEGIN_ALLOW_THREADS
    const int64_t HW = H * W;
    for (int64_t i = 0; i < N; ++i) {
        for (int64_t j = 0; j < n_chan; ++j) {
            const uint8_t *plane = dropped + (i * n_chan + j) * HW;
            char *base = y + (i * sN + chan[i * n_chan + j] * sC) * esize;
            for (int64_t q = 0; q < HW; q += 64) { /* most of the mask is zero: skip 64 bytes at a time */
                uint64_t any = 0;
                if (q + 64 <= HW) {
                    uint64_t words[8];
                    memcpy(words, plane + q, 64); /* fixed size: plain loads */
                    for (int b = 0; b < 8; ++b) any |= words[b];
                } else {
                    for (int64_t e = q; e < HW; ++e) any |= plane[e];
                }
                if (!any) continue;
                for (int64_t e = q; e < q + 64 && e < HW; ++e) {
                    if (plane[e]) memset(base + ((e / W) * sH + (e % W) * sW) * esize, 0, (size_t)esize);
                }
            }
        }
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *uniform(PyObject *self, PyObject *args) {
    unsigned long long seed, offset;
    if (!PyArg_ParseTuple(args, "KK", &seed, &offset)) return NULL;
    return PyFloat_FromDouble((double)philox_uniform(seed, offset));
}

static PyMethodDef methods[] = {
    {"build_mask", build_mask, METH_VARARGS, "Top-n selection, seeds and block stamping (see module doc)."},
    {"zero_dropped", zero_dropped, METH_VARARGS, "Write +0.0 at the dropped positions of strided memory."},
    {"uniform", uniform, METH_VARARGS, "U(seed, offset) of SPEC.md, for tests."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native",
                                    "Native CPU mask build for camdrop_kernels (see csrc/camdrop_cpu.c).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
