// Helpers for the bindings: check NumPy arrays and view them as row-major Eigen matrices.
// Checks run with the GIL held and throw std::invalid_argument (ValueError in Python).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <exception>
#include <initializer_list>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#if defined(__GLIBCXX__)
#include <cxxabi.h>
#endif

#include "rnnfast/interrupt.hpp"
#include "rnnfast/stack.hpp"
#include "rnnfast/types.hpp"

namespace rnnfast::bindings {

namespace py = pybind11;

template <class T>
using Array = py::array_t<T, py::array::c_style>;

inline std::string shape_string(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

inline std::string shape_string(std::initializer_list<Index> shape) {
    std::string s = "(";
    bool first = true;
    for (Index n : shape) {
        s += (first ? "" : ", ") + std::to_string(n);
        first = false;
    }
    return s + (shape.size() == 1 ? ",)" : ")");
}

// Throws unless `a` has exactly `shape`.
inline void expect_shape(const char* name, const py::array& a, std::initializer_list<Index> shape) {
    bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
    py::ssize_t i = 0;
    for (Index n : shape) ok = ok && a.shape(i++) == n;
    if (!ok) {
        throw std::invalid_argument(std::string(name) + ": expected shape " + shape_string(shape) + ", got " +
                                    shape_string(a));
    }
}

// A MemoryError naming the array that could not be allocated, its shape and size. Call with the GIL.
inline py::error_already_set memory_error(const char* name, std::initializer_list<Index> shape, double bytes) {
    const std::string msg = std::string(name) + ": cannot allocate an array of shape " + shape_string(shape) + " (" +
                            std::to_string(bytes / (1 << 30)) + " GiB)";
    PyErr_SetString(PyExc_MemoryError, msg.c_str());
    return py::error_already_set();
}

// Bytes of physical memory, or 0 when unknown: a larger allocation could only succeed by overcommitting, and the
// process would be killed while filling it. Read once (sysconf makes a system call; every call allocates).
inline double physical_memory() {
    static const double bytes = [] {
        const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
        return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
    }();
    return bytes;
}

// Dimension `axis` of `obj` when it is an ndarray (not a subclass) of `nd` dimensions, else -1: a call's sizes,
// before plain_array checks its arrays against them.
inline Index ndarray_dim(py::handle obj, int nd, int axis) {
    if (Py_TYPE(obj.ptr()) != py::detail::npy_api::get().PyArray_Type_) return -1;
    const auto* a = py::detail::array_proxy(obj.ptr());
    return a->nd == nd ? static_cast<Index>(a->dimensions[axis]) : -1;
}

// `obj` as an array the kernels take as it is -- an ndarray (not a subclass) of exactly T, C-contiguous, aligned,
// of `shape` -- or an empty optional: what a short path checks before it skips the general checks, in a small
// part of the time the same checks take in Python.
template <class T>
std::optional<Array<T>> plain_array(py::handle obj, std::initializer_list<Index> shape) {
    const auto& api = py::detail::npy_api::get();
    if (Py_TYPE(obj.ptr()) != api.PyArray_Type_) return std::nullopt;
    const auto* a = py::detail::array_proxy(obj.ptr());
    constexpr int flags = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_;
    if ((a->flags & flags) != flags || a->nd != static_cast<int>(shape.size())) return std::nullopt;
    int i = 0;
    for (Index n : shape) {
        if (a->dimensions[i++] != n) return std::nullopt;
    }
    if (!api.PyArray_EquivTypes_(a->descr, py::dtype::of<T>().ptr())) return std::nullopt;
    return py::reinterpret_borrow<Array<T>>(obj);
}

// A new C-contiguous array on 64-byte aligned memory. Eigen peels unaligned heads off vectorized loops, so the
// rounding of a result could otherwise depend on where NumPy happened to place the output; aligned outputs make
// repeated calls bitwise identical.
// `name` names it in the MemoryError raised when it cannot be allocated. Call with the GIL.
template <class T>
Array<T> aligned_array(const char* name, std::initializer_list<Index> shape) {
    std::vector<py::ssize_t> dims(shape.begin(), shape.end());
    double exact = sizeof(T);
    size_t count = 1;
    for (Index n : shape) {
        exact *= static_cast<double>(n);
        count *= static_cast<size_t>(n);
    }
    const double memory = physical_memory();
    if (exact > 9e18 || (memory > 0 && exact > memory)) throw memory_error(name, shape, exact);
    const size_t bytes = ((count * sizeof(T) + 63) / 64 + 1) * 64;
    void* data = std::aligned_alloc(64, bytes);
    if (data == nullptr) throw memory_error(name, shape, exact);
    py::capsule owner(data, [](void* p) { std::free(p); });
    return Array<T>(dims, static_cast<T*>(data), owner);
}

// A C-contiguous array viewed as [rows, cols], rows = product of all but the last dimension.
template <class T>
ConstMatrixMap<T> as_matrix(const Array<T>& a, Index cols) {
    const Index rows = cols == 0 ? 0 : static_cast<Index>(a.size()) / cols;
    return ConstMatrixMap<T>(a.data(), rows, cols, Eigen::OuterStride<>(cols));
}
template <class T>
MatrixMap<T> as_mutable_matrix(Array<T>& a, Index cols) {
    const Index rows = cols == 0 ? 0 : static_cast<Index>(a.size()) / cols;
    return MatrixMap<T>(a.mutable_data(), rows, cols, Eigen::OuterStride<>(cols));
}

// An optional array as a matrix, or a [0, cols] matrix meaning "absent".
template <class T>
ConstMatrixMap<T> as_matrix_or_empty(const std::optional<Array<T>>& a, Index cols) {
    if (!a) return ConstMatrixMap<T>(nullptr, 0, cols, Eigen::OuterStride<>(cols));
    return as_matrix<T>(*a, cols);
}

// [(name, offset, shape)] for Python, from a parameter layout.
inline py::list layout_list(const std::vector<ParamSpec>& specs) {
    py::list out;
    for (const ParamSpec& p : specs) {
        py::tuple shape = p.cols == 0 ? py::tuple(py::make_tuple(p.rows)) : py::tuple(py::make_tuple(p.rows, p.cols));
        out.append(py::make_tuple(p.name, p.offset, shape));
    }
    return out;
}

// --- Running without the GIL ---------------------------------------------------------------------------------------

inline bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing() != 0;
#else
    return _Py_IsFinalizing() != 0;
#endif
}

// A thread that must not take the GIL back (the interpreter is exiting and would end it with an unwind that
// C++ cannot pass through cleanly) waits here until the process exits, as Python 3.14 parks daemon threads.
[[noreturn]] inline void park_forever() {
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

inline unsigned long main_thread_ident() {  // call with the GIL
    static const unsigned long ident =
        py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
    return ident;
}

// Python before 3.14 ends a thread that waits for the GIL while the interpreter starts exiting with pthread_exit:
// a forced unwind whose destructors (py::object decrefs) would run without a thread state and crash. Finalizing
// can begin while this thread waits, after any check, so the unwind is caught here and the thread parked instead.
inline void take_gil_or_park(PyThreadState* state) {
#if defined(__GLIBCXX__)
    try {
        PyEval_RestoreThread(state);
    } catch (abi::__forced_unwind&) {
        park_forever();
    }
#else
    PyEval_RestoreThread(state);
#endif
}

struct GilPoll {
    PyThreadState** state;
    bool main_thread;
};

// The InterruptScope's poll: on the main thread, take the GIL for a moment and run Python's pending signal
// handlers (Ctrl-C's raises KeyboardInterrupt, which stays set for the caller to raise).
inline bool poll_python(void* context) {
    auto* poll = static_cast<GilPoll*>(context);
    if (interpreter_finalizing()) return true;  // stop; without_gil then parks the thread
    if (!poll->main_thread) return false;       // signals are handled on the main thread only
    PyEval_RestoreThread(*poll->state);
    const bool stop = PyErr_CheckSignals() != 0;
    *poll->state = PyEval_SaveThread();
    return stop;
}

// Runs `work` (pure C++: no Python objects) without the GIL, stopping it early when a signal handler raises
// (Ctrl-C), and rethrows what it threw once the GIL is back: a pending Python error first. A signal that came
// after the last poll of work that succeeded raises here too, before the caller commits anything (adds a
// backward's gradients into `grads`): otherwise Python would raise it just after the call returned, with its
// changes made. Not an RAII guard, unlike py::gil_scoped_release: taking the GIL back may end the thread with a
// forced unwind, which must not start in a destructor (noexcept: std::terminate).
template <class Work>
void without_gil(Work&& work) {
    GilPoll poll{nullptr, PyThread_get_thread_ident() == main_thread_ident()};
    PyThreadState* state = PyEval_SaveThread();
    poll.state = &state;
    std::exception_ptr error;
    try {
        InterruptScope scope(&poll_python, &poll);
        work();
#if defined(__GLIBCXX__)
    } catch (abi::__forced_unwind&) {
        throw;
#endif
    } catch (...) {
        error = std::current_exception();
    }
    if (interpreter_finalizing()) park_forever();
    take_gil_or_park(state);
    if (!error && !PyErr_Occurred() && poll.main_thread) PyErr_CheckSignals();
    if (PyErr_Occurred()) throw py::error_already_set();  // e.g. the KeyboardInterrupt that stopped the work
    if (error) std::rethrow_exception(error);
}

template <class T>
constexpr const char* dtype_suffix() {
    return sizeof(T) == 4 ? "F32" : "F64";
}

}  // namespace rnnfast::bindings
