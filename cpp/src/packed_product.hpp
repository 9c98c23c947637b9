// Products with a weight operand that every time step reuses: the weights are packed once per call into the panel
// layout of Eigen's GEMM kernel, so a step packs only its small state operand. A general product repacks both
// operands on every call, which for a layer's recurrence repacks W_hh once per step.
//
// Steps of only a few rows use a broadcast layout instead (BroadcastWeights); StepWeights picks.
//
// Built from Eigen 3.4's GEMM building blocks (Eigen::internal::gemm_pack_lhs, gemm_pack_rhs, gebp_kernel and its
// blocking heuristic), called in the order Eigen's own sequential product uses them.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <vector>

#include "rnnfast/types.hpp"

namespace rnnfast::detail {

// A [rows, depth] matrix A, packed. multiply_add computes res [n, rows] += x [n, depth] * A^T for row-major res
// and x, i.e. res^T += A * x^T in Eigen's column-major terms.
template <class T>
class PackedWeights {
public:
    // A(i, k) = data[i * stride + k] (RowMajor: rows of a weight matrix) or data[k * stride + i] (ColMajor:
    // columns of one). `max_n` bounds the row count n of the products, for the blocking and workspace sizes.
    template <int Order>
    void pack(const T* data, Index stride, Index rows, Index depth, Index max_n) {
        using Traits = Eigen::internal::gebp_traits<T, T>;
        using Mapper = Eigen::internal::const_blas_data_mapper<T, Index, Order>;
        Eigen::internal::gemm_pack_lhs<T, Index, Mapper, Traits::mr, Traits::LhsProgress,
                                       typename Traits::LhsPacket4Packing, Order>
            pack_lhs;
        source_ = data;
        rows_ = rows;
        depth_ = depth;
        kc_ = depth;
        mc_ = rows;
        Index nc = std::max<Index>(max_n, 1);
        Eigen::internal::computeProductBlockingSizes<T, T>(kc_, mc_, nc, Index(1));
        kc_ = std::max<Index>(kc_, 1);
        mc_ = std::max<Index>(mc_, 1);
        packed_.resize(static_cast<size_t>(rows * depth));
        block_b_.resize(static_cast<size_t>(kc_ * std::max<Index>(max_n, 1)));
        const Mapper a(data, stride);
        // Blocks in the order multiply_add reads them: depth blocks outside, row blocks inside.
        T* out = packed_.data();
        for (Index k2 = 0; k2 < depth; k2 += kc_) {
            const Index kc = std::min(kc_, depth - k2);
            for (Index i2 = 0; i2 < rows; i2 += mc_) {
                const Index mc = std::min(mc_, rows - i2);
                pack_lhs(out, a.getSubMapper(i2, k2), kc, mc);
                out += kc * mc;
            }
        }
    }

    // Whether it holds the `rows` rows starting at `data` (what pack was last given).
    bool holds(const T* data, Index rows) const { return source_ == data && rows_ == rows; }

    // res [n, rows] (row stride res_stride) += x [n, depth] (row stride x_stride) * A^T, n <= max_n.
    void multiply_add(const T* x, Index x_stride, Index n, T* res, Index res_stride) {
        using Traits = Eigen::internal::gebp_traits<T, T>;
        using RhsMapper = Eigen::internal::const_blas_data_mapper<T, Index, Eigen::ColMajor>;
        using ResMapper = Eigen::internal::blas_data_mapper<T, Index, Eigen::ColMajor, Eigen::Unaligned, 1>;
        Eigen::internal::gemm_pack_rhs<T, Index, RhsMapper, Traits::nr, Eigen::ColMajor> pack_rhs;
        Eigen::internal::gebp_kernel<T, T, Index, ResMapper, Traits::mr, Traits::nr> gebp;
        if (n == 0 || rows_ == 0 || depth_ == 0) return;
        const RhsMapper xt(x, x_stride);  // x^T: [depth, n] column-major
        const ResMapper out(res, res_stride);  // res^T: [rows, n] column-major
        const T* a = packed_.data();
        for (Index k2 = 0; k2 < depth_; k2 += kc_) {
            const Index kc = std::min(kc_, depth_ - k2);
            pack_rhs(block_b_.data(), xt.getSubMapper(k2, 0), kc, n);
            for (Index i2 = 0; i2 < rows_; i2 += mc_) {
                const Index mc = std::min(mc_, rows_ - i2);
                gebp(out.getSubMapper(i2, 0), a, block_b_.data(), mc, kc, n, T(1));
                a += kc * mc;
            }
        }
    }

private:
    const T* source_ = nullptr;
    Index rows_ = 0, depth_ = 0, kc_ = 1, mc_ = 1;
    std::vector<T, Eigen::aligned_allocator<T>> packed_;
    std::vector<T, Eigen::aligned_allocator<T>> block_b_;
};

// The same A laid out for steps of a few rows, where a GEMM's packing of x and its register blocking (built for
// many rows) cost more than the arithmetic: A^T is stored as [depth, ld] row-major with ld the row count rounded
// up to whole SIMD packets, and each row of res accumulates depth broadcast-multiply-adds of A^T's rows. No packing
// per call, no workspace.
template <class T>
class BroadcastWeights {
    using Packet = typename Eigen::internal::packet_traits<T>::type;
    static constexpr Index P = Eigen::internal::unpacket_traits<Packet>::size;

public:
    // A(i, k) as in PackedWeights::pack.
    template <int Order>
    void pack(const T* data, Index stride, Index rows, Index depth) {
        source_ = data;
        rows_ = rows;
        depth_ = depth;
        ld_ = (rows + P - 1) / P * P;
        at_.assign(static_cast<size_t>(depth * ld_), T(0));  // padding columns stay zero
        for (Index k = 0; k < depth; ++k) {
            T* row = at_.data() + k * ld_;
            for (Index i = 0; i < rows; ++i) row[i] = Order == Eigen::RowMajor ? data[i * stride + k] : data[k * stride + i];
        }
    }

    bool holds(const T* data, Index rows) const { return source_ == data && rows_ == rows; }

    // res [n, rows] (row stride res_stride) += x [n, depth] (row stride x_stride) * A^T.
    void multiply_add(const T* x, Index x_stride, Index n, T* res, Index res_stride) const {
        if (rows_ == 0 || depth_ == 0) return;
        Index r = 0;
        for (; r + 4 <= n; r += 4) row_group<4, 2>(x + r * x_stride, x_stride, res + r * res_stride, res_stride);
        switch (n - r) {
            case 3: row_group<3, 3>(x + r * x_stride, x_stride, res + r * res_stride, res_stride); break;
            case 2: row_group<2, 4>(x + r * x_stride, x_stride, res + r * res_stride, res_stride); break;
            case 1: row_group<1, 8>(x + r * x_stride, x_stride, res + r * res_stride, res_stride); break;
            default: break;
        }
    }

private:
    // R rows of res, all columns, in blocks of up to NP packets (R * NP accumulators stay in registers).
    template <int R, int NP>
    void row_group(const T* x, Index x_stride, T* res, Index res_stride) const {
        const Index packets = ld_ / P;
        Index j = 0;
        for (; j + NP <= packets; j += NP) tile<R, NP>(x, x_stride, res, res_stride, j * P);
        dispatch_tail<R, NP - 1>(packets - j, x, x_stride, res, res_stride, j * P);
    }

    template <int R, int NP>
    void dispatch_tail(Index left, const T* x, Index x_stride, T* res, Index res_stride, Index c) const {
        if constexpr (NP > 0) {
            if (left == NP) {
                tile<R, NP>(x, x_stride, res, res_stride, c);
            } else {
                dispatch_tail<R, NP - 1>(left, x, x_stride, res, res_stride, c);
            }
        }
    }

    // res rows [0, R), columns [c, c + NP * P) (clipped to rows_) += x rows [0, R) * A^T's columns.
    template <int R, int NP>
    void tile(const T* x, Index x_stride, T* res, Index res_stride, Index c) const {
        using namespace Eigen::internal;
        Packet acc[R][NP];
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < NP; ++j) acc[r][j] = pset1<Packet>(T(0));
        const T* w = at_.data() + c;
        for (Index k = 0; k < depth_; ++k, w += ld_) {
            Packet wk[NP];
            for (int j = 0; j < NP; ++j) wk[j] = pload<Packet>(w + j * P);
            for (int r = 0; r < R; ++r) {
                const Packet xk = pset1<Packet>(x[r * x_stride + k]);
                for (int j = 0; j < NP; ++j) acc[r][j] = pmadd(xk, wk[j], acc[r][j]);
            }
        }
        for (int r = 0; r < R; ++r) {
            T* out = res + r * res_stride;
            for (int j = 0; j < NP; ++j) {
                const Index col = c + j * P;
                if (col + P <= rows_) {
                    pstoreu(out + col, padd(ploadu<Packet>(out + col), acc[r][j]));
                } else {  // the last, partial packet of a row
                    alignas(sizeof(Packet)) T part[P];
                    pstoreu(part, acc[r][j]);
                    for (Index q = 0; col + q < rows_; ++q) out[col + q] += part[q];
                }
            }
        }
    }

    const T* source_ = nullptr;
    Index rows_ = 0, depth_ = 0, ld_ = 0;
    std::vector<T, Eigen::aligned_allocator<T>> at_;
};

// W_hh (or a band of it) for one thread's recurrence: GEMM-packed when its steps have kMinPackedRows rows or more,
// in the broadcast layout below that. `max_n` bounds the rows of a step.
template <class T>
class StepWeights {
public:
    static constexpr Index kMinPackedRows = 8;

    template <int Order>
    void pack(const T* data, Index stride, Index rows, Index depth, Index max_n) {
        gemm_ = max_n >= kMinPackedRows;
        if (gemm_) {
            packed_.template pack<Order>(data, stride, rows, depth, max_n);
        } else {
            broadcast_.template pack<Order>(data, stride, rows, depth);
        }
        max_n_ = max_n;
    }

    // Whether it holds the `rows` rows starting at `data` for steps of up to max_n rows.
    bool holds(const T* data, Index rows, Index max_n) const {
        return max_n <= max_n_ && (gemm_ ? packed_.holds(data, rows) : broadcast_.holds(data, rows));
    }

    void multiply_add(const T* x, Index x_stride, Index n, T* res, Index res_stride) {
        if (gemm_) {
            packed_.multiply_add(x, x_stride, n, res, res_stride);
        } else {
            broadcast_.multiply_add(x, x_stride, n, res, res_stride);
        }
    }

private:
    bool gemm_ = false;
    Index max_n_ = -1;
    PackedWeights<T> packed_;
    BroadcastWeights<T> broadcast_;
};

}  // namespace rnnfast::detail
