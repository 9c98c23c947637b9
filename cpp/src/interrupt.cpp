#include "rnnfast/interrupt.hpp"

#include <chrono>

namespace rnnfast {
namespace {

thread_local InterruptScope* current_scope = nullptr;

// Multiply-adds between looks at the clock: reading it every step would cost a tenth of a small step.
constexpr double kWorkPerClock = 1 << 20;

long long now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

}  // namespace

InterruptScope::InterruptScope(Poll poll, void* context, long interval_us)
    : poll_(poll),
      context_(context),
      interval_us_(interval_us),
      next_poll_us_(now_us() + interval_us),
      previous_(current_scope),
      owner_(std::this_thread::get_id()) {
    current_scope = this;
}

InterruptScope::~InterruptScope() { current_scope = previous_; }

bool InterruptScope::stop_requested(double work) {
    if (stopped()) return true;
    if (std::this_thread::get_id() != owner_ || poll_ == nullptr) return false;
    work_since_clock_ += work + 1;  // +1: a call that reports no work still counts
    if (work_since_clock_ < kWorkPerClock) return false;
    work_since_clock_ = 0;
    const long long now = now_us();
    if (now < next_poll_us_) return false;
    next_poll_us_ = now + interval_us_;
    if (poll_(context_)) stop_.store(true, std::memory_order_release);
    return stopped();
}

bool stop_requested(double work) { return current_scope != nullptr && current_scope->stop_requested(work); }

void interruption_point(double work) {
    if (stop_requested(work)) throw Interrupted();
}

namespace detail {
InterruptScope* current_interrupt_scope() { return current_scope; }
void set_current_interrupt_scope(InterruptScope* scope) { current_scope = scope; }
}  // namespace detail

}  // namespace rnnfast
