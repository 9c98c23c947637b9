#include "parallel.hpp"

#include <chrono>
#include <cstdlib>
#include <limits>
#include <condition_variable>
#include <exception>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <mutex>
#include <new>
#include <system_error>
#include <thread>
#include <vector>

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include "rnnfast/interrupt.hpp"

namespace rnnfast::detail {
namespace {

thread_local bool running_job = false;

// Workers wait for a job by spinning, then yielding, then sleeping: consecutive jobs of one call (a layer's
// products and its recurrence) follow each other within microseconds.
class Pool {
public:
    // Never destroyed (workers may outlive static destruction). A forked child has none of the parent's threads
    // and may have copied the pool's mutexes locked (fork during a call): it abandons that pool and makes a fresh
    // one. No lock guards the pointer, so a fork at any moment leaves nothing locked in the child.
    static Pool& instance() {
        static const bool registered = pthread_atfork(nullptr, nullptr, &forget_in_child) == 0;
        (void)registered;
        std::atomic<Pool*>& slot = pool_slot();
        Pool* pool = slot.load(std::memory_order_acquire);
        if (pool == nullptr || pool->pid_ != getpid()) {
            Pool* fresh = new Pool();
            if (slot.compare_exchange_strong(pool, fresh, std::memory_order_acq_rel)) {
                pool = fresh;
            } else {
                delete fresh;  // another thread made one first; `pool` now holds it
            }
        }
        return *pool;
    }

    void run(int threads, const std::function<void(int, int)>& body) {
        std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
        if (!busy.owns_lock()) {  // another caller's job is running: do this one inline
            body(0, 1);
            return;
        }
        if (!grow(threads - 1)) {  // the system refused a thread: this job on the calling thread alone
            busy.unlock();
            body(0, 1);
            return;
        }
        body_ = &body;
        parts_ = threads;
        scope_ = current_interrupt_scope();
        // Every worker acknowledges every job, so none can mistake a later job for the one it just saw.
        pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
        {
            std::lock_guard<std::mutex> lock(wake_);
            generation_.fetch_add(1, std::memory_order_release);
        }
        wake_cv_.notify_all();
        running_job = true;
        std::exception_ptr error;
        try {
            body(0, threads);
        } catch (...) {
            error = std::current_exception();
        }
        running_job = false;
        // The workers use the caller's body and data: wait for them even when this part failed.
        spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; });
        body_ = nullptr;
        std::exception_ptr worker_error = std::exchange(worker_error_, nullptr);
        if (!error) error = worker_error;
        if (error) std::rethrow_exception(error);
    }

private:
    static std::atomic<Pool*>& pool_slot() {
        static std::atomic<Pool*> slot{nullptr};
        return slot;
    }
    static void forget_in_child() { pool_slot().store(nullptr, std::memory_order_release); }

    // Workers up to `workers`; false when the system refuses a new thread (a limit on a process's or a container's
    // threads, no memory for a stack), which a call must survive: the pool keeps those it has, and tries again
    // at the next job that needs more (a limit can be lifted).
    bool grow(int workers) {
        while (static_cast<int>(workers_.size()) < workers) {
            const int index = static_cast<int>(workers_.size()) + 1;
            // The generation before the job being started, read here: the thread may start after it is bumped.
            const unsigned seen = generation_.load(std::memory_order_acquire);
            try {
                workers_.emplace_back([this, index, seen] { work(index, seen); });
            } catch (const std::system_error&) {
                return false;
            } catch (const std::bad_alloc&) {
                return false;
            }
            workers_.back().detach();
        }
        return true;
    }

    void work(int index, unsigned seen) {
        running_job = true;  // anything a worker starts runs inline
        for (;;) {
            wait_for_job(seen);
            seen = generation_.load(std::memory_order_acquire);
            if (index < parts_) {
                set_current_interrupt_scope(scope_);  // the caller's: this job stops when the call does
                try {
                    (*body_)(index, parts_);
                } catch (...) {  // e.g. std::bad_alloc, Interrupted: handed to the caller, which rethrows it
                    std::lock_guard<std::mutex> lock(error_mutex_);
                    if (!worker_error_) worker_error_ = std::current_exception();
                }
                set_current_interrupt_scope(nullptr);
            }
            pending_.fetch_sub(1, std::memory_order_acq_rel);
        }
    }

    void wait_for_job(unsigned seen) {
        const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
        int spins = 0;
        while (generation_.load(std::memory_order_acquire) == seen) {
            if (++spins < 2000) {
                cpu_relax();
            } else if (std::chrono::steady_clock::now() < until) {
                std::this_thread::yield();
            } else {
                std::unique_lock<std::mutex> lock(wake_);
                wake_cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
            }
        }
    }

    std::mutex busy_;  // one job at a time
    std::mutex wake_;
    std::condition_variable wake_cv_;
    std::atomic<unsigned> generation_{0};
    std::atomic<int> pending_{0};
    const std::function<void(int, int)>* body_ = nullptr;
    int parts_ = 1;
    InterruptScope* scope_ = nullptr;
    std::mutex error_mutex_;
    std::exception_ptr worker_error_;
    std::vector<std::thread> workers_;
    const pid_t pid_ = getpid();
};

}  // namespace

bool in_parallel() { return running_job; }

void run_parallel(int threads, const std::function<void(int, int)>& body) {
    if (threads <= 1 || running_job) {
        body(0, 1);
        return;
    }
    Pool::instance().run(threads, body);
}

int quota_cpus(const std::string& text, bool v1_period_follows, const std::string& period_text) {
    std::istringstream in(text);
    std::string quota;
    long long period = 0;
    if (!(in >> quota) || quota == "max") return 0;
    if (v1_period_follows) {
        std::istringstream p(period_text);
        if (!(p >> period)) return 0;
    } else if (!(in >> period)) {
        return 0;
    }
    long long q = 0;
    try {
        q = std::stoll(quota);
    } catch (const std::exception&) {
        return 0;
    }
    if (q <= 0 || period <= 0) return 0;  // v1: -1 means no quota
    return static_cast<int>(std::min<long long>((q + period - 1) / period, 1 << 20));
}

namespace {

std::string read_file(const std::string& path) {
    std::ifstream f(path);
    std::stringstream text;
    if (f) text << f.rdbuf();
    return text.str();
}

// The CPU quota of this process's cgroup (0: none found): v2 cpu.max, else v1 cpu.cfs_quota_us / cfs_period_us,
// at the process's own cgroup path and at the mount's root (where a container sees its own cgroup).
int cgroup_quota(std::string& source) {
#ifdef __linux__
    std::string v2_path, v1_path;
    std::istringstream lines(read_file("/proc/self/cgroup"));
    for (std::string line; std::getline(lines, line);) {
        const size_t a = line.find(':'), b = line.find(':', a + 1);
        if (a == std::string::npos || b == std::string::npos) continue;
        const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
        if (line.compare(0, a, "0") == 0 && controllers.empty()) v2_path = path;
        std::istringstream names(controllers);
        for (std::string name; std::getline(names, name, ',');) {
            if (name == "cpu") v1_path = path;
        }
    }
    for (const std::string& dir : {"/sys/fs/cgroup" + v2_path, std::string("/sys/fs/cgroup")}) {
        const std::string text = read_file(dir + "/cpu.max");
        if (const int n = quota_cpus(text, false, ""); n > 0) {
            source = "cgroup quota (" + dir + "/cpu.max)";
            return n;
        }
    }
    for (const std::string& root : {std::string("/sys/fs/cgroup/cpu"), std::string("/sys/fs/cgroup/cpu,cpuacct")}) {
        for (const std::string& dir : {root + v1_path, root}) {
            const int n = quota_cpus(read_file(dir + "/cpu.cfs_quota_us"), true, read_file(dir + "/cpu.cfs_period_us"));
            if (n > 0) {
                source = "cgroup quota (" + dir + "/cpu.cfs_quota_us)";
                return n;
            }
        }
    }
#else
    (void)source;
#endif
    return 0;
}

}  // namespace

ThreadBudget default_thread_budget() {
    ThreadBudget budget{static_cast<int>(std::max(1u, std::thread::hardware_concurrency())), "hardware threads"};
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        budget.count = std::max(1, CPU_COUNT(&set));
        budget.source = "affinity mask";
    }
#endif
    std::string source;
    const int quota = cgroup_quota(source);
    if (quota > 0 && quota < budget.count) {
        budget.count = quota;
        budget.source = source;
    }
    return budget;
}

int default_thread_count() {
    static const int count = default_thread_budget().count;
    return count;
}

int usable_threads() {
    static const int count = [] {
        const char* lift = std::getenv("RNNFAST_OVERSUBSCRIBE");
        return lift != nullptr && std::string(lift) == "1" ? std::numeric_limits<int>::max() : default_thread_count();
    }();
    return count;
}

}  // namespace rnnfast::detail
