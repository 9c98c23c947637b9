// Layers, directions and stacking: composes the one-direction layer kernels into PyTorch's nn.RNN.
//
// Parameters live in one flat buffer, in PyTorch's order and shapes (param_layout). Hidden states of a layer
// are stored as one [T*B, D*H] matrix, forward direction in columns [0, H), reverse in [H, 2H), which is
// exactly the layer's output and the next layer's input. Dropout masks are supplied by the caller.
#pragma once

#include <string>
#include <vector>

#include "rnnfast/steps.hpp"
#include "rnnfast/types.hpp"

namespace rnnfast {

// The cell kinds: Elman (tanh or relu), LSTM (gates i, f, g, o) and GRU (gates r, z, n), as in torch.nn.
enum class CellKind { rnn, lstm, gru };

// Parses "rnn" / "lstm" / "gru"; anything else is std::invalid_argument.
CellKind parse_cell(const std::string& name);

struct StackConfig {
    Index input_size = 0;
    Index hidden_size = 0;
    Index num_layers = 1;
    bool bidirectional = false;
    bool bias = true;
    Activation activation = Activation::tanh;  // Elman's
    CellKind cell = CellKind::rnn;
    Index proj_size = 0;                       // LSTM only: the state h is projected to this size (0: none)

    Index directions() const { return bidirectional ? 2 : 1; }
    Index gates() const { return cell == CellKind::lstm ? 4 : cell == CellKind::gru ? 3 : 1; }
    // P: the size of the state h (and of each direction's output).
    Index state_size() const { return proj_size > 0 ? proj_size : hidden_size; }
    Index output_size() const { return directions() * state_size(); }
    Index layer_input_size(Index layer) const { return layer == 0 ? input_size : output_size(); }
    bool has_cell_state() const { return cell == CellKind::lstm; }
    // Throws std::invalid_argument on sizes <= 0, a projection outside (0, hidden_size) or on another kind than
    // LSTM, or a parameter count that overflows.
    void validate() const;
};

// One parameter's place in the flat buffer; cols == 0 marks a vector of `rows` entries.
struct ParamSpec {
    std::string name;
    Index offset;
    Index rows;
    Index cols;
    Index size() const { return cols == 0 ? rows : rows * cols; }
};

// PyTorch's order: weight_ih_l{k}{sfx} [G*H, in], weight_hh_l{k}{sfx} [G*H, P], bias_ih_l{k}{sfx} [G*H],
// bias_hh_l{k}{sfx} [G*H], and with a projection weight_hr_l{k}{sfx} [P, H], for each layer k and direction sfx in
// ("", "_reverse").
std::vector<ParamSpec> param_layout(const StackConfig& cfg);
Index param_count(const StackConfig& cfg);

// How a batch of variable-length sequences is packed: items sorted by decreasing length (stable), step t
// holding the items still running. Full-length batches keep their own order and a uniform layout, so they are
// never copied.
struct Packing {
    Index seq_len = 0;
    Index batch = 0;
    StepLayout steps;
    std::vector<Index> order;    // order[j]: the item at sorted position j; empty when the batch is not packed
    std::vector<Index> lengths;  // lengths in sorted order

    bool is_packed() const { return !order.empty(); }
};

// lengths: [B] with 1 <= lengths[b] <= seq_len, or empty for full length (std::invalid_argument otherwise).
Packing make_packing(Index seq_len, Index batch, const std::vector<Index>& lengths);

// What backward needs from one forward. Rows are in the packed domain (see Packing): R = packing.steps.rows()
// rows, states sorted like the items. By default it owns copies, so callers may reuse their buffers. With
// `borrow` set before the forward of an unpacked batch, it instead refers to the caller's x and output (the last
// layer's states), which must then outlive the cache unchanged: a training step then holds no second copy of
// either. A cache passed to another forward is refilled in its own storage where the sizes match.
template <class T>
struct StackCache {
    bool borrow = false;
    Packing packing;
    RowMatrix<T> x;               // [R, I]       layer-0 input, unless borrowed
    RowMatrix<T> h0;              // [L*D*B, P]   initial states (zeros when none was given)
    RowMatrix<T> c0;              // [L*D*B, H]   LSTM: initial cell states (zeros when none was given)
    std::vector<RowMatrix<T>> ys;  // L x [R, D*P] hidden states of every layer, before dropout (the last one
                                  //               empty when borrowed)
    std::vector<RowMatrix<T>> gates;  // L x [R, D*G*H] activated gates (gated cells), direction d's at d*G*H
    std::vector<RowMatrix<T>> aux;    // L x [R, D*H] LSTM c, GRU W_hn h + b_hn
    RowMatrix<T> masks;           // [(L-1)*R, D*P] dropout masks, or 0 rows
    const T* x_data = nullptr;    // the borrowed x and last layer's states, with their row strides
    Index x_stride = 0;
    const T* top_data = nullptr;
    Index top_stride = 0;
    Index input_size = 0, output_size = 0;

    // Bytes of the matrices it holds (their storage, reused when it is passed to another forward).
    size_t storage_bytes() const {
        Index n = x.size() + h0.size() + c0.size() + masks.size();
        for (const auto* list : {&ys, &gates, &aux}) {
            for (const RowMatrix<T>& m : *list) n += m.size();
        }
        return static_cast<size_t>(n) * sizeof(T);
    }

    // [R, I]: layer 0's input
    ConstMatrixMap<T> input() const {
        return x_data != nullptr ? ConstMatrixMap<T>(x_data, packing.steps.rows(), input_size, Eigen::OuterStride<>(x_stride))
                                 : ConstMatrixMap<T>(x.data(), x.rows(), x.cols(), Eigen::OuterStride<>(x.cols()));
    }
    // [R, D*P]: the states of layer l
    ConstMatrixMap<T> states(Index l) const {
        const RowMatrix<T>& y = ys[static_cast<size_t>(l)];
        if (top_data != nullptr && l + 1 == static_cast<Index>(ys.size())) {
            return ConstMatrixMap<T>(top_data, packing.steps.rows(), output_size, Eigen::OuterStride<>(top_stride));
        }
        return ConstMatrixMap<T>(y.data(), y.rows(), y.cols(), Eigen::OuterStride<>(y.cols()));
    }
};

// Forward through every layer and direction. P is cfg.state_size().
//   params  flat buffer of param_count(cfg) values
//   x       [T*B, I] time-major
//   lengths [B] valid steps of each item (outputs past them are zero), or empty for full length
//   h0      [L*D*B, P], 0 rows means zeros;  c0 [L*D*B, H] (LSTM), 0 rows means zeros
//   masks   [(L-1)*T*B, D*P] multiplied into each layer's output but the last; 0 rows means no dropout
//   output  [T*B, D*P] out
//   h_n     [L*D*B, P] out: each item's state after its last valid step;  c_n [L*D*B, H] out (LSTM; else 0 rows)
//   cache   filled for stack_backward when not null (see StackCache::borrow)
template <class T>
void stack_forward(const StackConfig& cfg, const T* params, const ConstMatrixRef<T>& x, Index seq_len,
                   const std::vector<Index>& lengths, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& c0,
                   const ConstMatrixRef<T>& masks, MatrixRef<T> output, MatrixRef<T> h_n, MatrixRef<T> c_n,
                   StackCache<T>* cache);

// BPTT through every layer and direction.
//   d_output  [T*B, D*P], 0 rows means none;  d_h_n [L*D*B, P], 0 rows means none;  d_c_n [L*D*B, H] likewise
//   dx        [T*B, I] out (=), zero at padded steps, or 0 rows: not computed
//   dh0       [L*D*B, P] out (=);  dc0 [L*D*B, H] out (=) for LSTM (else 0 rows)
//   grads     flat buffer laid out like params, accumulated (+=)
template <class T>
void stack_backward(const StackConfig& cfg, const T* params, const StackCache<T>& cache,
                    const ConstMatrixRef<T>& d_output, const ConstMatrixRef<T>& d_h_n, const ConstMatrixRef<T>& d_c_n,
                    MatrixRef<T> dx, MatrixRef<T> dh0, MatrixRef<T> dc0, T* grads);

// The same for cells without a cell state (Elman, GRU): no c0, c_n, grad_c_n, dc0.
template <class T>
void stack_forward(const StackConfig& cfg, const T* params, const ConstMatrixRef<T>& x, Index seq_len,
                   const std::vector<Index>& lengths, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& masks,
                   MatrixRef<T> output, MatrixRef<T> h_n, StackCache<T>* cache) {
    RowMatrix<T> none(0, cfg.hidden_size);
    stack_forward<T>(cfg, params, x, seq_len, lengths, h0, none, masks, output, h_n, none, cache);
}

template <class T>
void stack_backward(const StackConfig& cfg, const T* params, const StackCache<T>& cache,
                    const ConstMatrixRef<T>& d_output, const ConstMatrixRef<T>& d_h_n, MatrixRef<T> dx,
                    MatrixRef<T> dh0, T* grads) {
    RowMatrix<T> none(0, cfg.hidden_size);
    stack_backward<T>(cfg, params, cache, d_output, d_h_n, none, dx, dh0, none, grads);
}

}  // namespace rnnfast
