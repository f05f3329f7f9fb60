// apply: the three walks over x and y (apply.h), their checks, and the entry point.
#include "apply.h"

#include <cstdlib>

#include "apply_kernels.h"
#include "floats.h"

namespace camdrop {

namespace {

// One element type's loop: Load widens to the compute type, Store rounds back once. Inlined into
// each clone of scale_run, so it is compiled for AVX2 there.
template <typename T, typename S, S (*Load)(T), T (*Store)(S)>
__attribute__((always_inline)) inline void scale_loop(const T *x, int64_t sx, T *y, int64_t sy, int64_t n, S s) {
    if (x == y && sx == sy) { // in place: one pointer, so nothing is assumed about aliasing
        for (int64_t k = 0; k < n; ++k) y[k * sy] = Store(Load(y[k * sy]) * s);
        return;
    }
    const T *CAMDROP_RESTRICT xs = x; // distinct from y: the caller checked that no element is shared
    T *CAMDROP_RESTRICT ys = y;
    if (sx == 1 && sy == 1)
        for (int64_t k = 0; k < n; ++k) ys[k] = Store(Load(xs[k]) * s);
    else
        for (int64_t k = 0; k < n; ++k) ys[k * sy] = Store(Load(xs[k * sx]) * s);
}

template <typename T>
inline T same(T v) {
    return v;
}

// y[k*sy] = x[k*sx] * s for k < n, one rounding to the dtype (float32 math below float64: s32,
// else s64). x == y (in place, same strides) or the two share no element. Built for AVX2 and the
// baseline: the multiply is the bulk of the work, and torch's own multiply uses the wider vectors.
CAMDROP_CLONES void scale_run(int type, const char *x, int64_t sx, char *y, int64_t sy, int64_t n, double s64,
                              float s32) {
    switch (type) {
    case kF32:
        scale_loop<float, float, same<float>, same<float>>(reinterpret_cast<const float *>(x), sx,
                                                             reinterpret_cast<float *>(y), sy, n, s32);
        break;
    case kF64:
        scale_loop<double, double, same<double>, same<double>>(reinterpret_cast<const double *>(x), sx,
                                                                 reinterpret_cast<double *>(y), sy, n, s64);
        break;
    case kBF16:
        scale_loop<uint16_t, float, bf16_to_f32, f32_to_bf16>(reinterpret_cast<const uint16_t *>(x), sx,
                                                              reinterpret_cast<uint16_t *>(y), sy, n, s32);
        break;
    default:
        scale_loop<uint16_t, float, f16_to_f32, f32_to_f16>(reinterpret_cast<const uint16_t *>(x), sx,
                                                            reinterpret_cast<uint16_t *>(y), sy, n, s32);
        break;
    }
}

inline void sample_scale(const ApplyCtx *a, int64_t i, double *s64, float *s32) {
    if (a->scale_f64) {
        *s64 = reinterpret_cast<const double *>(a->scale)[i];
        *s32 = (float)*s64;
    } else {
        *s32 = reinterpret_cast<const float *>(a->scale)[i];
        *s64 = *s32;
    }
}

// a * b == want; false when the product overflows (it would exceed any stride get_view accepts).
inline bool product_is(int64_t a, int64_t b, int64_t want) {
    int64_t p;
    return !__builtin_mul_overflow(a, b, &p) && p == want;
}

// Plane-major order. A work item is a segment of a plane laid out flat in x and y (pixel q at
// q * w-stride): the whole plane when it is (contiguous NCHW, the common case), else one row
// (i, c, d, h) of W pixels. Multiply the segment, then zero the runs its mask bits hold.
void apply_segments(void *p, int64_t begin, int64_t end, int) {
    const ApplyCtx *a = static_cast<const ApplyCtx *>(p);
    const int64_t D = a->S[0], H = a->S[1], W = a->S[2];
    const int es = a->x.esize;
    const int64_t seg_len = a->flat ? a->P : W, segs = a->flat ? 1 : D * H;
    for (int64_t r = begin; r < end; ++r) { // item r = (i*C + c)*segs + seg, seg = d*H + h
        const int64_t seg = r % segs, c = (r / segs) % a->C, i = r / (segs * a->C);
        const int64_t h = seg % H, d = seg / H; // (0, 0) for a flat plane
        double s64;
        float s32;
        sample_scale(a, i, &s64, &s32);
        const char *x = a->x.data + (i * a->sx[0] + c * a->sx[1] + d * a->sx[2] + h * a->sx[3]) * es;
        char *y = a->y.data + (i * a->sy[0] + c * a->sy[1] + d * a->sy[2] + h * a->sy[3]) * es;
        scale_run(a->x.type, x, a->sx[4], y, a->sy[4], seg_len, s64, s32);
        const int32_t slot = a->slots[i * a->C + c];
        if (slot >= 0) // the segment's pixels are bits seg*seg_len .. of its plane
            zero_row(a->bits + (i * a->n_chan + slot) * a->words, seg * seg_len, seg_len, y, a->sy[4], es);
    }
}

// Dense NCHW (x and y contiguous per sample: plane c at c * P): a work item is a block of
// consecutive channels of one sample. Runs of channels outside the top ones are one plain
// multiply (small maps do not pay a call per plane); a top channel's plane is multiplied and
// masked in one pass where that is vectorised (float32 with AVX2), else multiplied and then its
// dropped runs zeroed.
void apply_blocks(void *p, int64_t begin, int64_t end, int) {
    const ApplyCtx *a = static_cast<const ApplyCtx *>(p);
    const int es = a->x.esize;
    const int64_t per_block = a->block_channels, blocks = (a->C + per_block - 1) / per_block, P = a->P;
#if defined(CAMDROP_X86)
    const bool fused = have_avx2 && a->x.type == kF32;
#endif
    for (int64_t item = begin; item < end; ++item) { // item = i * blocks + block
        const int64_t i = item / blocks, c0 = (item % blocks) * per_block;
        const int64_t c1 = c0 + per_block < a->C ? c0 + per_block : a->C;
        double s64;
        float s32;
        sample_scale(a, i, &s64, &s32);
        const char *x = a->x.data + i * a->sx[0] * es;
        char *y = a->y.data + i * a->sy[0] * es;
        const int32_t *slot = a->slots + i * a->C;
        if (P < 512) {
            // Small maps: one multiply for the whole block (a call per plane would cost more than
            // the plane), then the top planes' dropped runs zeroed while they are in cache.
            scale_run(a->x.type, x + c0 * P * es, 1, y + c0 * P * es, 1, (c1 - c0) * P, s64, s32);
            if (a->count && a->count[i] == 0) continue; // nothing dropped in this sample
            const int64_t n_chan = a->n_chan, words = a->words, width = c1 - c0;
            const int32_t *chan = a->chan + i * n_chan;
            const uint32_t *planes = a->bits + i * n_chan * words;
            for (int64_t j = 0; j < n_chan; ++j) { // the top channels in this block (chan: -1 or < C)
                const int64_t c = chan[j];
                if ((uint64_t)(c - c0) >= (uint64_t)width) continue; // c outside [c0, c1), -1 included
                const uint32_t *plane = planes + j * words;
                if (!plane_any(plane, P)) continue;
#if defined(CAMDROP_X86)
                if (fused) {
                    mask_plane_f32(reinterpret_cast<float *>(y + c * P * es), P, plane);
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
            while (run < c1 && slot[run] < 0) ++run; // channels outside the top ones: one multiply
            if (run > c) scale_run(a->x.type, x + c * P * es, 1, y + c * P * es, 1, (run - c) * P, s64, s32);
            if (run == c1) break;
            const uint32_t *plane = a->bits + (i * a->n_chan + slot[run]) * a->words;
#if defined(CAMDROP_X86)
            if (fused) {
                scale_masked_f32(reinterpret_cast<const float *>(x + run * P * es),
                                 reinterpret_cast<float *>(y + run * P * es), P, s32, plane);
                c = run + 1;
                continue;
            }
#endif
            scale_run(a->x.type, x + run * P * es, 1, y + run * P * es, 1, P, s64, s32);
            zero_row(plane, 0, P, y + run * P * es, 1, es);
            c = run + 1;
        }
    }
}

// The dropped elements of pixels f0 + (set bits of w) in channel ``c`` of a dense channels_last
// row at y (pixel b of the row at y + b*C elements): one store each.
inline void zero_pixels(char *y, uint32_t w, int64_t C, int es) {
    switch (es) {
    case 2:
        for (; w; w &= w - 1) reinterpret_cast<uint16_t *>(y)[__builtin_ctz(w) * C] = 0;
        break;
    case 4:
        for (; w; w &= w - 1) reinterpret_cast<uint32_t *>(y)[__builtin_ctz(w) * C] = 0;
        break;
    default:
        for (; w; w &= w - 1) reinterpret_cast<uint64_t *>(y)[__builtin_ctz(w) * C] = 0;
        break;
    }
}

// Channel-inner order (channels_last): work item = 32 pixels (one mask word) of one sample. The
// AND and the OR of the top channels' mask words tell, per pixel, whether every top channel is
// dropped there (the usual case once the rate saturates: then one vectorised multiply ANDed
// with the sample's keep mask, 0 at its top channels), none (a plain multiply), or some (a
// multiply, then a store for each top channel whose bit is set).
void apply_pixels(void *p, int64_t begin, int64_t end, int) {
    const ApplyCtx *a = static_cast<const ApplyCtx *>(p);
    const int64_t H = a->S[1], W = a->S[2], C = a->C, nc = a->n_chan;
    const int es = a->x.esize;
#if defined(CAMDROP_X86)
    const bool fused = have_avx2 && a->x.type == kF32 && a->sx[1] == 1 && a->sy[1] == 1;
#else
    const bool fused = false;
#endif
    for (int64_t item = begin; item < end; ++item) { // item = i * words + k: pixels 32k .. 32k + 31
        const int64_t i = item / a->words, k = item % a->words;
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
        const int64_t f0 = k * 32, f1 = f0 + 32 < a->P ? f0 + 32 : a->P;
        if (a->dense_pixels) {
            // channels_last with no gaps: the 32 pixels are 32 * C consecutive elements. One multiply
            // for all of them, then the dropped ones fixed in place (y's row just written).
            const int64_t base = i * a->sx[0] + f0 * C, ybase = i * a->sy[0] + f0 * C;
            const int n = (int)(f1 - f0);
            const uint32_t valid = n == 32 ? 0xFFFFFFFFu : (1u << n) - 1;
            const uint32_t full = fused ? all & valid : 0; // pixels where every top channel is dropped
            if (!full) {
                scale_run(a->x.type, a->x.data + base * es, 1, a->y.data + ybase * es, 1, n * C, s64, s32);
            } else {
#if defined(CAMDROP_X86)
                // Runs of the other pixels: one multiply each; those pixels: multiplied and ANDed with
                // the keep mask in one pass.
                const float *xf = reinterpret_cast<const float *>(a->x.data);
                float *yf = reinterpret_cast<float *>(a->y.data);
                for (int b = 0; b < n;) {
                    if ((full >> b) & 1) {
                        scale_keep_f32(xf + base + b * C, yf + ybase + b * C, C, s32, a->keep + i * C);
                        ++b;
                        continue;
                    }
                    const int e = (full >> b) ? b + __builtin_ctz(full >> b) : n;
                    scale_run(a->x.type, a->x.data + (base + b * C) * es, 1, a->y.data + (ybase + b * C) * es, 1,
                              (e - b) * C, s64, s32);
                    b = e;
                }
#endif
            }
            if (!(some & valid & ~full)) continue;
            // Then each top channel's dropped pixels among the rest: one store each, found by their bits.
            for (int64_t j = 0; j < nc; ++j) {
                const uint32_t w = planes[j * a->words + k] & valid & ~full;
                if (w && chan[j] >= 0) zero_pixels(a->y.data + (ybase + chan[j]) * es, w, C, es);
            }
            continue;
        }
        int64_t w = f0 % W, h = (f0 / W) % H, d = f0 / (W * H); // pixel f0 = (d*H + h)*W + w
        for (int64_t f = f0; f < f1; ++f) {
            const int b = (int)(f - f0);
            const char *x = a->x.data + (i * a->sx[0] + d * a->sx[2] + h * a->sx[3] + w * a->sx[4]) * es;
            char *y = a->y.data + (i * a->sy[0] + d * a->sy[2] + h * a->sy[3] + w * a->sy[4]) * es;
#if defined(CAMDROP_X86)
            if (fused && ((all >> b) & 1)) {
                scale_keep_f32(reinterpret_cast<const float *>(x), reinterpret_cast<float *>(y), C, s32,
                               a->keep + i * C);
            } else
#endif
            {
                scale_run(a->x.type, x, a->sx[1], y, a->sy[1], C, s64, s32);
                if ((some >> b) & 1)
                    for (int64_t j = 0; j < nc; ++j) // the stores of one pixel fall in its own row
                        if (chan[j] >= 0 && ((planes[j * a->words + k] >> b) & 1))
                            zero_run(y + chan[j] * a->sy[1] * es, 1, 1, es);
            }
            if (++w == W) {
                w = 0;
                if (++h == H) {
                    h = 0;
                    ++d;
                }
            }
        }
    }
}

} // namespace

int apply_check(ApplyCtx *a, const View &slots, const View &bits, const View &scale, long long threads) {
    if (a->x.type > kF64) return fail(Err::Type, "x must be float16, bfloat16, float32 or float64");
    if (a->x.ndim < 3 || a->x.ndim > 5) return fail(Err::Value, "x must be (N, C, *S) with 1 to 3 spatial dims");
    if (a->y.type != a->x.type || a->y.ndim != a->x.ndim) return fail(Err::Value, "y must have x's dtype and shape");
    for (int d = 0; d < a->x.ndim; ++d)
        if (a->y.shape[d] != a->x.shape[d]) return fail(Err::Value, "y must have x's dtype and shape");
    if (!non_overlapping(a->y)) return fail(Err::Value, "y must not have overlapping elements");
    if (threads < 1 || threads > 4096) return fail(Err::Value, "threads must be in [1, 4096]");
    const int rank = a->x.ndim - 2;
    a->N = a->x.shape[0];
    a->C = a->x.shape[1];
    a->S[0] = a->S[1] = a->S[2] = 1;
    for (int k = 0; k < rank; ++k) a->S[3 - rank + k] = a->x.shape[2 + k];
    a->P = a->S[0] * a->S[1] * a->S[2];
    a->words = (a->P + 31) / 32;
    if (bits.ndim != 3) return fail(Err::Value, "bits must be (N, n', words)");
    a->n_chan = bits.shape[1];
    const int64_t s2[2] = {a->N, a->C}, s3[3] = {a->N, a->n_chan, a->words}, s1[1] = {a->N};
    if (check_dense(slots, "slots", kI32, 2, s2) || check_dense(bits, "bits", kI32, 3, s3)) return -1;
    const int want_scale = a->x.type == kF64 ? kF64 : kF32;
    if (check_dense(scale, "scale", want_scale, 1, s1)) return -1;
    a->slots = reinterpret_cast<const int32_t *>(slots.data);
    a->bits = reinterpret_cast<const uint32_t *>(bits.data);
    a->scale = scale.data;
    a->scale_f64 = want_scale == kF64;
    for (int k = 0; k < 5; ++k) a->sx[k] = a->sy[k] = 0;
    a->sx[0] = a->x.strides[0];
    a->sx[1] = a->x.strides[1];
    a->sy[0] = a->y.strides[0];
    a->sy[1] = a->y.strides[1];
    for (int k = 0; k < rank; ++k) {
        a->sx[5 - rank + k] = a->x.strides[2 + k];
        a->sy[5 - rank + k] = a->y.strides[2 + k];
    }
    // Channels innermost in memory (channels_last): walk pixels, channels inside; else planes.
    // (Strides of size-1 axes may be anything: the products are checked, not assumed to fit.)
    const int64_t *S = a->S, *sx = a->sx, *sy = a->sy, C = a->C;
    a->channel_inner = C > 1 && a->x.strides[1] == 1 && a->P > 1;
    a->flat = (S[1] == 1 || (product_is(S[2], sx[4], sx[3]) && product_is(S[2], sy[4], sy[3]))) &&
              (S[0] == 1 || (product_is(S[1] * S[2], sx[4], sx[2]) && product_is(S[1] * S[2], sy[4], sy[2])));
    a->dense_pixels = a->channel_inner && sx[1] == 1 && sy[1] == 1 && sx[4] == C && sy[4] == C &&
                      (S[1] == 1 || (sx[3] == S[2] * C && sy[3] == S[2] * C)) &&
                      (S[0] == 1 || (sx[2] == S[1] * S[2] * C && sy[2] == S[1] * S[2] * C));
    return 0;
}

void apply_job(ApplyCtx *a, Job *job, long long threads, int *T) {
    *T = (int)threads;
    if (a->x.numel < 32768) *T = 1; // the pool's wake-up costs more than it saves
    const bool dense = a->flat && a->sx[4] == 1 && a->sy[4] == 1 && a->sx[1] == a->P && a->sy[1] == a->P;
    if (a->channel_inner) {
        job->body = apply_pixels;
        job->total = a->N * a->words;
    } else if (dense) {
        a->block_channels = a->P >= 16384 ? 1 : 16384 / a->P; // about 16K elements an item
        job->body = apply_blocks;
        job->total = a->N * ((a->C + a->block_channels - 1) / a->block_channels);
    } else {
        job->body = apply_segments;
        job->total = a->N * a->C * (a->flat ? 1 : a->S[0] * a->S[1]);
    }
    job->ctx = a;
}

int apply_views(ApplyCtx &a, const View &slots_in, const View &bits_in, const View &scale_in, long long threads) {
    View slots = slots_in, bits = bits_in, scale = scale_in;
    if (apply_check(&a, slots, bits, scale, threads)) return -1;
    View *const views[] = {&a.x, &slots, &bits, &scale, &a.y};
    const char *const names[] = {"x", "slots", "bits", "scale", "y"};
    if (check_outputs(views, names, 5, 4, 0)) return -1;
    if (a.x.numel == 0) return 0;
    // Every slot must be -1 or name a distinct plane of ``bits``: check all, keep the checked copy
    // (the kernels read that, never the caller's memory again), and map slots back to channels.
    // One allocation: chan (N*n' int32), the slot copy and keep masks (N*C each, 4 bytes), then
    // ntop (N int64, 8-byte aligned: 8 bytes to spare). N*n' and N*C count elements of bits and
    // slots (< 2**62 each), so the byte count is summed with overflow checks.
    const int64_t NC = a.N * a.C;
    size_t bytes = 8;
    if (!add_bytes(&bytes, a.N * a.n_chan, 4) || !add_bytes(&bytes, NC, 8) || !add_bytes(&bytes, a.N, 8))
        return fail_memory();
    int32_t *chan = static_cast<int32_t *>(std::malloc(bytes));
    if (!chan) return fail_memory();
    int32_t *slot_copy = chan + a.N * a.n_chan;
    uint32_t *keep = reinterpret_cast<uint32_t *>(slot_copy + NC);
    int64_t *ntop = reinterpret_cast<int64_t *>(((uintptr_t)(keep + NC) + 7) & ~(uintptr_t)7);
    std::memcpy(slot_copy, a.slots, sizeof(int32_t) * (size_t)NC); // x has elements: so do slots
    a.slots = slot_copy;
    for (int64_t q = 0; q < a.N * a.n_chan; ++q) chan[q] = -1;
    for (int64_t i = 0; i < a.N; ++i)
        for (int64_t c = 0; c < a.C; ++c) {
            const int32_t s = a.slots[i * a.C + c];
            if (s < -1 || s >= a.n_chan || (s >= 0 && chan[i * a.n_chan + s] >= 0)) {
                std::free(chan);
                return fail(Err::Value, "slots[%lld, %lld] = %d: each entry must be -1 or a distinct slot in [0, %lld)",
                            (long long)i, (long long)c, (int)s, (long long)a.n_chan);
            }
            if (s >= 0) chan[i * a.n_chan + s] = (int32_t)c;
        }
    for (int64_t i = 0; a.channel_inner && i < a.N; ++i) { // the keep masks only the pixel walk uses
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
    run_job(job, T);
    std::free(chan);
    return 0;
}

} // namespace camdrop
