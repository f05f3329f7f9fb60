// Threads: torch's own OpenMP pool, found at run time, and what the CPU offers (AVX2).
//
// The GOMP entry points of the OpenMP runtime torch loaded are looked up with dlsym; the caller
// passes torch.get_num_threads(). So these kernels add no threads of their own and cannot
// oversubscribe the cores torch uses; without such a runtime everything runs on the calling
// thread (and without GOMP_barrier the forward forks twice, build then apply).
#pragma once

#include "common.h"

namespace camdrop {

// Finds the pool and the CPU's features; once, when the module loads.
void init_runtime();

// body(ctx, begin, end, thread) over [0, total), split into contiguous ranges, one per thread.
struct Job {
    void (*body)(void *ctx, int64_t begin, int64_t end, int thread);
    void *ctx;
    int64_t total;
};

// Where thread t of T starts in [0, total): total * t / T, in 128 bits (total may be near 2**62).
inline int64_t share_begin(int64_t total, int64_t t, int64_t T) {
    return (int64_t)((__int128)total * t / T);
}

// Runs job on up to ``threads`` threads of the pool (on the calling thread without one).
void run_job(const Job &job, int threads);

// The pool's primitives, for a parallel region of several phases (forward.cpp).
bool pool_available();          // GOMP_parallel and the thread queries were found
bool pool_has_barrier();        // ... and GOMP_barrier
void pool_parallel(void (*fn)(void *), void *ctx, unsigned threads);
int pool_thread();              // inside a region: this thread's number
int pool_size();                // inside a region: its thread count
void pool_barrier();

} // namespace camdrop
