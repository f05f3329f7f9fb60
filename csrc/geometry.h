// Block geometry (SPEC.md step 3), derived from the map's shape, never taken from the caller.
#pragma once

#include "common.h"

namespace camdrop {

// 1-D and 2-D maps are 3-D maps with leading axes of size 1: S = (D, H, W), pixel q = (d*H + h)*W + w.
struct Geometry {
    int64_t S[3];          // spatial sizes (D, H, W)
    int64_t P;             // pixels per plane: D*H*W
    int64_t lo[3], hi[3];  // valid centres: lo[k] <= u[k] < hi[k] on every axis
    int64_t area;          // A: pixels in a block
    int64_t valid;         // |V|: valid centres
    int64_t nruns;         // the block as runs along the last axis: one per (dd, dh) offset ...
    int64_t *run_delta;    // ... its first pixel's flat offset from the centre
    int64_t *run_len;      // ... and its length
};

// rank = the number of real spatial axes (the last ``rank`` of the three); block_size >= 1.
// Returns -1 when out of memory (the caller raises).
int make_geometry(Geometry *g, const int64_t S[3], int rank, int64_t block_size, bool diamond);
void free_geometry(Geometry *g);

// Sets bits [start, start + len) of a plane's words (len >= 1).
inline void set_run(uint32_t *w, int64_t start, int64_t len) {
    const int64_t end = start + len - 1; // inclusive
    const int64_t ws = start >> 5, we = end >> 5;
    const uint32_t first = 0xFFFFFFFFu << (start & 31), last = 0xFFFFFFFFu >> (31 - (end & 31));
    if (ws == we) {
        w[ws] |= first & last;
        return;
    }
    w[ws] |= first;
    for (int64_t k = ws + 1; k < we; ++k) w[k] = 0xFFFFFFFFu;
    w[we] |= last;
}

} // namespace camdrop
