// The cell kinds, as policies of the one recurrent driver (recurrent.hpp): each gives its gate count G and its
// elementwise math over a block of rows and state units, forward and backward. Everything else -- the products
// with W_ih and W_hh, threads, time order, packing of ragged batches, BPTT chunks, the weight gradients -- is the
// driver's and the same for every kind.
//
// Gates are stored as PyTorch stores their weight blocks: a row of the gate buffer is [G*H], gate g's unit u at
// column g*H + u. A block covers rows [0, m) and units [c0, c0 + w); its pointers point at row 0, unit c0 of gate 0.
#pragma once

#include <Eigen/Core>

#include <algorithm>

#include "activations.hpp"
#include "rnnfast/types.hpp"

namespace rnnfast::detail {

template <class T>
using BlockMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0, Eigen::OuterStride<>>;
template <class T>
using ConstBlockMap =
    Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0, Eigen::OuterStride<>>;

// What a cell's forward sees of one block of one step.
template <class T>
struct ForwardBlock {
    Index m = 0, w = 0, H = 0;     // rows, units, hidden size
    Activation act = Activation::tanh;  // Elman's
    T* gates = nullptr;            // [m, G*H]: the pre-activations (input part, and the recurrent part unless the
    Index gates_ld = 0;            //   cell keeps it apart); out: the activated gates, which backward reads
    const T* hidden = nullptr;     // cells with kSeparateHidden: h W_hh^T + b_hh, laid out like gates
    Index hidden_ld = 0;
    const T* h_prev = nullptr;     // [m, w] the state before the step at unit c0, null for zeros
    Index h_prev_ld = 0;
    const T* c_prev = nullptr;     // LSTM: [m, w] the cell state before the step, null for zeros
    Index c_prev_ld = 0;
    T* h = nullptr;                // out [m, w]: the new state (LSTM with a projection: o * tanh(c), projected later)
    Index h_ld = 0;
    T* aux = nullptr;              // out [m, w]: what the cell keeps beside its gates (LSTM c, GRU W_hn h + b_hn)
    Index aux_ld = 0;
};

// What a cell's backward sees of one block of one step.
template <class T>
struct BackwardBlock {
    Index m = 0, w = 0, H = 0;
    Activation act = Activation::tanh;
    const T* gates = nullptr;      // the activated gates forward kept
    Index gates_ld = 0;
    const T* aux = nullptr;        // and its aux
    Index aux_ld = 0;
    const T* h = nullptr;          // [m, w] the state the step made (Elman: its derivative is written in it)
    Index h_ld = 0;
    const T* h_prev = nullptr;     // as in ForwardBlock
    Index h_prev_ld = 0;
    const T* c_prev = nullptr;
    Index c_prev_ld = 0;
    T* dh = nullptr;               // [m, w] in: dL/dh of the step (dL/d(o * tanh c) with a projection);
    Index dh_ld = 0;               //   out: the part of dL/dh_prev that bypasses W_hh (GRU: dh * z), else zero
    T* dc = nullptr;               // LSTM [m, w]: in dL/dc of the step, out dL/dc_prev
    Index dc_ld = 0;
    T* dz = nullptr;               // out [m, G*H]: dL/d(pre-activation), the input part (W_ih, b_ih, x)
    Index dz_ld = 0;
    T* dzh = nullptr;              // out, cells with kSeparateHidden: the recurrent part (W_hh, b_hh, h_prev)
    Index dzh_ld = 0;
};

template <class T>
BlockMap<T> block(T* p, Index rows, Index cols, Index ld) {
    return BlockMap<T>(p, rows, cols, Eigen::OuterStride<>(ld));
}
template <class T>
ConstBlockMap<T> block(const T* p, Index rows, Index cols, Index ld) {
    return ConstBlockMap<T>(p, rows, cols, Eigen::OuterStride<>(ld));
}

// v <- tanh(v) over n contiguous values. A span's tail would go through whole packets one scalar at a time; for a
// few rows of a small layer (20 states: one 16-wide packet and 4 scalars) those would dominate, so the tail goes
// through one packet-sized buffer instead.
template <class T>
void tanh_span(T* v, Index n) {
    constexpr Index P = Eigen::internal::packet_traits<T>::size;
    const Index head = n / P * P;
    Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> body(v, head);
    body = body.unaryExpr(TanhOp<T>());
    if (head < n) {
        Eigen::Array<T, P, 1> tail = Eigen::Array<T, P, 1>::Zero();
        std::copy(v + head, v + n, tail.data());
        tail = tail.unaryExpr(TanhOp<T>());
        std::copy(tail.data(), tail.data() + (n - head), v + head);
    }
}

// z <- act(z), in place.
template <class T, class Z>
void activate(Z&& z, Activation act) {
    if (act == Activation::tanh) {
        if (z.outerStride() == z.cols()) {  // whole rows: one span
            tanh_span<T>(z.data(), z.rows() * z.cols());
        } else {
            for (Index r = 0; r < z.rows(); ++r) tanh_span<T>(&z.coeffRef(r, 0), z.cols());
        }
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

// Elman: h = act(z). One gate, activated in place in the state itself (the gate buffer is the output).
struct ElmanCell {
    static constexpr int kGates = 1;
    static constexpr bool kInPlace = true;         // gates and state are one buffer
    static constexpr bool kAux = false;
    static constexpr bool kSeparateHidden = false;
    static constexpr bool kDirectCarry = false;

    template <class T>
    static void forward(const ForwardBlock<T>& b) {
        activate<T>(MatrixMap<T>(b.h, b.m, b.w, Eigen::OuterStride<>(b.h_ld)), b.act);
    }

    template <class T>
    static void backward(const BackwardBlock<T>& b) {
        MatrixMap<T> dz(b.dz, b.m, b.w, Eigen::OuterStride<>(b.dz_ld));
        MatrixMap<T> dh(b.dh, b.m, b.w, Eigen::OuterStride<>(b.dh_ld));
        dz = dh;
        multiply_by_derivative<T>(dz, ConstMatrixMap<T>(b.h, b.m, b.w, Eigen::OuterStride<>(b.h_ld)), b.act);
        dh.setZero();
    }
};

// LSTM: i, f, g, o = sigma, sigma, tanh, sigma of the gates; c = f * c_prev + i * g; h = o * tanh(c).
struct LstmCell {
    static constexpr int kGates = 4;
    static constexpr bool kInPlace = false;
    static constexpr bool kAux = true;             // c
    static constexpr bool kSeparateHidden = false;
    static constexpr bool kDirectCarry = false;

    template <class T>
    static void forward(const ForwardBlock<T>& b) {
        const Index m = b.m, w = b.w, H = b.H;
        BlockMap<T> i = block(b.gates, m, w, b.gates_ld), f = block(b.gates + H, m, w, b.gates_ld);
        BlockMap<T> g = block(b.gates + 2 * H, m, w, b.gates_ld), o = block(b.gates + 3 * H, m, w, b.gates_ld);
        i = i.unaryExpr(LogisticOp<T>());
        f = f.unaryExpr(LogisticOp<T>());
        g = g.unaryExpr(TanhOp<T>());
        o = o.unaryExpr(LogisticOp<T>());
        BlockMap<T> c = block(b.aux, m, w, b.aux_ld);
        if (b.c_prev != nullptr) {
            c = f * block(b.c_prev, m, w, b.c_prev_ld) + i * g;
        } else {
            c = i * g;
        }
        block(b.h, m, w, b.h_ld) = o * c.unaryExpr(TanhOp<T>());
    }

    template <class T>
    static void backward(const BackwardBlock<T>& b) {
        const Index m = b.m, w = b.w, H = b.H;
        ConstBlockMap<T> i = block(b.gates, m, w, b.gates_ld), f = block(b.gates + H, m, w, b.gates_ld);
        ConstBlockMap<T> g = block(b.gates + 2 * H, m, w, b.gates_ld), o = block(b.gates + 3 * H, m, w, b.gates_ld);
        const Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> tc = block(b.aux, m, w, b.aux_ld).unaryExpr(TanhOp<T>());
        BlockMap<T> dh = block(b.dh, m, w, b.dh_ld), dc = block(b.dc, m, w, b.dc_ld);
        dc += dh * o * (T(1) - tc.square());
        block(b.dz + 3 * H, m, w, b.dz_ld) = dh * tc * o * (T(1) - o);
        block(b.dz, m, w, b.dz_ld) = dc * g * i * (T(1) - i);
        block(b.dz + 2 * H, m, w, b.dz_ld) = dc * i * (T(1) - g.square());
        if (b.c_prev != nullptr) {
            block(b.dz + H, m, w, b.dz_ld) = dc * block(b.c_prev, m, w, b.c_prev_ld) * f * (T(1) - f);
        } else {
            block(b.dz + H, m, w, b.dz_ld).setZero();
        }
        dc *= f;
        dh.setZero();
    }
};

// GRU: r, z = sigma(x part + h part), n = tanh(x part + r * (W_hn h + b_hn)), h = (1 - z) * n + z * h_prev. The
// recurrent part is kept apart from the input part (r multiplies only it), and W_hn h + b_hn is saved.
struct GruCell {
    static constexpr int kGates = 3;
    static constexpr bool kInPlace = false;
    static constexpr bool kAux = true;             // W_hn h + b_hn
    static constexpr bool kSeparateHidden = true;
    static constexpr bool kDirectCarry = true;     // dL/dh_prev has a term z * dh that bypasses W_hh

    template <class T>
    static void forward(const ForwardBlock<T>& b) {
        const Index m = b.m, w = b.w, H = b.H;
        BlockMap<T> r = block(b.gates, m, w, b.gates_ld), z = block(b.gates + H, m, w, b.gates_ld);
        BlockMap<T> n = block(b.gates + 2 * H, m, w, b.gates_ld);
        r = (r + block(b.hidden, m, w, b.hidden_ld)).unaryExpr(LogisticOp<T>());
        z = (z + block(b.hidden + H, m, w, b.hidden_ld)).unaryExpr(LogisticOp<T>());
        BlockMap<T> hn = block(b.aux, m, w, b.aux_ld);
        hn = block(b.hidden + 2 * H, m, w, b.hidden_ld);
        n = (n + r * hn).unaryExpr(TanhOp<T>());
        if (b.h_prev != nullptr) {
            block(b.h, m, w, b.h_ld) = (T(1) - z) * n + z * block(b.h_prev, m, w, b.h_prev_ld);
        } else {
            block(b.h, m, w, b.h_ld) = (T(1) - z) * n;
        }
    }

    template <class T>
    static void backward(const BackwardBlock<T>& b) {
        const Index m = b.m, w = b.w, H = b.H;
        ConstBlockMap<T> r = block(b.gates, m, w, b.gates_ld), z = block(b.gates + H, m, w, b.gates_ld);
        ConstBlockMap<T> n = block(b.gates + 2 * H, m, w, b.gates_ld), hn = block(b.aux, m, w, b.aux_ld);
        BlockMap<T> dh = block(b.dh, m, w, b.dh_ld);
        BlockMap<T> dn = block(b.dz + 2 * H, m, w, b.dz_ld);  // d(pre-activation of n), the input part
        dn = dh * (T(1) - z) * (T(1) - n.square());
        if (b.h_prev != nullptr) {
            block(b.dz + H, m, w, b.dz_ld) = dh * (block(b.h_prev, m, w, b.h_prev_ld) - n) * z * (T(1) - z);
        } else {
            block(b.dz + H, m, w, b.dz_ld) = dh * (-n) * z * (T(1) - z);
        }
        block(b.dz, m, w, b.dz_ld) = dn * hn * r * (T(1) - r);
        block(b.dzh, m, w, b.dzh_ld) = block(b.dz, m, w, b.dz_ld);
        block(b.dzh + H, m, w, b.dzh_ld) = block(b.dz + H, m, w, b.dz_ld);
        block(b.dzh + 2 * H, m, w, b.dzh_ld) = dn * r;
        dh *= z;
    }
};

}  // namespace rnnfast::detail
