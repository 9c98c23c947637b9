// Build and runtime configuration: version, threads, SIMD.
#pragma once

#include <string>

namespace rnnfast {

const char* version();

// Threads the kernels split their work across (default: the CPUs this process may run on).
int get_num_threads();
// n >= 1; throws std::invalid_argument otherwise.
void set_num_threads(int n);

// Eigen's description of the SIMD instruction sets this build was compiled for, e.g. "AVX SSE2 ... FMA".
std::string simd_instruction_sets();
// "Eigen 3.4.0"
std::string eigen_version();
// Compiler name and version.
std::string compiler();

}  // namespace rnnfast
