// The thread pool's contract for jobs whose threads meet at barriers (cpp/src/parallel.hpp): work that throws on
// one thread is wrapped by FirstError, so that thread keeps meeting its partners and the caller gets the exception.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <new>
#include <stdexcept>
#include <thread>

#include <dirent.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "parallel.hpp"
#include "rnnfast/config.hpp"

namespace {

class ParallelJobs : public ::testing::Test {
protected:
    void SetUp() override {
        before_ = rnnfast::get_num_threads();
        rnnfast::set_num_threads(2);
    }
    void TearDown() override { rnnfast::set_num_threads(before_); }

private:
    int before_ = 1;
};

TEST_F(ParallelJobs, AFailingThreadStillMeetsTheBarriersAndTheCallerGetsItsError) {
    for (int failing = 0; failing < 2; ++failing) {
        rnnfast::detail::Barrier barrier;
        rnnfast::detail::FirstError error;
        std::atomic<int> steps_done{0};
        int parts_seen = 0;
        rnnfast::detail::parallel(2, [&](int k, int parts) {
            if (k == 0) parts_seen = parts;
            const bool ready = error.run([&] {
                if (k == failing) throw std::bad_alloc();
            });
            for (int step = 0; step < 100; ++step) {
                if (ready) steps_done.fetch_add(1);
                barrier.wait(parts);
            }
        });
        EXPECT_THROW(error.rethrow(), std::bad_alloc);
        EXPECT_NO_THROW(error.rethrow());  // rethrown once
        // With two parts the other thread did all its steps; a busy pool runs the job as one part, which failed.
        EXPECT_EQ(steps_done.load(), parts_seen == 2 ? 100 : (failing == 0 ? 0 : 100));
    }
}

TEST_F(ParallelJobs, FirstErrorKeepsTheFirstException) {
    rnnfast::detail::FirstError error;
    EXPECT_TRUE(error.run([] {}));
    EXPECT_FALSE(error.run([] { throw std::runtime_error("first"); }));
    EXPECT_FALSE(error.run([] { throw std::logic_error("second"); }));
    try {
        error.rethrow();
        FAIL() << "expected an exception";
    } catch (const std::runtime_error& e) {
        EXPECT_STREQ(e.what(), "first");
    }
}

#if defined(__SANITIZE_ADDRESS__)
#define RNNFAST_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RNNFAST_TEST_ASAN 1
#endif
#endif

// The threads of this process (Linux: /proc/self/task), -1 where that cannot be read.
int task_count() {
    DIR* dir = opendir("/proc/self/task");
    if (dir == nullptr) return -1;
    int count = 0;
    while (const dirent* entry = readdir(dir)) count += entry->d_name[0] != '.';
    closedir(dir);
    return count;
}

// What the child of the test below found: 0 as expected, else the first check that failed. `threads`: more than
// the child can make without new memory. The child's C library keeps the stacks of the parent's threads, and of
// threads that ended before, for new ones: a job asking for fewer threads than those stacks would get them all
// (earlier tests in the same process leave a grown pool and ended threads behind).
int refused_threads_child(int threads) {
    int calls = 0, parts_seen = 0;
    std::atomic<int> done{0};
    const auto job = [&](int k, int parts) {
        if (k == 0) {
            ++calls;
            parts_seen = parts;
        }
        done.fetch_add(1);
    };
    const int before = task_count();
    rlimit limit{};
    if (getrlimit(RLIMIT_AS, &limit) != 0) return 10;
    if (limit.rlim_max != RLIM_INFINITY) return 77;  // a hard limit here: the test cannot set its own
    const rlimit original = limit;
    long pages = 0;
    if (FILE* statm = std::fopen("/proc/self/statm", "r")) {
        if (std::fscanf(statm, "%ld", &pages) != 1) pages = 0;
        std::fclose(statm);
    }
    if (pages <= 0) return 11;
    // Room for small allocations, none for a thread's stack.
    limit.rlim_cur = static_cast<rlim_t>(pages) * static_cast<rlim_t>(sysconf(_SC_PAGESIZE)) + (1 << 20);
    if (setrlimit(RLIMIT_AS, &limit) != 0) return 12;
    try {
        rnnfast::detail::run_parallel(threads, job);
    } catch (...) {
        return 1;  // the bug: the call failed
    }
    // One part, on the calling thread. (Some workers may have been made, on the stacks the child inherited.)
    if (calls != 1 || parts_seen != 1 || done.load() != 1) return 2;
    if (setrlimit(RLIMIT_AS, &original) != 0) return 13;
    calls = 0;
    done = 0;
    try {
        rnnfast::detail::run_parallel(threads, job);
    } catch (...) {
        return 4;
    }
    if (parts_seen != threads || done.load() != threads) return 5;  // the pool grew once it could
    if (task_count() != before + threads - 1) return 6;  // its workers
    return 0;
}

}  // namespace

// The system refusing a new thread (a limit on a container's threads, no memory for a stack: here a child process
// whose address space has no room for one) made every parallel call throw std::system_error. The job now runs
// on the calling thread as one part, as on a busy pool; the pool makes its threads once it can.
TEST(ThreadPool, AJobRunsOnTheCallingThreadWhileTheSystemRefusesThreads) {
#ifdef RNNFAST_TEST_ASAN
    GTEST_SKIP() << "AddressSanitizer's shadow memory reserves terabytes: RLIMIT_AS cannot bound the process";
#endif
    if (task_count() < 0) GTEST_SKIP() << "counts threads in /proc/self/task (Linux)";
    // Stacks the child may inherit: one per thread of this process, and glibc's cache of ended threads' stacks
    // (40 MiB, so 40 with a stack limit of 1 MiB).
    const int threads = task_count() + 48;
    std::fflush(nullptr);
    const pid_t child = fork();  // a fresh pool without workers (the pool forgets its threads in a child)
    ASSERT_GE(child, 0);
    if (child == 0) _exit(refused_threads_child(threads));
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77) GTEST_SKIP() << "the address space has a hard limit here";
    EXPECT_EQ(WEXITSTATUS(status), 0) << "1: the call threw; 2: not one part on the calling thread; 4-6: the "
                                         "pool did not grow once the limit was lifted";
}

// A container's CPU quota, as the cgroup files write it: v2 "QUOTA PERIOD" / "max PERIOD", v1 the quota alone
// (-1: none) with the period in its own file; fractions round up.
TEST(DefaultThreads, CgroupQuotaFiles) {
    using rnnfast::detail::quota_cpus;
    EXPECT_EQ(quota_cpus("200000 100000\n", false, ""), 2);
    EXPECT_EQ(quota_cpus("150000 100000", false, ""), 2);
    EXPECT_EQ(quota_cpus("50000 100000", false, ""), 1);
    EXPECT_EQ(quota_cpus("max 100000\n", false, ""), 0);
    EXPECT_EQ(quota_cpus("", false, ""), 0);
    EXPECT_EQ(quota_cpus("garbage", false, ""), 0);
    EXPECT_EQ(quota_cpus("400000\n", true, "100000\n"), 4);
    EXPECT_EQ(quota_cpus("-1\n", true, "100000\n"), 0);
    EXPECT_EQ(quota_cpus("250000", true, ""), 0);
}

TEST(DefaultThreads, BudgetIsPositiveAndSaysWhy) {
    const rnnfast::detail::ThreadBudget budget = rnnfast::detail::default_thread_budget();
    EXPECT_GE(budget.count, 1);
    EXPECT_FALSE(budget.source.empty());
    EXPECT_EQ(rnnfast::detail::default_thread_count(), budget.count);
}

TEST(ThreadCap, HoldsOnTheCallingThreadOnlyAndLifts) {
    rnnfast::set_num_threads(4);
    EXPECT_FALSE(rnnfast::num_threads_is_default());
    rnnfast::set_thread_cap(1);
    int other = 0;
    std::thread([&] { other = rnnfast::get_num_threads(); }).join();
    EXPECT_EQ(rnnfast::get_num_threads(), 1);
    EXPECT_EQ(other, 4);
    rnnfast::set_thread_cap(8);  // above the count: no effect
    EXPECT_EQ(rnnfast::get_num_threads(), 4);
    rnnfast::set_thread_cap(0);
    EXPECT_EQ(rnnfast::get_num_threads(), 4);
    rnnfast::reset_num_threads();
    EXPECT_TRUE(rnnfast::num_threads_is_default());
    EXPECT_EQ(rnnfast::get_num_threads(), rnnfast::default_num_threads());
}
