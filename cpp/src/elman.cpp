#include "rnnfast/elman.hpp"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "recurrent.hpp"

namespace rnnfast {

using detail::activate;
using detail::multiply_by_derivative;
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

namespace detail {
RNNFAST_RECURRENT_CELL(, ElmanCell)
}  // namespace detail

// The Elman layer is the ElmanCell policy of the one recurrent driver (recurrent.hpp).
template <class T>
void layer_forward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& w_ih,
                   const ConstMatrixRef<T>& w_hh, const ConstVectorRef<T>& b_ih, const ConstVectorRef<T>& b_hh,
                   Activation act, bool reverse, const StepLayout& steps, MatrixRef<T> hs) {
    const RowMatrix<T> none(0, w_hh.cols());
    const detail::LayerWeights<T> wt{w_ih, w_hh, b_ih, b_hh, none};
    RowMatrix<T> unused(0, 0);
    detail::recurrent_forward<detail::ElmanCell, T>(wt, x, h0, none, act, reverse, steps, hs, unused, unused);
}

template <class T>
void layer_backward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& w_ih,
                    const ConstMatrixRef<T>& w_hh, const ConstMatrixRef<T>& hs, const ConstMatrixRef<T>& dhs,
                    const ConstMatrixRef<T>& dh_n, Activation act, bool reverse, const StepLayout& steps,
                    MatrixRef<T> dx, MatrixRef<T> dh0, MatrixRef<T> dw_ih, MatrixRef<T> dw_hh, VectorRef<T> db_ih,
                    VectorRef<T> db_hh, MatrixRef<T> dz) {
    const RowMatrix<T> none(0, w_hh.cols());
    const RowVector<T> no_bias(0);  // backward reads no bias
    RowMatrix<T> unused(0, 0), no_grad(0, 0);
    const detail::LayerWeights<T> wt{w_ih, w_hh, no_bias, no_bias, none};
    const detail::LayerGrads<T> grads{dw_ih, dw_hh, db_ih, db_hh, no_grad};
    detail::recurrent_backward<detail::ElmanCell, T>(wt, x, h0, none, hs, hs, none, dhs, dh_n, none, act, reverse,
                                                     steps, dx, dh0, unused, grads, dz, dz);
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
