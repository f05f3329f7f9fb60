// Block geometry: the valid centres and the block's runs of pixels along the last axis.
#include "geometry.h"

#include <cstdlib>

namespace camdrop {

int make_geometry(Geometry *g, const int64_t S[3], int rank, int64_t block_size, bool diamond) {
    // A block at centre u covers u[k] - up[k] .. u[k] + down[k] on axis k.
    int64_t up[3] = {0, 0, 0}, down[3] = {0, 0, 0}, rho = 0;
    for (int k = 0; k < 3; ++k) g->S[k] = S[k];
    g->P = S[0] * S[1] * S[2];
    if (diamond) { // L1 ball of radius rho = min(block, sides) // 2, lowered until 2 rho + 1 fits
        int64_t side = INT64_MAX;
        for (int k = 3 - rank; k < 3; ++k) side = S[k] < side ? S[k] : side;
        rho = (block_size < side ? block_size : side) / 2;
        if (2 * rho + 1 > side) rho = side >= 1 ? (side - 1) / 2 : 0;
        for (int k = 3 - rank; k < 3; ++k) up[k] = down[k] = rho;
    } else {
        for (int k = 3 - rank; k < 3; ++k) {
            int64_t r = block_size < S[k] ? block_size : S[k];
            if (r < 1) r = 1;
            up[k] = r / 2; // a seed at u covers u - r//2 .. u + (r-1)//2 (max-pooling's SAME padding)
            down[k] = (r - 1) / 2;
        }
    }
    g->valid = 1;
    for (int k = 0; k < 3; ++k) {
        g->lo[k] = up[k];
        g->hi[k] = S[k] - down[k];
        g->valid *= g->hi[k] > g->lo[k] ? g->hi[k] - g->lo[k] : 0;
    }
    // Runs: one per (d, h) offset of the block, along w (at most D*H of them).
    const int64_t rows = (up[0] + down[0] + 1) * (up[1] + down[1] + 1);
    g->run_delta = static_cast<int64_t *>(std::malloc(sizeof(int64_t) * (size_t)rows));
    g->run_len = static_cast<int64_t *>(std::malloc(sizeof(int64_t) * (size_t)rows));
    if (!g->run_delta || !g->run_len) {
        free_geometry(g);
        return -1;
    }
    g->nruns = 0;
    g->area = 0;
    for (int64_t dd = -up[0]; dd <= down[0]; ++dd)
        for (int64_t dh = -up[1]; dh <= down[1]; ++dh) {
            int64_t left, len;
            if (diamond) { // the row at (dd, dh) holds |dw| <= rho - |dd| - |dh|
                const int64_t half = rho - (dd < 0 ? -dd : dd) - (dh < 0 ? -dh : dh);
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

void free_geometry(Geometry *g) {
    std::free(g->run_delta);
    std::free(g->run_len);
    g->run_delta = g->run_len = nullptr;
}

} // namespace camdrop
