// What the kernels' unit tests share: random float64 matrices, centered finite differences, and comparisons of
// matrices that say where they differ.
#pragma once

#include <gtest/gtest.h>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "rnnfast/config.hpp"
#include "rnnfast/interrupt.hpp"
#include "rnnfast/types.hpp"

namespace rnnfast::test {

using MatD = RowMatrix<double>;

// Finite-difference step of numeric_grad.
constexpr double kEps = 1e-6;

// Entries uniform in [-scale, scale).
inline MatD random_matrix(std::mt19937& rng, Index rows, Index cols, double scale = 1.0) {
    std::uniform_real_distribution<double> dist(-scale, scale);
    MatD m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = dist(rng);
    return m;
}

// Centered differences of loss() with respect to every entry of the buffer data[0 .. rows*cols), restored after.
template <class F>
MatD numeric_grad(double* data, Index rows, Index cols, F&& loss) {
    MatD g(rows, cols);
    for (Index i = 0; i < rows * cols; ++i) {
        const double old = data[i];
        data[i] = old + kEps;
        const double lp = loss();
        data[i] = old - kEps;
        const double lm = loss();
        data[i] = old;
        g.data()[i] = (lp - lm) / (2.0 * kEps);
    }
    return g;
}

// |actual - expected| <= tol * max(1, |expected|) entry by entry (NaN fails).
template <class A, class E>
::testing::AssertionResult all_close(const Eigen::DenseBase<A>& actual, const Eigen::DenseBase<E>& expected,
                                     double tol) {
    if (actual.rows() != expected.rows() || actual.cols() != expected.cols()) {
        return ::testing::AssertionFailure() << "shape [" << actual.rows() << ", " << actual.cols() << "] vs ["
                                             << expected.rows() << ", " << expected.cols() << "]";
    }
    for (Index i = 0; i < actual.rows(); ++i) {
        for (Index j = 0; j < actual.cols(); ++j) {
            const double a = static_cast<double>(actual(i, j));
            const double e = static_cast<double>(expected(i, j));
            if (!(std::abs(a - e) <= tol * std::max(1.0, std::abs(e)))) {
                return ::testing::AssertionFailure() << "at (" << i << ", " << j << "): got " << a << ", expected "
                                                     << e << " (tol " << tol << ")";
            }
        }
    }
    return ::testing::AssertionSuccess();
}

template <class A, class E>
::testing::AssertionResult bitwise_equal(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<E>& b) {
    if (a.rows() != b.rows() || a.cols() != b.cols()) return ::testing::AssertionFailure() << "shape differs";
    for (Index i = 0; i < a.rows(); ++i) {
        for (Index j = 0; j < a.cols(); ++j) {
            if (!(a(i, j) == b(i, j))) {
                return ::testing::AssertionFailure() << "at (" << i << ", " << j << "): " << a(i, j) << " vs " << b(i, j);
            }
        }
    }
    return ::testing::AssertionSuccess();
}

// The thread count when made, set back when destroyed (also when a call throws).
struct ThreadsRestored {
    int before = get_num_threads();
    ~ThreadsRestored() { set_num_threads(before); }
};

// An interrupt poll that counts its calls and asks to stop from the `stop_from`-th on (InterruptScope(poll, &polls,
// 0) polls at every look at the clock).
struct CountedPolls {
    int count = 0;
    int stop_from = std::numeric_limits<int>::max();
    static bool poll(void* context) {
        CountedPolls* p = static_cast<CountedPolls*>(context);
        return ++p->count >= p->stop_from;
    }
};

}  // namespace rnnfast::test
