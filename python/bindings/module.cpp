// rnnfast._core: the private compiled module. Each area registers itself; no numerics here.
#include <pybind11/pybind11.h>

#include "rnnfast/config.hpp"

namespace py = pybind11;

namespace rnnfast::bindings {
void register_stack(py::module_& m);
void register_cell(py::module_& m);
}  // namespace rnnfast::bindings

PYBIND11_MODULE(_core, m) {
    m.doc() = "rnnfast compiled kernels (private; use the rnnfast package)";
    m.attr("__version__") = rnnfast::version();
    m.def("get_num_threads", &rnnfast::get_num_threads, "Threads the kernels split their work across.");
    m.def("set_num_threads", &rnnfast::set_num_threads, py::arg("n"), "Set the threads the kernels split their work across.");
    m.def("simd_instruction_sets", &rnnfast::simd_instruction_sets);
    m.def("eigen_version", &rnnfast::eigen_version);
    m.def("compiler", &rnnfast::compiler);
    rnnfast::bindings::register_stack(m);
    rnnfast::bindings::register_cell(m);
}
