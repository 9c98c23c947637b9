#include "rnnfast/elman.hpp"

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

// dz <- dz * act'(h), where h = act(z) is the saved output (tanh' = 1 - h^2, relu' = [h > 0]).
template <class T, class Z, class H>
void multiply_by_derivative(Z&& dz, const H& h, Activation act) {
    if (act == Activation::tanh) {
        dz.array() *= T(1) - h.array().square();
    } else {
        dz = (h.array() > T(0)).select(dz.array(), T(0)).matrix();
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

template <class T>
void layer_forward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& w_ih,
                   const ConstMatrixRef<T>& w_hh, const ConstVectorRef<T>& b_ih, const ConstVectorRef<T>& b_hh,
                   Activation act, bool reverse, const StepLayout& steps, MatrixRef<T> hs) {
    const Index T_ = steps.seq_len();
    // Input projection of every step at once; the recurrence then only adds h_{t-1} W_hh^T.
    hs.noalias() = x * w_ih.transpose();
    if (b_ih.size() != 0) hs.rowwise() += b_ih + b_hh;
    for (Index s = 0; s < T_; ++s) {
        const Index t = reverse ? T_ - 1 - s : s;
        const Index n = steps.size(t);
        if (n == 0) continue;
        // Items continuing from the step processed before; the others start here from h0.
        const Index prev = reverse ? t + 1 : t - 1;
        const Index cont = std::min(n, steps.size_or_zero(prev));
        if (cont > 0) {
            hs.middleRows(steps.offset(t), cont).noalias() +=
                hs.middleRows(steps.offset(prev), cont) * w_hh.transpose();
        }
        if (cont < n && h0.rows() != 0) {
            hs.middleRows(steps.offset(t) + cont, n - cont).noalias() +=
                h0.middleRows(cont, n - cont) * w_hh.transpose();
        }
        activate<T>(hs.middleRows(steps.offset(t), n), act);
    }
}

template <class T>
void layer_backward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& w_ih,
                    const ConstMatrixRef<T>& w_hh, const ConstMatrixRef<T>& hs, const ConstMatrixRef<T>& dhs,
                    const ConstMatrixRef<T>& dh_n, Activation act, bool reverse, const StepLayout& steps,
                    MatrixRef<T> dx, MatrixRef<T> dh0, MatrixRef<T> dw_ih, MatrixRef<T> dw_hh, VectorRef<T> db_ih,
                    VectorRef<T> db_hh, MatrixRef<T> dz) {
    const Index T_ = steps.seq_len();
    // dh0 carries dL/dh_{t-1} backwards through time. An item's row is written for the last time at its first
    // processed step, so it ends as dL/dh0; rows of items that have not started yet still hold their dh_n.
    if (dh_n.rows() != 0) {
        dh0 = dh_n;
    } else {
        dh0.setZero();
    }
    for (Index s = T_ - 1; s >= 0; --s) {
        const Index t = reverse ? T_ - 1 - s : s;
        const Index n = steps.size(t), o = steps.offset(t);
        if (n == 0) continue;
        if (dhs.rows() != 0) {
            dz.middleRows(o, n) = dh0.topRows(n) + dhs.middleRows(o, n);
        } else {
            dz.middleRows(o, n) = dh0.topRows(n);
        }
        multiply_by_derivative<T>(dz.middleRows(o, n), hs.middleRows(o, n), act);
        dh0.topRows(n).noalias() = dz.middleRows(o, n) * w_hh;
    }

    dw_ih.noalias() += dz.transpose() * x;
    dx.noalias() += dz * w_ih;
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
                dw_hh.noalias() += dz.topRows(rest).transpose() * hs.bottomRows(rest);
            } else {
                dw_hh.noalias() += dz.bottomRows(rest).transpose() * hs.topRows(rest);
            }
        }
        return;
    }
    // Packed: gather the previous states into one matrix, so dW_hh is still a single product.
    RowMatrix<T> h_prev(steps.rows(), hs.cols());
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
    dw_hh.noalias() += dz.transpose() * h_prev;
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
