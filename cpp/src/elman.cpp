#include "rnnfast/elman.hpp"

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
                   Activation act, bool reverse, Index seq_len, MatrixRef<T> hs) {
    const Index B = hs.rows() / (seq_len > 0 ? seq_len : 1);
    // Input projection of every step at once; the recurrence then only adds h_{t-1} W_hh^T.
    hs.noalias() = x * w_ih.transpose();
    if (b_ih.size() != 0) hs.rowwise() += b_ih + b_hh;
    for (Index s = 0; s < seq_len; ++s) {
        const Index t = reverse ? seq_len - 1 - s : s;
        const Index prev = reverse ? t + 1 : t - 1;
        if (s == 0) {
            if (h0.rows() != 0) hs.middleRows(t * B, B).noalias() += h0 * w_hh.transpose();
        } else {
            hs.middleRows(t * B, B).noalias() += hs.middleRows(prev * B, B) * w_hh.transpose();
        }
        activate<T>(hs.middleRows(t * B, B), act);
    }
}

template <class T>
void layer_backward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& w_ih,
                    const ConstMatrixRef<T>& w_hh, const ConstMatrixRef<T>& hs, const ConstMatrixRef<T>& dhs,
                    const ConstMatrixRef<T>& dh_n, Activation act, bool reverse, Index seq_len, MatrixRef<T> dx,
                    MatrixRef<T> dh0, MatrixRef<T> dw_ih, MatrixRef<T> dw_hh, VectorRef<T> db_ih,
                    VectorRef<T> db_hh, MatrixRef<T> dz) {
    if (seq_len <= 0) throw std::invalid_argument("layer_backward: seq_len must be positive");
    const Index B = hs.rows() / seq_len;
    // dh0 carries dL/dh_{t-1} backwards through time and ends as dL/dh0.
    if (dh_n.rows() != 0) {
        dh0 = dh_n;
    } else {
        dh0.setZero();
    }
    for (Index s = seq_len - 1; s >= 0; --s) {
        const Index t = reverse ? seq_len - 1 - s : s;
        if (dhs.rows() != 0) {
            dz.middleRows(t * B, B) = dh0 + dhs.middleRows(t * B, B);
        } else {
            dz.middleRows(t * B, B) = dh0;
        }
        multiply_by_derivative<T>(dz.middleRows(t * B, B), hs.middleRows(t * B, B), act);
        dh0.noalias() = dz.middleRows(t * B, B) * w_hh;
    }

    dw_ih.noalias() += dz.transpose() * x;
    dx.noalias() += dz * w_ih;
    if (db_ih.size() != 0) {
        RowVector<T> db = dz.colwise().sum();
        db_ih += db;
        db_hh += db;
    }
    // dW_hh pairs each step's dz with the state before it: h0 for the first step processed, hs otherwise.
    const Index rest = (seq_len - 1) * B;
    const Index first = reverse ? rest : 0;  // row block of the first step processed
    if (h0.rows() != 0) dw_hh.noalias() += dz.middleRows(first, B).transpose() * h0;
    if (rest > 0) {
        if (reverse) {
            dw_hh.noalias() += dz.topRows(rest).transpose() * hs.bottomRows(rest);
        } else {
            dw_hh.noalias() += dz.bottomRows(rest).transpose() * hs.topRows(rest);
        }
    }
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
                                   Activation, bool, Index, MatrixRef<T>);                                       \
    template void layer_backward<T>(const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, \
                                    const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, \
                                    const ConstMatrixRef<T>&, Activation, bool, Index, MatrixRef<T>,             \
                                    MatrixRef<T>, MatrixRef<T>, MatrixRef<T>, VectorRef<T>, VectorRef<T>,         \
                                    MatrixRef<T>);

RNNFAST_INSTANTIATE(float)
RNNFAST_INSTANTIATE(double)
#undef RNNFAST_INSTANTIATE

}  // namespace rnnfast
