// build: SPEC.md steps 1-7 for a batch. Per sample, the top channels and pixels, the seed rate,
// Philox seeds at the eligible positions only, blocks stamped as runs of bits into planes over the
// top channels, dropped counts; then the scales. Writes the saved state (slots, bits, scale) and
// the statistics (dropped, rate).
#pragma once

#include "common.h"
#include "errors.h"
#include "geometry.h"
#include "views.h"

namespace camdrop {

// The scalar arguments of build and forward, as the Python side passes them (module.cpp).
struct BuildParams {
    long long block_size; // >= 1
    long long diamond;    // 0: square blocks, 1: diamonds
    long long n_pix;      // top pixels n, in [1, P]
    long long n_chan;     // top channels n', in [1, C]
    long long eligible;   // 1: gamma_mode "eligible", 0: "dropblock"
    double gamma_scale;   // finite, >= 0
    long long normalize;  // 0 batch, 1 sample, 2 none
    long long threads;    // torch.get_num_threads(), in [1, 4096]
};

enum Normalize : int { kNormalizeBatch = 0, kNormalizeSample = 1, kNormalizeNone = 2 };

// One batch's build: inputs, outputs and this call's own buffers.
struct BuildCtx {
    const Geometry *g;
    const char *cam, *alpha;
    int cam_type, alpha_type;
    int64_t N, C, n_pix, n_chan, words;
    bool eligible;
    double p_gs;           // drop_prob * gamma_scale
    uint64_t seed;
    int32_t *slots, *bits; // the caller's outputs: written, never read back
    int64_t *dropped;
    float *rate;
    char *scratch;         // scratch_bytes per thread
    size_t scratch_bytes;
    int32_t *slot_own;     // (N, C) this call's own copy of the slots: what the kernels read
    int32_t *chan;         // (N, n'): the channel of each slot
    int64_t *ntop;         // (N,): top channels per sample
    int64_t *count;        // (N,): dropped elements per sample (this call's own copy)
    uint32_t *keep;        // (N, C) or NULL: all ones outside the top channels, 0 at them
};

// A build's checked arguments, geometry and buffers.
struct BuildPlan {
    Geometry g;
    BuildCtx b;
    int T;          // threads worth waking for it
    int normalize;  // Normalize
    View scale;
    char *own;      // slot_own, chan, ntop, count, keep: one allocation
};

// Views of build's arguments, in the order of the Python call.
struct BuildViews {
    View cam, alpha, seed, drop_prob, slots, bits, scale, dropped, rate;
};

// Checks every view, value and count of a build (the callers check aliasing) and allocates its
// buffers: scratch for the bp->T threads its own rule picks, keep masks when ``want_keep``.
// -1 with an error recorded (errors.h) and nothing to release.
int build_prepare(BuildPlan *bp, BuildViews &v, const BuildParams &p, bool want_keep);

// Samples [begin, end) on thread ``thread`` (a Job body over the batch; ctx: BuildCtx).
void build_body(void *ctx, int64_t begin, int64_t end, int thread);

// Step 7, once every sample is built: the scales.
void build_finish(const BuildPlan *bp);

void build_release(BuildPlan *bp);

// Steps 1-7 for checked views: every check (aliasing included), then the build on the pool. 0, or
// -1 with an error recorded. Needs no GIL: the bindings release it around the call.
int build_views(BuildViews &v, const BuildParams &p);

} // namespace camdrop
