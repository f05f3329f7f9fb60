// torch's OpenMP pool found with dlsym, and the CPU features, looked up once at load time.
#include "threads.h"

#if !defined(_WIN32)
#include <dlfcn.h>
#endif

namespace camdrop {

bool have_avx2 = false;

namespace {

using GompParallel = void (*)(void (*)(void *), void *, unsigned, unsigned);
using OmpInt = int (*)();
GompParallel gomp_parallel = nullptr;
OmpInt omp_thread_num = nullptr, omp_num_threads = nullptr;
void (*gomp_barrier)() = nullptr;

void job_entry(void *p) {
    const Job *job = static_cast<const Job *>(p);
    const int64_t t = omp_thread_num(), T = omp_num_threads();
    const int64_t begin = share_begin(job->total, t, T), end = share_begin(job->total, t + 1, T);
    if (begin < end) job->body(job->ctx, begin, end, (int)t);
}

} // namespace

void init_runtime() {
#if !defined(_WIN32)
    gomp_parallel = reinterpret_cast<GompParallel>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
    omp_thread_num = reinterpret_cast<OmpInt>(dlsym(RTLD_DEFAULT, "omp_get_thread_num"));
    omp_num_threads = reinterpret_cast<OmpInt>(dlsym(RTLD_DEFAULT, "omp_get_num_threads"));
    gomp_barrier = reinterpret_cast<void (*)()>(dlsym(RTLD_DEFAULT, "GOMP_barrier"));
    if (!omp_thread_num || !omp_num_threads) gomp_parallel = nullptr;
#endif
#if defined(CAMDROP_X86)
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
#endif
}

void run_job(const Job &job, int threads) {
    if (threads > 1 && gomp_parallel && job.total > 1) {
        if (threads > job.total) threads = (int)job.total;
        gomp_parallel(job_entry, const_cast<Job *>(&job), (unsigned)threads, 0);
    } else if (job.total > 0) {
        job.body(job.ctx, 0, job.total, 0);
    }
}

bool pool_available() { return gomp_parallel != nullptr; }
bool pool_has_barrier() { return gomp_parallel != nullptr && gomp_barrier != nullptr; }
void pool_parallel(void (*fn)(void *), void *ctx, unsigned threads) { gomp_parallel(fn, ctx, threads, 0); }
int pool_thread() { return omp_thread_num(); }
int pool_size() { return omp_num_threads(); }
void pool_barrier() { gomp_barrier(); }

} // namespace camdrop
