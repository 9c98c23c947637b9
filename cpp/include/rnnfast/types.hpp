// Row-major Eigen aliases shared by every rnnfast kernel.
//
// Every 2-D argument is row-major so a NumPy C-ordered array maps onto it without a copy. A sequence
// [T, B, F] is viewed as a [T*B, F] matrix whose rows are time-major: row t*B + b is step t of item b.
#pragma once

#include <Eigen/Core>

#include <stdexcept>
#include <string>

namespace rnnfast {

using Index = Eigen::Index;

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using RowVector = Eigen::Matrix<T, 1, Eigen::Dynamic>;

// Inner stride 1, any row stride: accepts whole matrices and column blocks (one direction of a
// bidirectional layer's [T*B, 2H] output) without copying.
template <class T>
using MatrixRef = Eigen::Ref<RowMatrix<T>, 0, Eigen::OuterStride<>>;
template <class T>
using ConstMatrixRef = Eigen::Ref<const RowMatrix<T>, 0, Eigen::OuterStride<>>;
template <class T>
using VectorRef = Eigen::Ref<RowVector<T>>;
template <class T>
using ConstVectorRef = Eigen::Ref<const RowVector<T>>;

template <class T>
using MatrixMap = Eigen::Map<RowMatrix<T>, 0, Eigen::OuterStride<>>;
template <class T>
using ConstMatrixMap = Eigen::Map<const RowMatrix<T>, 0, Eigen::OuterStride<>>;

enum class Activation { tanh, relu };

// Parses "tanh" / "relu"; anything else is std::invalid_argument.
inline Activation parse_activation(const std::string& name) {
    if (name == "tanh") return Activation::tanh;
    if (name == "relu") return Activation::relu;
    throw std::invalid_argument("nonlinearity: expected 'tanh' or 'relu', got '" + name + "'");
}

inline const char* activation_name(Activation act) {
    return act == Activation::tanh ? "tanh" : "relu";
}

}  // namespace rnnfast
