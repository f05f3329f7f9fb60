// build: the per-sample steps 1-6 (build_body), their checks and buffers (build_prepare) and the
// scales of step 7 (build_finish).
#include "build.h"

#include <cmath>
#include <cstdlib>

#include "order_keys.h"
#include "philox.h"
#include "ranking.h"
#include "threads.h"

namespace camdrop {

namespace {

constexpr int64_t kBatch = 2048; // Philox draws per batch

// Scratch of one thread, carved from BuildCtx::scratch (every piece 8-byte aligned but the last).
struct Scratch {
    uint64_t *key;     // longest: the row's order keys (32- or 64-bit)
    int64_t *heap;     // longest: the heap, or the radix candidates (as keys)
    int64_t *elig;     // P: the eligible top pixels of the sample, ascending
    uint64_t *offs;    // kBatch: Philox offsets
    float *u;          // kBatch: their U
    int32_t *chan_row; // C + 8: take_top writes up to 8 entries past the last slot
    uint8_t *mark;     // longest: top_n's marks
};

constexpr size_t scratch_bytes(int64_t P, int64_t C) {
    const int64_t longest = P > C ? P : C;
    const size_t bytes = (size_t)longest * 17 + (size_t)P * 8 + (size_t)kBatch * 12 + (size_t)(C + 8) * 4 + 64;
    return (bytes + 63) & ~(size_t)63;
}

Scratch carve(char *s, int64_t P, int64_t C) {
    const int64_t longest = P > C ? P : C;
    Scratch r;
    r.key = reinterpret_cast<uint64_t *>(s);
    r.heap = reinterpret_cast<int64_t *>(r.key + longest);
    r.elig = r.heap + longest;
    r.offs = reinterpret_cast<uint64_t *>(r.elig + P);
    r.u = reinterpret_cast<float *>(r.offs + kBatch);
    r.chan_row = reinterpret_cast<int32_t *>(r.u + kBatch);
    r.mark = reinterpret_cast<uint8_t *>(r.chan_row + C + 8);
    return r;
}

// Stamps the block of every seed k (u[k] < gamma, or every k when kAll) into ``plane``: eligible
// pixels are valid centres, so every run lies inside the plane.
template <bool kAll>
inline void stamp(uint32_t *plane, const Geometry *g, const int64_t *elig, int64_t m, const float *u, float gamma) {
    for (int64_t k = 0; k < m; ++k)
        if (kAll || u[k] < gamma)
            for (int64_t r = 0; r < g->nruns; ++r) set_run(plane, elig[k] + g->run_delta[r], g->run_len[r]);
}

// Step 2 for sample i: the top channels, numbered in ascending channel order, into slot (and the
// caller's slots), chan and keep. Returns how many (n', or C when C < n').
int64_t rank_channels(BuildCtx *b, int64_t i, const Scratch &s) {
    const int64_t C = b->C;
    NoVisits visits;
    const int bits = row_keys(b->alpha, b->alpha_type, i * C, C, s.key);
    int32_t *slot = b->slot_own + i * C, *chan = b->chan + i * b->n_chan;
    int64_t j = -1;
    const bool radix = b->n_chan < C && 32 * b->n_chan > C; // the usual n' = C/8: the n'-th key, then one pass
    if (radix) {
        int64_t need_eq;
        if (bits == 32) {
            const auto *key = reinterpret_cast<const uint32_t *>(s.key);
            const uint32_t t = nth_key(key, C, b->n_chan, reinterpret_cast<uint32_t *>(s.heap), &need_eq, visits);
            j = take_top(key, C, t, need_eq, slot, s.chan_row);
        } else {
            const uint64_t t = nth_key(s.key, C, b->n_chan, reinterpret_cast<uint64_t *>(s.heap), &need_eq, visits);
            j = take_top(s.key, C, t, need_eq, slot, s.chan_row);
        }
        if (j == b->n_chan) copy_bytes(chan, s.chan_row, sizeof(int32_t) * (size_t)j);
        else j = -1; // (never: exactly n' by construction; the marks below would redo it)
    }
    if (j < 0) {
        j = 0;
        top_n(s.key, bits, C, b->n_chan, s.heap, s.mark, visits);
        for (int64_t c = 0; c < C; ++c) {
            slot[c] = s.mark[c] ? (int32_t)j : -1;
            if (s.mark[c]) chan[j++] = (int32_t)c;
        }
    }
    for (int64_t q = j; q < b->n_chan; ++q) chan[q] = -1; // (only when C < n': no channels)
    copy_bytes(b->slots + i * C, slot, sizeof(int32_t) * (size_t)C);
    if (b->keep)
        for (int64_t c = 0; c < C; ++c) b->keep[i * C + c] = slot[c] >= 0 ? 0u : 0xFFFFFFFFu;
    return j;
}

// Steps 1 and 3 for sample i: the top pixels that are valid centres (S_i ∩ V), ascending, into
// s.elig; returns their count m.
int64_t eligible_pixels(BuildCtx *b, int64_t i, const Scratch &s) {
    const Geometry *g = b->g;
    const int64_t P = g->P;
    NoVisits visits;
    const int bits = row_keys(b->cam, b->cam_type, i * P, P, s.key);
    top_n(s.key, bits, P, b->n_pix, s.heap, s.mark, visits);
    int64_t m = 0;
    for (int64_t q = 0; q < P; ++q) {
        if (!s.mark[q]) continue;
        // pixel q = (d*H + h)*W + w
        const int64_t w = q % g->S[2], h = (q / g->S[2]) % g->S[1], d = q / (g->S[2] * g->S[1]);
        if (d >= g->lo[0] && d < g->hi[0] && h >= g->lo[1] && h < g->hi[1] && w >= g->lo[2] && w < g->hi[2])
            s.elig[m++] = q;
    }
    return m;
}

// Steps 5-6 below the saturated rate: U at every (top channel, eligible pixel), kBatch draws at a
// time across planes (several planes share a batch when m is small), blocks stamped where U < gamma.
void draw_seeds(BuildCtx *b, int64_t i, const Scratch &s, int64_t m, float gamma, uint32_t *planes) {
    const Geometry *g = b->g;
    const int64_t C = b->C, P = g->P;
    const int32_t *slot = b->slot_own + i * C;
    int64_t pending = 0;    // draws queued in s.offs
    int64_t c_of[kBatch + 1]; // the channel of each queued plane (m draws each)
    for (int64_t c = 0; c <= C; ++c) {
        const bool flush = c == C || (slot[c] >= 0 && pending + m > kBatch);
        if (flush && pending) {
            philox_batch(b->seed, s.offs, s.u, pending);
            for (int64_t e0 = 0, t = 0; e0 < pending; e0 += m, ++t)
                stamp<false>(planes + slot[c_of[t]] * b->words, g, s.elig, m, s.u + e0, gamma);
            pending = 0;
        }
        if (c == C || slot[c] < 0) continue;
        const uint64_t base = (uint64_t)((i * C + c) * P); // logical index o of (i, c, pixel 0): < 2**52
        if (m <= kBatch) {
            c_of[pending / m] = c;
            for (int64_t k = 0; k < m; ++k) s.offs[pending + k] = base + (uint64_t)s.elig[k];
            pending += m;
            continue;
        }
        for (int64_t k0 = 0; k0 < m; k0 += kBatch) { // a plane with more than kBatch eligible pixels
            const int64_t k1 = k0 + kBatch < m ? k0 + kBatch : m;
            for (int64_t k = k0; k < k1; ++k) s.offs[k - k0] = base + (uint64_t)s.elig[k];
            philox_batch(b->seed, s.offs, s.u, k1 - k0);
            stamp<false>(planes + slot[c] * b->words, g, s.elig + k0, k1 - k0, s.u, gamma);
        }
    }
}

} // namespace

void build_body(void *ctx, int64_t begin, int64_t end, int thread) {
    BuildCtx *b = static_cast<BuildCtx *>(ctx);
    const Geometry *g = b->g;
    const int64_t C = b->C, P = g->P;
    const Scratch s = carve(b->scratch + (size_t)thread * b->scratch_bytes, P, C);
    for (int64_t i = begin; i < end; ++i) {
        b->ntop[i] = rank_channels(b, i, s);
        const int64_t m = eligible_pixels(b, i, s);
        // Step 4: the seed rate, float64 left to right, clamped, rounded to float32. (The integer
        // products are exact in double: C*P <= 2**52, like the ints of SPEC.md.)
        double rate;
        if (b->eligible)
            rate = m ? b->p_gs * (double)(C * P) / ((double)g->area * (double)b->n_chan * (double)m) : 0.0;
        else
            rate = g->valid ? b->p_gs * (double)P / ((double)g->area * (double)g->valid) : 0.0;
        const float gamma = (float)(rate > 0.0 ? (rate < 1.0 ? rate : 1.0) : 0.0); // NaN -> 0
        b->rate[i] = gamma;
        // Steps 5-6: seeds at (top channel, eligible pixel), blocks stamped as runs of bits.
        int64_t count = 0;
        uint32_t *planes = reinterpret_cast<uint32_t *>(b->bits) + i * b->n_chan * b->words;
        zero_bytes(planes, sizeof(uint32_t) * (size_t)(b->n_chan * b->words));
        if (gamma >= 1.0f) {
            // U < 1 always (its largest value is 1 - 2**-24): every eligible seed fires, and every
            // top channel's plane is the same. Stamp one, copy it.
            const int64_t words = b->words, n_chan = b->n_chan;
            stamp<true>(planes, g, s.elig, m, nullptr, gamma);
            int64_t plane_count = 0;
            for (int64_t w = 0; w < words; ++w) plane_count += popcount32(planes[w]);
            // Planes [0, done) hold the stamp: copy them after themselves, doubling each time (log2 n'
            // copies rather than n' - 1 small ones).
            for (int64_t done = 1; done < n_chan;) {
                const int64_t k = done < n_chan - done ? done : n_chan - done;
                copy_bytes(planes + done * words, planes, sizeof(uint32_t) * (size_t)(k * words));
                done += k;
            }
            count = plane_count * n_chan;
        } else if (gamma > 0.0f && m > 0) {
            draw_seeds(b, i, s, m, gamma, planes);
            for (int64_t w = 0; w < b->n_chan * b->words; ++w) count += popcount32(planes[w]);
        }
        b->dropped[i] = count;
        b->count[i] = count;
    }
}

int build_prepare(BuildPlan *bp, BuildViews &v, const BuildParams &p, bool want_keep) {
    std::memset(bp, 0, sizeof(*bp));
    const View &cam = v.cam, &alpha = v.alpha;
    if (cam.ndim < 2 || cam.ndim > 4) return fail(Err::Value, "cam must be (N, *S) with 1 to 3 spatial dims");
    if (cam.type > kF64 || alpha.type > kF64)
        return fail(Err::Type, "cam and alpha must be float16, bfloat16, float32 or float64");
    const int rank = cam.ndim - 1;
    const int64_t N = cam.shape[0];
    int64_t S[3] = {1, 1, 1};
    for (int k = 0; k < rank; ++k) S[3 - rank + k] = cam.shape[1 + k];
    const int64_t P = S[0] * S[1] * S[2]; // cam's numel / N: fits
    if (!is_contiguous(cam)) return fail(Err::Value, "cam must be contiguous");
    if (alpha.ndim != 2 || alpha.shape[0] != N) return fail(Err::Value, "alpha must be (N, C) with cam's N");
    if (!is_contiguous(alpha)) return fail(Err::Value, "alpha must be contiguous");
    const int64_t C = alpha.shape[1];
    if (check_type(v.seed, "seed", kI64) || check_type(v.drop_prob, "drop_prob", kF64)) return -1;
    if (v.seed.numel != 1 || v.drop_prob.numel != 1)
        return fail(Err::Value, "seed and drop_prob must hold one value each");
    int64_t seed;
    double drop_prob;
    std::memcpy(&seed, v.seed.data, 8); // one element: the pointer is not null (get_view)
    std::memcpy(&drop_prob, v.drop_prob.data, 8);
    if (seed < 0) return fail(Err::Value, "seed must be in [0, 2**63)");
    if (!(drop_prob >= 0.0 && drop_prob <= 1.0)) return fail(Err::Value, "drop_prob must be in [0, 1]");
    if (p.block_size < 1) return fail(Err::Value, "block_size must be >= 1");
    if (p.diamond != 0 && p.diamond != 1) return fail(Err::Value, "diamond must be 0 or 1");
    if (p.eligible != 0 && p.eligible != 1) return fail(Err::Value, "eligible must be 0 or 1");
    if (p.normalize < kNormalizeBatch || p.normalize > kNormalizeNone) return fail(Err::Value, "normalize must be 0, 1 or 2");
    if (!(p.gamma_scale >= 0.0 && std::isfinite(p.gamma_scale)))
        return fail(Err::Value, "gamma_scale must be finite and >= 0");
    if (p.threads < 1 || p.threads > 4096) return fail(Err::Value, "threads must be in [1, 4096]");
    const int64_t max_pix = P > 0 ? P : 1, max_chan = C > 0 ? C : 1;
    if (p.n_pix < 1 || p.n_pix > max_pix) return fail(Err::Value, "top_pixels must be in [1, %lld]", (long long)max_pix);
    if (p.n_chan < 1 || p.n_chan > max_chan)
        return fail(Err::Value, "top_channels must be in [1, %lld]", (long long)max_chan);
    const int64_t words = (P + 31) / 32;
    const int64_t s2[2] = {N, C}, s3[3] = {N, p.n_chan, words}, s1[1] = {N};
    if (check_dense(v.slots, "slots", kI32, 2, s2) || check_dense(v.bits, "bits", kI32, 3, s3) ||
        check_dense(v.dropped, "dropped", kI64, 1, s1) || check_dense(v.rate, "rate", kF32, 1, s1))
        return -1;
    if (v.scale.type != kF32 && v.scale.type != kF64) return fail(Err::Type, "scale must be float32 or float64");
    if (check_dense(v.scale, "scale", v.scale.type, 1, s1)) return -1;
    // Products below stay exact in int64 and double: the logical x (N, C, P), counting an empty
    // axis as 1, holds at most 2**52 elements (slot, Philox offset and scale arithmetic).
    constexpr int64_t kMax = (int64_t)1 << 52;
    int64_t plane_elems, total; // C*P and N*C*P (an empty axis counted as 1)
    if (P > ((int64_t)1 << 40) || C > ((int64_t)1 << 30) || __builtin_mul_overflow(max_chan, max_pix, &plane_elems) ||
        plane_elems > kMax || __builtin_mul_overflow(plane_elems, N, &total) || total > kMax)
        return fail(Err::Value, "the tensor is too large for the CPU kernels");
    if (make_geometry(&bp->g, S, rank, p.block_size, p.diamond != 0)) {
        fail_memory();
        return -1;
    }
    BuildCtx &b = bp->b;
    b.g = &bp->g;
    b.cam = cam.data;
    b.alpha = alpha.data;
    b.cam_type = cam.type;
    b.alpha_type = alpha.type;
    b.N = N;
    b.C = C;
    b.n_pix = p.n_pix;
    b.n_chan = p.n_chan;
    b.words = words;
    b.eligible = p.eligible != 0;
    b.p_gs = drop_prob * p.gamma_scale; // finite: drop_prob <= 1
    b.seed = (uint64_t)seed;
    b.slots = reinterpret_cast<int32_t *>(v.slots.data);
    b.bits = reinterpret_cast<int32_t *>(v.bits.data);
    b.dropped = reinterpret_cast<int64_t *>(v.dropped.data);
    b.rate = reinterpret_cast<float *>(v.rate.data);
    b.scratch_bytes = scratch_bytes(P, C);
    int T = (int)p.threads;
    if (T > N) T = N > 0 ? (int)N : 1;
    if ((double)N * (double)(P + C) < 8192.0) T = 1; // not worth waking the pool
    bp->T = T;
    // The kernels' own slots (N*C), slot channels (N*n'), top and dropped counts (2N int64) and
    // keep masks (N*C, channels_last only): never the caller's memory. N*C <= 2**52: no overflow.
    const size_t own = sizeof(int32_t) * (size_t)(N * C + N * p.n_chan) + sizeof(int64_t) * (size_t)(2 * N) + 8 +
                       (want_keep ? sizeof(uint32_t) * (size_t)(N * C) : 0);
    bp->own = static_cast<char *>(std::malloc(own));
    b.scratch = static_cast<char *>(std::malloc(b.scratch_bytes * (size_t)T));
    if (!bp->own || !b.scratch) {
        build_release(bp);
        fail_memory();
        return -1;
    }
    b.slot_own = reinterpret_cast<int32_t *>(bp->own);
    b.chan = b.slot_own + N * C;
    // int64 counts after the int32 arrays, rounded up to 8 bytes (the allocation has 8 to spare).
    b.ntop = reinterpret_cast<int64_t *>(((uintptr_t)(b.chan + N * p.n_chan) + 7) & ~(uintptr_t)7);
    b.count = b.ntop + N;
    b.keep = want_keep ? reinterpret_cast<uint32_t *>(b.count + N) : nullptr;
    bp->normalize = (int)p.normalize;
    bp->scale = v.scale;
    return 0;
}

// Step 7: float64 quotient, rounded once to the scale's dtype; kept = 0 gives 0.
void build_finish(const BuildPlan *bp) {
    const BuildCtx &b = bp->b;
    const int64_t N = b.N, C = b.C, P = bp->g.P;
    int64_t total = 0;
    for (int64_t i = 0; i < N; ++i) total += b.dropped[i];
    for (int64_t i = 0; i < N; ++i) {
        double sc = 1.0;
        if (bp->normalize != kNormalizeNone) {
            const double numel = (double)(bp->normalize == kNormalizeBatch ? N * C * P : C * P);
            const double kept = numel - (double)(bp->normalize == kNormalizeBatch ? total : b.dropped[i]);
            sc = kept == 0.0 ? 0.0 : numel / kept;
        }
        if (bp->scale.type == kF32) reinterpret_cast<float *>(bp->scale.data)[i] = (float)sc;
        else reinterpret_cast<double *>(bp->scale.data)[i] = sc;
    }
}

void build_release(BuildPlan *bp) {
    std::free(bp->b.scratch);
    std::free(bp->own);
    bp->b.scratch = nullptr;
    bp->own = nullptr;
    free_geometry(&bp->g);
}

int build_views(BuildViews &v, const BuildParams &p) {
    BuildPlan bp;
    if (build_prepare(&bp, v, p, false)) return -1;
    View *const views[] = {&v.cam, &v.alpha, &v.seed, &v.drop_prob, &v.slots, &v.bits, &v.scale, &v.dropped, &v.rate};
    const char *const names[] = {"cam", "alpha", "seed", "drop_prob", "slots", "bits", "scale", "dropped", "rate"};
    if (check_outputs(views, names, 9, 4, -1)) {
        build_release(&bp);
        return -1;
    }
    const Job job = {build_body, &bp.b, bp.b.N};
    run_job(job, bp.T);
    build_finish(&bp);
    build_release(&bp);
    return 0;
}

} // namespace camdrop
