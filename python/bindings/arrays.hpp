// Helpers for the bindings: check NumPy arrays and view them as row-major Eigen matrices.
// Checks run with the GIL held and throw std::invalid_argument (ValueError in Python).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdlib>
#include <initializer_list>
#include <new>
#include <vector>
#include <optional>
#include <string>

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

// A new C-contiguous array on 64-byte aligned memory. Eigen peels unaligned heads off vectorized loops, so the
// rounding of a result could otherwise depend on where NumPy happened to place the output; aligned outputs make
// repeated calls bitwise identical.
template <class T>
Array<T> aligned_array(std::initializer_list<Index> shape) {
    std::vector<py::ssize_t> dims(shape.begin(), shape.end());
    size_t count = 1;
    for (Index n : shape) count *= static_cast<size_t>(n);
    const size_t bytes = ((count * sizeof(T) + 63) / 64 + 1) * 64;
    void* data = std::aligned_alloc(64, bytes);
    if (data == nullptr) throw std::bad_alloc();
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

template <class T>
constexpr const char* dtype_suffix() {
    return sizeof(T) == 4 ? "F32" : "F64";
}

}  // namespace rnnfast::bindings
