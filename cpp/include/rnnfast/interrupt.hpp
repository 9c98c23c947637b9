// Stopping a long call early (Ctrl-C). The caller makes an InterruptScope on its thread with a poll function; the
// kernels ask stop_requested() between chunks of work and at every step of the recurrence, and throw Interrupted
// once a poll has said stop. Threads of the pool see the scope of the job they run, so every thread of a call
// stops, and only the caller's thread polls.
#pragma once

#include <atomic>
#include <stdexcept>
#include <thread>

namespace rnnfast {

struct Interrupted : std::runtime_error {
    Interrupted() : std::runtime_error("rnnfast: the call was interrupted") {}
};

class InterruptScope {
public:
    // poll(context) returns true to stop the call; it runs on the thread that made the scope, at most about
    // every `interval_us` microseconds of that thread's work.
    using Poll = bool (*)(void* context);
    InterruptScope(Poll poll, void* context, long interval_us = 20000);
    ~InterruptScope();
    InterruptScope(const InterruptScope&) = delete;
    InterruptScope& operator=(const InterruptScope&) = delete;

    // Whether the call should stop; polls first when the owning thread has done `work` multiply-adds since the
    // last look at the clock and the interval has passed.
    bool stop_requested(double work);
    bool stopped() const { return stop_.load(std::memory_order_acquire); }

private:
    Poll poll_;
    void* context_;
    long interval_us_;
    double work_since_clock_ = 0;
    long long next_poll_us_ = 0;
    std::atomic<bool> stop_{false};
    InterruptScope* previous_;
    std::thread::id owner_;
};

// Whether the current call (the scope of this thread, or of the pool job it runs) should stop; `work` is the
// multiply-adds done since the last call, which paces the polls. False when there is no scope.
bool stop_requested(double work = 0);

// Throws Interrupted when stop_requested(work).
void interruption_point(double work = 0);

namespace detail {
// The scope the pool hands to its workers for the job they run.
InterruptScope* current_interrupt_scope();
void set_current_interrupt_scope(InterruptScope* scope);
}  // namespace detail

}  // namespace rnnfast
