// forward: each thread builds its share of the samples; a barrier; one thread derives the scales
// from every sample's count; a barrier; each applies its share. The apply reads the build's own
// slots (this call's memory), never the caller's.
#include "forward.h"

#include "apply.h"
#include "threads.h"

namespace camdrop {

namespace {

struct ForwardCtx {
    BuildPlan *bp;
    Job apply;
    int apply_threads;
};

void forward_entry(void *p) {
    ForwardCtx *f = static_cast<ForwardCtx *>(p);
    const int64_t t = pool_thread(), T = pool_size();
    // Each phase on the threads its own rule picked (the build's scratch is for bp->T of them).
    const int64_t Tb = f->bp->T < T ? f->bp->T : T, Ta = f->apply_threads < T ? f->apply_threads : T;
    if (t < Tb) {
        const int64_t N = f->bp->b.N, begin = share_begin(N, t, Tb), end = share_begin(N, t + 1, Tb);
        if (begin < end) build_body(&f->bp->b, begin, end, (int)t);
    }
    pool_barrier();
    if (t == 0) build_finish(f->bp);
    pool_barrier();
    if (t < Ta) {
        const int64_t begin = share_begin(f->apply.total, t, Ta), end = share_begin(f->apply.total, t + 1, Ta);
        if (begin < end) f->apply.body(f->apply.ctx, begin, end, (int)t);
    }
}

} // namespace

int forward_views(ApplyCtx &a, BuildViews &v, const BuildParams &p) {
    // cam (N, *S) and alpha (N, C) must fit x (N, C, *S)
    bool fits = a.x.ndim >= 3 && v.cam.ndim == a.x.ndim - 1 && v.alpha.ndim == 2 && v.cam.shape[0] == a.x.shape[0] &&
                v.alpha.shape[0] == a.x.shape[0] && v.alpha.shape[1] == a.x.shape[1];
    for (int d = 2; fits && d < a.x.ndim; ++d) fits = v.cam.shape[d - 1] == a.x.shape[d];
    if (!fits) return fail(Err::Value, "cam must be (N, *S) and alpha (N, C) for x of shape (N, C, *S)");
    if (apply_check(&a, v.slots, v.bits, v.scale, p.threads)) return -1;
    // y and the state are outputs: none may share memory with anything else (y may be x itself)
    View *const views[] = {&a.x, &v.cam, &v.alpha, &v.seed, &v.drop_prob, &a.y,
                           &v.slots, &v.bits, &v.scale, &v.dropped, &v.rate};
    const char *const names[] = {"x", "cam", "alpha", "seed", "drop_prob", "y", "slots", "bits", "scale", "dropped", "rate"};
    if (check_outputs(views, names, 11, 5, 0)) return -1;
    int Ta = 1;
    Job apply = {nullptr, &a, 0}; // no items when x is empty
    if (a.x.numel > 0) apply_job(&a, &apply, p.threads, &Ta);
    BuildPlan bp;
    if (build_prepare(&bp, v, p, a.channel_inner)) return -1;
    // The apply reads the build's own slots, never the caller's memory again.
    a.slots = bp.b.slot_own;
    a.chan = bp.b.chan;
    a.ntop = bp.b.ntop;
    a.count = bp.b.count;
    a.keep = bp.b.keep;
    const int T = bp.T > Ta ? bp.T : Ta;
    if (T > 1 && pool_has_barrier()) {
        ForwardCtx f = {&bp, apply, Ta};
        pool_parallel(forward_entry, &f, (unsigned)T);
    } else {
        const Job build = {build_body, &bp.b, bp.b.N};
        run_job(build, bp.T);
        build_finish(&bp);
        run_job(apply, Ta);
    }
    build_release(&bp);
    return 0;
}

} // namespace camdrop
