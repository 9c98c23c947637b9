// Build and runtime configuration: version, threads, SIMD.
#pragma once

#include <string>

namespace rnnfast {

const char* version();

// Threads the kernels split their work across (default: the CPUs this process may run on).
int get_num_threads();
// n >= 1; throws std::invalid_argument otherwise.
void set_num_threads(int n);
// The default of get_num_threads(): the CPUs this process may use (its affinity mask, capped by a container's
// CPU quota), and which of those bounds decided ("affinity mask", "cgroup quota (FILE)", "hardware threads").
int default_num_threads();
std::string default_threads_source();
// Whether set_num_threads was never called: the count is still the default.
bool num_threads_is_default();
// Back to the default count, as if set_num_threads had never been called.
void reset_num_threads();
// At most n threads for the calls made on the calling thread from now on (0: no cap): a caller that knows other
// threads are busy on some of the cores (PyTorch's, spinning after its last parallel region) lends fewer.
void set_thread_cap(int n);

// Eigen's description of the SIMD instruction sets this build was compiled for, e.g. "AVX SSE2 ... FMA".
std::string simd_instruction_sets();
// "Eigen 3.4.0"
std::string eigen_version();
// Whether this CPU can run code built for an instruction-set level: "baseline" (x86-64 or the compiler's
// default), "avx2" (x86-64-v3: AVX2, FMA, BMI2, ...), "avx512" (x86-64-v4), "native" (only the machine that
// built it: answered true, the loader checks it by importing). Unknown names are false.
bool cpu_supports(const std::string& level);
// "intel" or "amd" on x86 CPUs of those makers, "" elsewhere: which level's kernels run small problems faster
// depends on how the CPU executes 512-bit instructions.
std::string cpu_vendor();
// Compiler name and version.
std::string compiler();

}  // namespace rnnfast
