// apply: SPEC.md step 8. y = +0.0 where the state says dropped, else x * scale rounded once to x's
// dtype, in one pass over x for any strides (the backward is this on dy). Three walks:
//
//   blocks    dense NCHW (x and y contiguous per sample): blocks of channels; runs of channels
//             outside the top ones one multiply; top planes multiplied and masked in one AVX2
//             pass (float32), or for small maps one multiply a block, then the top planes that
//             drop anything masked in place.
//   pixels    channels innermost (channels_last): 32 pixels (one mask word) at a time; pixels
//             where every top channel is dropped multiplied and masked in one pass, the other
//             dropped elements one store each, found by their bits.
//   segments  anything else: a plane, or a row of it, at a time; multiplied, then the runs its
//             mask bits hold zeroed.
#pragma once

#include "common.h"
#include "errors.h"
#include "threads.h"
#include "views.h"

namespace camdrop {

struct ApplyCtx {
    View x, y;
    const int32_t *slots;  // (N, C): the plane of each channel in bits, or -1 (a checked copy)
    const uint32_t *bits;  // (N, n', words): the dropped bits, pixel q at bit q & 31 of word q >> 5
    const int32_t *chan;   // (N, n'): the channel of each slot, -1 if none
    const char *scale;     // (N,): float32, or float64 for float64 x
    bool scale_f64;
    int64_t N, C, n_chan, words, S[3], P;
    int64_t sx[5], sy[5];   // strides of (n, c, d, h, w) in elements (0 for missing axes)
    bool flat;              // every plane of x and y has pixel q at q * (w stride)
    int64_t block_channels; // channels per work item when x and y are dense NCHW
    const uint32_t *keep;   // (N, C): all ones outside the top channels, 0 at them
    bool dense_pixels;      // channels_last without gaps: pixel q of sample i at i*sn + q*C
    const int64_t *ntop;    // (N,): top channels per sample
    const int64_t *count;   // (N,) or NULL: dropped elements per sample, where the build just counted them
    bool channel_inner;     // channels innermost in memory (channels_last): the pixel walk
};

// Checks x, y (already read into a), slots, bits and scale, and fills a's sizes and strides.
// -1 with an error recorded (errors.h). (The callers check aliasing.)
int apply_check(ApplyCtx *a, const View &slots, const View &bits, const View &scale, long long threads);

// The apply's walk and work items, and the threads worth waking for them (x has elements).
void apply_job(ApplyCtx *a, Job *job, long long threads, int *T);

// Step 8 for checked views (a.x and a.y set): every check (aliasing and slot values included),
// then the apply on the pool. 0, or -1 with an error recorded. Needs no GIL.
int apply_views(ApplyCtx &a, const View &slots, const View &bits, const View &scale, long long threads);

} // namespace camdrop
