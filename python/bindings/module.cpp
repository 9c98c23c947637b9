// rnnfast._core: the private compiled module. Each area registers itself; no numerics here.
#include <pybind11/pybind11.h>

#include "rnnfast/config.hpp"

namespace py = pybind11;

namespace rnnfast::bindings {
void register_stack(py::module_& m);
void register_cell(py::module_& m);
}  // namespace rnnfast::bindings

#ifndef RNNFAST_MODULE_NAME
#define RNNFAST_MODULE_NAME _core_baseline
#endif
#ifndef RNNFAST_ISA_LEVEL
#define RNNFAST_ISA_LEVEL "baseline"
#endif

PYBIND11_MODULE(RNNFAST_MODULE_NAME, m) {
    m.doc() = "rnnfast compiled kernels for one instruction-set level (private; use the rnnfast package)";
    m.attr("__version__") = rnnfast::version();
    m.attr("isa_level") = RNNFAST_ISA_LEVEL;
    m.def("cpu_supports", &rnnfast::cpu_supports, py::arg("level"),
          "Whether this CPU can run the kernels of an instruction-set level (baseline, avx2, avx512, native).");
    m.def("cpu_vendor", &rnnfast::cpu_vendor, "\"intel\" or \"amd\" on x86 CPUs of those makers, \"\" elsewhere.");
    m.def("get_num_threads", &rnnfast::get_num_threads, "Threads the kernels split their work across.");
    m.def("set_num_threads", &rnnfast::set_num_threads, py::arg("n"), "Set the threads the kernels split their work across.");
    m.def("default_num_threads", &rnnfast::default_num_threads,
          "The default thread count: the CPUs this process may use (affinity, capped by a cgroup CPU quota).");
    m.def("default_threads_source", &rnnfast::default_threads_source, "Which bound decided default_num_threads().");
    m.def("num_threads_is_default", &rnnfast::num_threads_is_default, "Whether set_num_threads was never called.");
    m.def("reset_num_threads", &rnnfast::reset_num_threads, "Back to the default thread count.");
    m.def("set_thread_cap", &rnnfast::set_thread_cap, py::arg("n"),
          "At most n threads for this thread's calls from now on (0: no cap).");
    m.def("simd_instruction_sets", &rnnfast::simd_instruction_sets);
    m.def("eigen_version", &rnnfast::eigen_version);
    m.def("compiler", &rnnfast::compiler);
    rnnfast::bindings::register_stack(m);
    rnnfast::bindings::register_cell(m);
}
