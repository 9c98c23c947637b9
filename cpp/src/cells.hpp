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
#include "partial_packet.hpp"
#include "rnnfast/types.hpp"

namespace rnnfast::detail {

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

// Units [u, u + n) of one row, n at most a packet: loads and stores of whole packets, and for a row's last,
// partial packet partial_load / partial_store. Gate math written over these gives every unit the same bits
// wherever it falls (a packet, a row's tail, a thread's band), in one pass over the row.
template <class T>
struct Lanes {
    using Packet = typename Eigen::internal::packet_traits<T>::type;
    static constexpr Index P = Eigen::internal::unpacket_traits<Packet>::size;
    Index n;

    Packet load(const T* p) const {
        if (n == P) return Eigen::internal::ploadu<Packet>(p);
        return partial_load(p, n, static_cast<const Packet*>(nullptr));
    }
    void store(T* p, const Packet& v) const {
        if (n == P) {
            Eigen::internal::pstoreu(p, v);
            return;
        }
        partial_store(p, v, n);
    }
};

// body(lanes, r, u) for each row r in [0, m) and each packet of units starting at u in [0, w). Rows that end in a
// partial packet go a packet of every row at a time: a row's partial packet, loaded right after the row's packet
// before it was stored in place, overlaps that store's 64 bytes, and a masked load waits for such a store to retire
// (no store forwarding), which chained each packet's gate math to the one before (GRU T10 B3 H20 inference 1.11x).
template <class T, class Body>
void for_each_packet(Index m, Index w, Body&& body) {
    constexpr Index P = Lanes<T>::P;
    const Index packets = (w + P - 1) / P;
    const bool by_packet = w % P != 0 && m > 1;
    const Index outer = by_packet ? packets : m, inner = by_packet ? m : packets;
    for (Index i = 0; i < outer; ++i) {
        for (Index j = 0; j < inner; ++j) {
            const Index r = by_packet ? j : i, u = (by_packet ? i : j) * P;
            body(Lanes<T>{std::min(P, w - u)}, r, u);
        }
    }
}

// v <- tanh(v) over n contiguous values, a packet at a time (the last one partial: for a few rows of a small layer,
// 20 states, one-element packets for the 4 left over would dominate).
template <class T>
void tanh_span(T* v, Index n) {
    constexpr Index P = Lanes<T>::P;
    for (Index u = 0; u < n; u += P) {
        const Lanes<T> l{std::min(P, n - u)};
        l.store(v + u, TanhOp<T>::packet(l.load(v + u)));
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
        using namespace Eigen::internal;
        const Index H = b.H;
        for_each_packet<T>(b.m, b.w, [&](const Lanes<T>& l, Index r, Index u) {
            T* z = b.gates + r * b.gates_ld + u;
            const auto i = LogisticOp<T>::packet(l.load(z)), f = LogisticOp<T>::packet(l.load(z + H));
            const auto g = TanhOp<T>::packet(l.load(z + 2 * H)), o = LogisticOp<T>::packet(l.load(z + 3 * H));
            l.store(z, i);
            l.store(z + H, f);
            l.store(z + 2 * H, g);
            l.store(z + 3 * H, o);
            auto c = pmul(i, g);
            if (b.c_prev != nullptr) c = padd(pmul(f, l.load(b.c_prev + r * b.c_prev_ld + u)), c);
            l.store(b.aux + r * b.aux_ld + u, c);
            l.store(b.h + r * b.h_ld + u, pmul(o, TanhOp<T>::packet(c)));
        });
    }

    template <class T>
    static void backward(const BackwardBlock<T>& b) {
        using namespace Eigen::internal;
        using Packet = typename Lanes<T>::Packet;
        const Index H = b.H;
        const Packet one = pset1<Packet>(T(1));
        for_each_packet<T>(b.m, b.w, [&](const Lanes<T>& l, Index r, Index u) {
            const T* z = b.gates + r * b.gates_ld + u;
            const Packet i = l.load(z), f = l.load(z + H), g = l.load(z + 2 * H), o = l.load(z + 3 * H);
            const Packet tc = TanhOp<T>::packet(l.load(b.aux + r * b.aux_ld + u));
            T* dh_p = b.dh + r * b.dh_ld + u;
            T* dc_p = b.dc + r * b.dc_ld + u;
            T* dz = b.dz + r * b.dz_ld + u;
            const Packet dh = l.load(dh_p);
            const Packet dc = padd(l.load(dc_p), pmul(pmul(dh, o), psub(one, pmul(tc, tc))));
            l.store(dz + 3 * H, pmul(pmul(pmul(dh, tc), o), psub(one, o)));
            l.store(dz, pmul(pmul(pmul(dc, g), i), psub(one, i)));
            l.store(dz + 2 * H, pmul(pmul(dc, i), psub(one, pmul(g, g))));
            const Packet df = b.c_prev != nullptr
                                  ? pmul(pmul(pmul(dc, l.load(b.c_prev + r * b.c_prev_ld + u)), f), psub(one, f))
                                  : pset1<Packet>(T(0));
            l.store(dz + H, df);
            l.store(dc_p, pmul(dc, f));
            l.store(dh_p, pset1<Packet>(T(0)));
        });
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
        using namespace Eigen::internal;
        const Index H = b.H;
        for_each_packet<T>(b.m, b.w, [&](const Lanes<T>& l, Index row, Index u) {
            T* gz = b.gates + row * b.gates_ld + u;
            const T* hz = b.hidden + row * b.hidden_ld + u;
            const auto r = LogisticOp<T>::packet(padd(l.load(gz), l.load(hz)));
            const auto z = LogisticOp<T>::packet(padd(l.load(gz + H), l.load(hz + H)));
            const auto hn = l.load(hz + 2 * H);
            const auto n = TanhOp<T>::packet(padd(l.load(gz + 2 * H), pmul(r, hn)));
            l.store(gz, r);
            l.store(gz + H, z);
            l.store(gz + 2 * H, n);
            l.store(b.aux + row * b.aux_ld + u, hn);
            auto h = pmul(psub(pset1<typename Lanes<T>::Packet>(T(1)), z), n);
            if (b.h_prev != nullptr) h = padd(h, pmul(z, l.load(b.h_prev + row * b.h_prev_ld + u)));
            l.store(b.h + row * b.h_ld + u, h);
        });
    }

    template <class T>
    static void backward(const BackwardBlock<T>& b) {
        using namespace Eigen::internal;
        using Packet = typename Lanes<T>::Packet;
        const Index H = b.H;
        const Packet one = pset1<Packet>(T(1));
        for_each_packet<T>(b.m, b.w, [&](const Lanes<T>& l, Index row, Index u) {
            const T* gz = b.gates + row * b.gates_ld + u;
            const Packet r = l.load(gz), z = l.load(gz + H), n = l.load(gz + 2 * H);
            const Packet hn = l.load(b.aux + row * b.aux_ld + u);
            T* dh_p = b.dh + row * b.dh_ld + u;
            T* dz = b.dz + row * b.dz_ld + u;
            T* dzh = b.dzh + row * b.dzh_ld + u;
            const Packet dh = l.load(dh_p);
            const Packet dn = pmul(pmul(dh, psub(one, z)), psub(one, pmul(n, n)));
            const Packet h_minus_n = b.h_prev != nullptr ? psub(l.load(b.h_prev + row * b.h_prev_ld + u), n) : pnegate(n);
            const Packet dzz = pmul(pmul(pmul(dh, h_minus_n), z), psub(one, z));
            const Packet dzr = pmul(pmul(pmul(dn, hn), r), psub(one, r));
            l.store(dz + 2 * H, dn);
            l.store(dz + H, dzz);
            l.store(dz, dzr);
            l.store(dzh, dzr);
            l.store(dzh + H, dzz);
            l.store(dzh + 2 * H, pmul(dn, r));
            l.store(dh_p, pmul(dh, z));
        });
    }
};

}  // namespace rnnfast::detail
