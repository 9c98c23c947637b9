// The thread pool's contract for jobs whose threads meet at barriers (cpp/src/parallel.hpp): work that throws on
// one thread is wrapped by FirstError, so that thread keeps meeting its partners and the caller gets the exception.
#include <gtest/gtest.h>

#include <atomic>
#include <new>
#include <stdexcept>
#include <thread>

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

}  // namespace

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
