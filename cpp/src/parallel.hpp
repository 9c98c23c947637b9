// rnnfast's own threading: a small pool of persistent worker threads. Eigen runs single-threaded (it would
// open and close a parallel region for every small product of the time loop); the kernels split work
// themselves: big products by rows, the recurrence by items (or, for small batches, by bands of the state's
// columns inside one job with a barrier per step), and the two directions of a bidirectional layer side by side.
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>
#include <functional>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "rnnfast/interrupt.hpp"
#include "rnnfast/types.hpp"

namespace rnnfast::detail {

// The thread count set by set_num_threads.
int thread_limit();

// The CPUs this process may use: its affinity mask, capped by its container's CPU quota (cgroup v2 cpu.max,
// v1 cpu.cfs_quota_us over cpu.cfs_period_us, rounded up), as os.process_cpu_count() and container-aware
// runtimes count them; `source` says which bound decided.
struct ThreadBudget {
    int count;
    std::string source;
};
ThreadBudget default_thread_budget();

// default_thread_budget().count, read once: the default thread count.
int default_thread_count();

// CPUs of a cgroup quota file's text, 0 for none: v2 "QUOTA PERIOD" or "max PERIOD"; v1 (`v1_period_follows`)
// the quota alone (-1: none) and the period in `period_text`.
int quota_cpus(const std::string& text, bool v1_period_follows, const std::string& period_text);

// True on a thread that is running a pool job: work started there runs inline.
bool in_parallel();

// The most threads a call splits its work across, whatever the setting: the CPUs this process may use
// (default_thread_count). More threads than cores only take turns on them, and every step's barrier then waits for
// a thread that is not running (8 threads on 2 cores made some calls 9x slower). The environment variable
// RNNFAST_OVERSUBSCRIBE=1, read once, lifts the bound: tests use it to run many-thread splits on small machines.
int usable_threads();

// Threads worth using for `work` multiply-adds when each thread should get at least `min_work`.
inline int threads_for(double work, double min_work) {
    if (in_parallel()) return 1;
    const double useful = std::max(1.0, work / min_work);
    return static_cast<int>(std::min<double>(std::min(thread_limit(), usable_threads()), useful));
}

// Runs body(k, parts) for k in [0, parts) on the pool, the caller taking k = 0, and returns when all are done.
// parts is `threads`, or 1 when the pool is busy with another caller's job or the system refuses the threads it
// lacks (the body then does all the work).
void run_parallel(int threads, const std::function<void(int, int)>& body);

template <class Body>
void parallel(int threads, Body&& body) {
    if (threads <= 1) {
        body(0, 1);
        return;
    }
    run_parallel(threads, std::function<void(int, int)>(std::forward<Body>(body)));
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// Spins briefly, then yields, until `done()`: a step of the recurrence takes microseconds, and yielding keeps a
// thread that lost its core from being starved by its partner's spinning.
template <class Done>
void spin_until(Done&& done) {
    for (int spins = 0; !done(); ++spins) {
        if (spins < 2000) {
            cpu_relax();
        } else {
            std::this_thread::yield();
        }
    }
}

// A barrier for the threads of one job, met once per time step. `parts` is the job's thread count as the body
// received it (1 when the job ran inline).
class Barrier {
public:
    void wait(int parts) {
        if (parts <= 1) return;
        const unsigned gen = generation_.load(std::memory_order_acquire);
        if (arrived_.fetch_add(1, std::memory_order_acq_rel) == parts - 1) {
            arrived_.store(0, std::memory_order_relaxed);
            generation_.fetch_add(1, std::memory_order_release);
            return;
        }
        spin_until([&] { return generation_.load(std::memory_order_acquire) != gen; });
    }

private:
    std::atomic<int> arrived_{0};
    std::atomic<unsigned> generation_{0};
};

// The first exception thrown by work that run() wraps on a job's threads, rethrown by the caller after the job.
// For jobs whose threads meet at barriers: a thread that left the job early would leave its partners waiting.
class FirstError {
public:
    template <class Work>
    bool run(Work&& work) noexcept {
        try {
            work();
            return true;
        } catch (...) {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!error_) error_ = std::current_exception();
            return false;
        }
    }

    void rethrow() {
        if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    }

private:
    std::mutex mutex_;
    std::exception_ptr error_;
};

// Lets the threads of a job that meet at a barrier every step stop early, all before the same step: the job's
// first thread (the caller's, the only one that polls) asks during step s, and every thread leaves before step
// s + 1, which none can reach before that thread has passed the barrier of step s.
class StepStop {
public:
    // At the top of the job's step number `s` (0, 1, ... in processing order) on part `k`; true: leave the loop.
    // `work`: multiply-adds of one step, which paces the polls.
    bool before(Index s, int k, double work) {
        if (s >= stop_at_.load(std::memory_order_acquire)) return true;
        if (k == 0 && stop_requested(work)) stop_at_.store(s + 1, std::memory_order_release);
        return false;
    }

    // After the job, on the caller: throws Interrupted when a poll asked to stop.
    void rethrow() const {
        if (stop_at_.load(std::memory_order_acquire) != kNever) throw Interrupted();
    }

private:
    static constexpr Index kNever = std::numeric_limits<Index>::max();
    std::atomic<Index> stop_at_{kNever};
};

// Start of part `k` of `parts` over [0, n), on multiples of `align` so vector loops stay aligned.
inline Index split(Index n, int k, int parts, Index align = 16) {
    if (k >= parts) return n;
    const Index raw = n * k / parts;
    return std::min(n, (raw + align / 2) / align * align);
}

}  // namespace rnnfast::detail
