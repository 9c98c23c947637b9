#include "rnnfast/config.hpp"

#include <Eigen/Core>

#include <atomic>
#include <stdexcept>

#include "parallel.hpp"

#ifndef RNNFAST_VERSION
#define RNNFAST_VERSION "0.0.0"
#endif

namespace rnnfast {

const char* version() { return RNNFAST_VERSION; }

namespace {

std::atomic<int>& thread_setting() {
    static std::atomic<int> threads{detail::default_thread_count()};
    return threads;
}

std::atomic<bool> threads_set{false};

thread_local int thread_cap = 0;  // set_thread_cap's, for the calling thread; 0: none

}  // namespace

namespace detail {
int thread_limit() {
    const int threads = thread_setting().load(std::memory_order_relaxed);
    return thread_cap > 0 && thread_cap < threads ? thread_cap : threads;
}
}  // namespace detail

void reset_num_threads() {
    thread_setting().store(detail::default_thread_count(), std::memory_order_relaxed);
    threads_set.store(false, std::memory_order_relaxed);
}

void set_thread_cap(int n) { thread_cap = n > 0 ? n : 0; }

bool num_threads_is_default() { return !threads_set.load(std::memory_order_relaxed); }

int get_num_threads() { return detail::thread_limit(); }

int default_num_threads() { return detail::default_thread_count(); }

std::string default_threads_source() { return detail::default_thread_budget().source; }

void set_num_threads(int n) {
    if (n < 1) throw std::invalid_argument("n: expected a positive number of threads, got " + std::to_string(n));
    thread_setting().store(n, std::memory_order_relaxed);
    threads_set.store(true, std::memory_order_relaxed);
}

std::string simd_instruction_sets() { return Eigen::SimdInstructionSetsInUse(); }

std::string eigen_version() {
    return "Eigen " + std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) + "." +
           std::to_string(EIGEN_MINOR_VERSION);
}

bool cpu_supports(const std::string& level) {
    if (level == "baseline" || level == "native") return true;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi2");
    if (level == "avx2") return v3;
    if (level == "avx512") {
        return v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512cd");
    }
#endif
    return false;
}

std::string cpu_vendor() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (__builtin_cpu_is("intel")) return "intel";
    if (__builtin_cpu_is("amd")) return "amd";
#endif
    return "";
}

std::string compiler() {
#if defined(__clang__)
    return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
    return "msvc " + std::to_string(_MSC_VER);
#else
    return "unknown";
#endif
}

}  // namespace rnnfast
