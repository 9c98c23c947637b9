#include "rnnfast/elman.hpp"

#include "parallel.hpp"

#include <algorithm>
#include <stdexcept>

namespace rnnfast {
namespace {

// z <- act(z), in place.
template <class T, class Z>
void activate(Z&& z, Activation act) {
    if (act == Activation::tanh) {
        z = z.array().tanh().matrix();
    } else {
        // PropagateNaN: relu(NaN) stays NaN, as in PyTorch.
#if EIGEN_VERSION_AT_LEAST(3, 4, 90)
        z = z.array().template max<Eigen::PropagateNaN>(T(0)).matrix();
#else
        // Eigen 3.4.0's public max() has no NaN-propagation parameter; its functor has.
        z = z.binaryExpr(RowMatrix<T>::Zero(z.rows(), z.cols()), Eigen::internal::scalar_max_op<T, T, Eigen::PropagateNaN>());
#endif
    }
}

// dz <- dz * act'(h), where h = act(z) is the saved output (tanh' = 1 - h^2, relu' = [h > 0]). relu's is a
// select on h <= 0, as PyTorch's: a NaN state passes the gradient, a NaN gradient at an inactive unit stops.
template <class T, class Z, class H>
void multiply_by_derivative(Z&& dz, const H& h, Activation act) {
    if (act == Activation::tanh) {
        dz.array() *= T(1) - h.array().square();
    } else {
        dz = (h.array() <= T(0)).select(T(0), dz.array()).matrix();
    }
}

}  // namespace

template <class T>
void cell_forward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h, const ConstMatrixRef<T>& w_ih,
                  const ConstMatrixRef<T>& w_hh, const ConstVectorRef<T>& b_ih, const ConstVectorRef<T>& b_hh,
                  Activation act, MatrixRef<T> h_new) {
    h_new.noalias() = x * w_ih.transpose();
    if (h.rows() != 0) h_new.noalias() += h * w_hh.transpose();
    if (b_ih.size() != 0) h_new.rowwise() += b_ih + b_hh;
    activate<T>(h_new, act);
}

template <class T>
void cell_backward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h, const ConstMatrixRef<T>& w_ih,
                   const ConstMatrixRef<T>& w_hh, const ConstMatrixRef<T>& h_new, const ConstMatrixRef<T>& dh_new,
                   Activation act, MatrixRef<T> dx, MatrixRef<T> dh, MatrixRef<T> dw_ih, MatrixRef<T> dw_hh,
                   VectorRef<T> db_ih, VectorRef<T> db_hh) {
    RowMatrix<T> dz = dh_new;  // [B, H]
    multiply_by_derivative<T>(dz, h_new, act);
    dx.noalias() = dz * w_ih;
    if (dh.rows() != 0) dh.noalias() = dz * w_hh;
    dw_ih.noalias() += dz.transpose() * x;
    if (h.rows() != 0) dw_hh.noalias() += dz.transpose() * h;
    if (db_ih.size() != 0) {
        RowVector<T> db = dz.colwise().sum();
        db_ih += db;
        db_hh += db;
    }
}

namespace {

// Multiply-adds below which splitting across threads costs more than it saves: a whole product, and one
// step of the recurrence (whose threads meet at a barrier every step).
constexpr double kMinProductWork = 1 << 18;
constexpr double kMinStepWork = 1 << 16;

// dst = lhs * rhs (or += with `add`), the rows of dst split across threads.
template <class Dst, class Lhs, class Rhs>
void rows_product(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool add) {
    const int threads = detail::threads_for(static_cast<double>(dst.rows()) * dst.cols() * lhs.cols(), kMinProductWork);
    detail::parallel(threads, [&](int k, int parts) {
        const Index r0 = detail::split(dst.rows(), k, parts, 8), r1 = detail::split(dst.rows(), k + 1, parts, 8);
        if (r1 <= r0) return;
        if (add) {
            dst.middleRows(r0, r1 - r0).noalias() += lhs.middleRows(r0, r1 - r0) * rhs;
        } else {
            dst.middleRows(r0, r1 - r0).noalias() = lhs.middleRows(r0, r1 - r0) * rhs;
        }
    });
}

}  // namespace

template <class T>
void layer_forward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& w_ih,
                   const ConstMatrixRef<T>& w_hh, const ConstVectorRef<T>& b_ih, const ConstVectorRef<T>& b_hh,
                   Activation act, bool reverse, const StepLayout& steps, MatrixRef<T> hs) {
    const Index T_ = steps.seq_len(), H = hs.cols();
    // Input projection of every step at once; the recurrence then only adds h_{t-1} W_hh^T.
    rows_product(hs, x, w_ih.transpose(), false);
    if (b_ih.size() != 0) hs.rowwise() += b_ih + b_hh;
    // Each thread owns a band of the state's columns at every step; all meet before the next step reads them.
    const int threads = detail::threads_for(static_cast<double>(steps.batch()) * H * H, kMinStepWork);
    detail::Barrier step_done;
    detail::parallel(threads, [&](int k, int parts) {
        const Index c0 = detail::split(H, k, parts), width = detail::split(H, k + 1, parts) - c0;
        for (Index s = 0; s < T_; ++s) {
            const Index t = reverse ? T_ - 1 - s : s;
            const Index n = steps.size(t), o = steps.offset(t);
            if (n == 0 || width <= 0) {
                step_done.wait(parts);
                continue;
            }
            // Items continuing from the step processed before; the others start here from h0.
            const Index prev = reverse ? t + 1 : t - 1;
            const Index cont = std::min(n, steps.size_or_zero(prev));
            if (cont > 0) {
                hs.block(o, c0, cont, width).noalias() +=
                    hs.middleRows(steps.offset(prev), cont) * w_hh.middleRows(c0, width).transpose();
            }
            if (cont < n && h0.rows() != 0) {
                hs.block(o + cont, c0, n - cont, width).noalias() +=
                    h0.middleRows(cont, n - cont) * w_hh.middleRows(c0, width).transpose();
            }
            activate<T>(hs.block(o, c0, n, width), act);
            step_done.wait(parts);
        }
    });
}

template <class T>
void layer_backward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& w_ih,
                    const ConstMatrixRef<T>& w_hh, const ConstMatrixRef<T>& hs, const ConstMatrixRef<T>& dhs,
                    const ConstMatrixRef<T>& dh_n, Activation act, bool reverse, const StepLayout& steps,
                    MatrixRef<T> dx, MatrixRef<T> dh0, MatrixRef<T> dw_ih, MatrixRef<T> dw_hh, VectorRef<T> db_ih,
                    VectorRef<T> db_hh, MatrixRef<T> dz) {
    const Index T_ = steps.seq_len(), H = hs.cols();
    // dh0 carries dL/dh_{t-1} backwards through time. An item's row is written for the last time at its first
    // processed step, so it ends as dL/dh0; rows of items that have not started yet still hold their dh_n.
    if (dh_n.rows() != 0) {
        dh0 = dh_n;
    } else {
        dh0.setZero();
    }
    // Column bands as in layer_forward: a thread computes its band of dz, then (after all bands are done) its
    // band of dz W_hh. The next step reads only the thread's own band of dh0, so one barrier per step suffices.
    const int threads = detail::threads_for(static_cast<double>(steps.batch()) * H * H, kMinStepWork);
    detail::Barrier bands_done;
    detail::parallel(threads, [&](int k, int parts) {
        const Index c0 = detail::split(H, k, parts), width = detail::split(H, k + 1, parts) - c0;
        for (Index s = T_ - 1; s >= 0; --s) {
            const Index t = reverse ? T_ - 1 - s : s;
            const Index n = steps.size(t), o = steps.offset(t);
            if (n != 0 && width > 0) {
                if (dhs.rows() != 0) {
                    dz.block(o, c0, n, width) = dh0.block(0, c0, n, width) + dhs.block(o, c0, n, width);
                } else {
                    dz.block(o, c0, n, width) = dh0.block(0, c0, n, width);
                }
                multiply_by_derivative<T>(dz.block(o, c0, n, width), hs.block(o, c0, n, width), act);
            }
            bands_done.wait(parts);
            if (n != 0 && width > 0) dh0.block(0, c0, n, width).noalias() = dz.middleRows(o, n) * w_hh.middleCols(c0, width);
        }
    });

    rows_product(dw_ih, dz.transpose(), x, true);
    rows_product(dx, dz, w_ih, true);
    if (db_ih.size() != 0) {
        RowVector<T> db = dz.colwise().sum();
        db_ih += db;
        db_hh += db;
    }
    if (T_ == 0) return;
    // dW_hh pairs each step's dz with the state before it: h0 where an item starts, hs elsewhere.
    if (steps.is_uniform()) {
        const Index B = steps.batch(), rest = (T_ - 1) * B;
        const Index first = reverse ? rest : 0;  // rows of the first step processed
        if (h0.rows() != 0) dw_hh.noalias() += dz.middleRows(first, B).transpose() * h0;
        if (rest > 0) {
            if (reverse) {
                rows_product(dw_hh, dz.topRows(rest).transpose(), hs.bottomRows(rest), true);
            } else {
                rows_product(dw_hh, dz.bottomRows(rest).transpose(), hs.topRows(rest), true);
            }
        }
        return;
    }
    // Packed: gather the previous states into one matrix, so dW_hh is still a single product.
    RowMatrix<T> h_prev(steps.rows(), H);
    for (Index t = 0; t < T_; ++t) {
        const Index n = steps.size(t), o = steps.offset(t);
        const Index prev = reverse ? t + 1 : t - 1;
        const Index cont = std::min(n, steps.size_or_zero(prev));
        if (cont > 0) h_prev.middleRows(o, cont) = hs.middleRows(steps.offset(prev), cont);
        if (cont < n) {
            if (h0.rows() != 0) {
                h_prev.middleRows(o + cont, n - cont) = h0.middleRows(cont, n - cont);
            } else {
                h_prev.middleRows(o + cont, n - cont).setZero();
            }
        }
    }
    rows_product(dw_hh, dz.transpose(), h_prev, true);
}

#define RNNFAST_INSTANTIATE(T)                                                                                  \
    template void cell_forward<T>(const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&,   \
                                  const ConstMatrixRef<T>&, const ConstVectorRef<T>&, const ConstVectorRef<T>&,   \
                                  Activation, MatrixRef<T>);                                                     \
    template void cell_backward<T>(const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&,  \
                                   const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&,  \
                                   Activation, MatrixRef<T>, MatrixRef<T>, MatrixRef<T>, MatrixRef<T>,            \
                                   VectorRef<T>, VectorRef<T>);                                                  \
    template void layer_forward<T>(const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&,  \
                                   const ConstMatrixRef<T>&, const ConstVectorRef<T>&, const ConstVectorRef<T>&,  \
                                   Activation, bool, const StepLayout&, MatrixRef<T>);                           \
    template void layer_backward<T>(const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, \
                                    const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, \
                                    const ConstMatrixRef<T>&, Activation, bool, const StepLayout&, MatrixRef<T>,  \
                                    MatrixRef<T>, MatrixRef<T>, MatrixRef<T>, VectorRef<T>, VectorRef<T>,         \
                                    MatrixRef<T>);

RNNFAST_INSTANTIATE(float)
RNNFAST_INSTANTIATE(double)
#undef RNNFAST_INSTANTIATE

}  // namespace rnnfast

namespace rnnfast {

StepLayout StepLayout::uniform(Index seq_len, Index batch) {
    if (seq_len < 0 || batch < 0) throw std::invalid_argument("StepLayout: negative size");
    return packed(std::vector<Index>(static_cast<size_t>(seq_len), batch));
}

StepLayout StepLayout::packed(std::vector<Index> sizes) {
    StepLayout layout;
    layout.offsets_.resize(sizes.size());
    Index offset = 0;
    for (size_t t = 0; t < sizes.size(); ++t) {
        if (sizes[t] < 0 || (t > 0 && sizes[t] > sizes[t - 1])) {
            throw std::invalid_argument("StepLayout: step sizes must be non-negative and non-increasing");
        }
        layout.uniform_ = layout.uniform_ && sizes[t] == sizes[0];
        layout.offsets_[t] = offset;
        offset += sizes[t];
    }
    layout.rows_ = offset;
    layout.sizes_ = std::move(sizes);
    return layout;
}

}  // namespace rnnfast
