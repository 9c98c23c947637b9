// Elman (vanilla) RNN kernels: one cell step and one layer over a whole sequence in one direction.
//
//   h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh),   act = tanh or relu
//
// Shapes: B batch, I input size, H hidden size, T sequence length. Sequences are [T*B, F] row-major
// matrices with time-major rows (row t*B + b). A bias argument of size 0 means "no bias". Backward
// kernels add (+=) into weight and bias gradients, which the caller zeroes explicitly.
#pragma once

#include "rnnfast/steps.hpp"
#include "rnnfast/types.hpp"

namespace rnnfast {

// One step.
//   x     [B, I]     input
//   h     [B, H]     previous state; 0 rows means zeros
//   w_ih  [H, I], w_hh [H, H], b_ih [H] / b_hh [H] (or size 0)
//   h_new [B, H]     out
template <class T>
void cell_forward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h, const ConstMatrixRef<T>& w_ih,
                  const ConstMatrixRef<T>& w_hh, const ConstVectorRef<T>& b_ih, const ConstVectorRef<T>& b_hh,
                  Activation act, MatrixRef<T> h_new);

// Gradient of one step.
//   x, h, h_new        as in cell_forward (h may have 0 rows: it was zeros)
//   dh_new [B, H]      gradient of the loss with respect to h_new
//   dx     [B, I]      out (=)
//   dh     [B, H]      out (=); may have 0 rows when not wanted
//   dw_ih [H, I], dw_hh [H, H], db_ih [H], db_hh [H]   accumulated (+=); biases may have size 0
template <class T>
void cell_backward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h, const ConstMatrixRef<T>& w_ih,
                   const ConstMatrixRef<T>& w_hh, const ConstMatrixRef<T>& h_new, const ConstMatrixRef<T>& dh_new,
                   Activation act, MatrixRef<T> dx, MatrixRef<T> dh, MatrixRef<T> dw_ih, MatrixRef<T> dw_hh,
                   VectorRef<T> db_ih, VectorRef<T> db_hh);

// One direction of one layer over a sequence. The reverse direction runs t = T-1 .. 0 and stores the state
// it reaches at step t in step t's rows, like the forward one. With a packed layout, an item enters the reverse
// direction at its own last step, from its row of h0.
//   x     [rows, I]  layer input, laid out by `steps`
//   h0    [B, H]     initial state; 0 rows means zeros
//   w_ih [H, I], w_hh [H, H], b_ih [H] / b_hh [H] (or size 0)
//   hs    [rows, H]  out: the state after every step (may be a column block of a wider matrix)
template <class T>
void layer_forward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& w_ih,
                   const ConstMatrixRef<T>& w_hh, const ConstVectorRef<T>& b_ih, const ConstVectorRef<T>& b_hh,
                   Activation act, bool reverse, const StepLayout& steps, MatrixRef<T> hs);

// The same over a uniform [T*B, F] layout.
template <class T>
void layer_forward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& w_ih,
                   const ConstMatrixRef<T>& w_hh, const ConstVectorRef<T>& b_ih, const ConstVectorRef<T>& b_hh,
                   Activation act, bool reverse, Index seq_len, MatrixRef<T> hs) {
    layer_forward<T>(x, h0, w_ih, w_hh, b_ih, b_hh, act, reverse,
                     StepLayout::uniform(seq_len, seq_len > 0 ? hs.rows() / seq_len : 0), hs);
}

// BPTT for one direction of one layer. Only the hidden-gradient recurrence is sequential; the weight, bias
// and input gradients are products over many rows. The recurrence runs in chunks of whole steps that fit in dz,
// each followed by its chunk's products: dz bounds the memory, and a chunk of a few thousand rows keeps the
// products as fast as one over all rows.
//   x, h0, hs, w_ih, w_hh  as in layer_forward (hs is the forward's output)
//   dhs    [rows, H]  gradient flowing into hs from above; 0 rows means none
//   dh_n   [B, H]     gradient of each item's final state; 0 rows means none
//   dx     [rows, I]  accumulated (+=), so the two directions of a layer can share it; 0 rows: not computed
//   dh0    [B, H]     out (=): gradient of the initial state
//   dw_ih, dw_hh, db_ih, db_hh   accumulated (+=)
//   dz     [C, H]     workspace for the pre-activation gradients of a chunk, C >= the largest step's rows
//                     (steps.size(0)); C = rows does it in one chunk
template <class T>
void layer_backward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& w_ih,
                    const ConstMatrixRef<T>& w_hh, const ConstMatrixRef<T>& hs, const ConstMatrixRef<T>& dhs,
                    const ConstMatrixRef<T>& dh_n, Activation act, bool reverse, const StepLayout& steps,
                    MatrixRef<T> dx, MatrixRef<T> dh0, MatrixRef<T> dw_ih, MatrixRef<T> dw_hh, VectorRef<T> db_ih,
                    VectorRef<T> db_hh, MatrixRef<T> dz);

// The same over a uniform [T*B, F] layout; seq_len must be positive.
template <class T>
void layer_backward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& w_ih,
                    const ConstMatrixRef<T>& w_hh, const ConstMatrixRef<T>& hs, const ConstMatrixRef<T>& dhs,
                    const ConstMatrixRef<T>& dh_n, Activation act, bool reverse, Index seq_len, MatrixRef<T> dx,
                    MatrixRef<T> dh0, MatrixRef<T> dw_ih, MatrixRef<T> dw_hh, VectorRef<T> db_ih,
                    VectorRef<T> db_hh, MatrixRef<T> dz) {
    if (seq_len <= 0) throw std::invalid_argument("seq_len: expected a positive integer, got " + std::to_string(seq_len));
    layer_backward<T>(x, h0, w_ih, w_hh, hs, dhs, dh_n, act, reverse, StepLayout::uniform(seq_len, hs.rows() / seq_len),
                      dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dz);
}

}  // namespace rnnfast
