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

#include "buffer.hpp"
#include "rnnfast/types.hpp"

// PacketBlock<__m256> and the like: GCC warns that a SIMD type's alignment attribute is dropped in a template
// argument, harmlessly (Eigen silences the same warning inside its own headers).
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

namespace rnnfast::detail {

// A [rows, depth] matrix A, packed. multiply_add computes res [n, rows] += x [n, depth] * A^T for row-major res
// and x, i.e. res^T += A * x^T in Eigen's column-major terms.
//
// A may be made of `segments` blocks of `rows` rows each, taken `segment_step` rows apart in the source and
// written `res_segment_step` columns apart in res: the same units of every gate of a cell, whose products share
// one packing of x.
template <class T>
class PackedWeights {
public:
    // A(i, k) = data[i * stride + k] (RowMajor: rows of a weight matrix) or data[k * stride + i] (ColMajor:
    // columns of one); segment g's row i is A(g * segment_step + i, k). `max_n` bounds the row count n of the
    // products, for the blocking and workspace sizes.
    template <int Order>
    void pack(const T* data, Index stride, Index rows, Index depth, Index max_n, Index segments = 1,
              Index segment_step = 0) {
        using Traits = Eigen::internal::gebp_traits<T, T>;
        using Mapper = Eigen::internal::const_blas_data_mapper<T, Index, Order>;
        Eigen::internal::gemm_pack_lhs<T, Index, Mapper, Traits::mr, Traits::LhsProgress,
                                       typename Traits::LhsPacket4Packing, Order>
            pack_lhs;
        rows_ = rows;
        depth_ = depth;
        segments_ = segments;
        kc_ = depth;
        mc_ = rows;
        Index nc = std::max<Index>(max_n, 1);
        Eigen::internal::computeProductBlockingSizes<T, T>(kc_, mc_, nc, Index(1));
        kc_ = std::max<Index>(kc_, 1);
        mc_ = std::max<Index>(mc_, 1);
        Index size = 0;
        for (Index k2 = 0; k2 < depth; k2 += kc_) {
            for (Index i2 = 0; i2 < rows; i2 += mc_) size += block_size(std::min(kc_, depth - k2), std::min(mc_, rows - i2));
        }
        packed_.resize(static_cast<size_t>(segments * size));
        block_b_.resize(static_cast<size_t>(kc_ * std::max<Index>(max_n, 1)));
        const Mapper a(data, stride);
        // Blocks in the order multiply_add reads them: depth blocks outside, segments and row blocks inside.
        T* out = packed_.data();
        for (Index k2 = 0; k2 < depth; k2 += kc_) {
            const Index kc = std::min(kc_, depth - k2);
            for (Index g = 0; g < segments; ++g) {
                for (Index i2 = 0; i2 < rows; i2 += mc_) {
                    const Index mc = std::min(mc_, rows - i2);
                    pack_lhs(out, a.getSubMapper(g * segment_step + i2, k2), kc, mc);
                    out += block_size(kc, mc);
                }
            }
        }
    }

    // res [n, rows] (row stride res_stride) += x [n, depth] (row stride x_stride) * A^T, n <= max_n; segment g's
    // columns start at res + g * res_segment_step.
    void multiply_add(const T* x, Index x_stride, Index n, T* res, Index res_stride, Index res_segment_step = 0) {
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
            for (Index g = 0; g < segments_; ++g) {
                for (Index i2 = 0; i2 < rows_; i2 += mc_) {
                    const Index mc = std::min(mc_, rows_ - i2);
                    gebp(out.getSubMapper(g * res_segment_step + i2, 0), a, block_b_.data(), mc, kc, n, T(1));
                    a += block_size(kc, mc);
                }
            }
        }
    }

private:
    // A packed block's length, rounded up so that the next one starts aligned (the kernel loads its panels with
    // aligned loads).
    static Index block_size(Index kc, Index mc) {
        constexpr Index align = EIGEN_MAX_ALIGN_BYTES / sizeof(T) > 0 ? EIGEN_MAX_ALIGN_BYTES / sizeof(T) : 1;
        return (kc * mc + align - 1) / align * align;
    }

    Index rows_ = 0, depth_ = 0, segments_ = 1, kc_ = 1, mc_ = 1;
    Buffer<T> packed_;  // written by pack before any read
    Buffer<T> block_b_;
};

// The same A laid out for steps of a few rows, where a GEMM's packing of x and its register blocking (built for
// many rows) cost more than the arithmetic: A^T is stored as [depth, ld] row-major, each segment's columns
// rounded up to whole SIMD packets, and each row of res accumulates depth broadcast-multiply-adds of A^T's rows.
// No packing per call, no workspace.
template <class T>
class BroadcastWeights {
    using Packet = typename Eigen::internal::packet_traits<T>::type;
    static constexpr Index P = Eigen::internal::unpacket_traits<Packet>::size;

public:
    // A(i, k) and its segments as in PackedWeights::pack.
    template <int Order>
    void pack(const T* data, Index stride, Index rows, Index depth, Index segments = 1, Index segment_step = 0) {
        rows_ = rows;
        depth_ = depth;
        segment_ld_ = (rows + P - 1) / P * P;
        ld_ = segments * segment_ld_;
        at_.assign(static_cast<size_t>(depth * ld_), T(0));  // padding columns stay zero
        for (Index g = 0; g < segments; ++g) {
            const T* src = data + g * segment_step * (Order == Eigen::RowMajor ? stride : 1);
            transpose_into<Order>(src, stride, at_.data() + g * segment_ld_);
        }
    }

    // res [n, rows] (row stride res_stride) += x [n, depth] (row stride x_stride) * A^T; segment g's columns
    // start at res + g * res_segment_step.
    void multiply_add(const T* x, Index x_stride, Index n, T* res, Index res_stride, Index res_segment_step = 0) const {
        if (rows_ == 0 || depth_ == 0) return;
        const Out out{res, res_stride, res_segment_step};
        Index r = 0;
        for (; r + 4 <= n; r += 4) row_group<4, 2>(x + r * x_stride, x_stride, out.rows_from(r));
        switch (n - r) {
            case 3: row_group<3, 3>(x + r * x_stride, x_stride, out.rows_from(r)); break;
            case 2: row_group<2, 4>(x + r * x_stride, x_stride, out.rows_from(r)); break;
            case 1: row_group<1, 8>(x + r * x_stride, x_stride, out.rows_from(r)); break;
            default: break;
        }
    }

private:
    // Where results go: row r of res at data + r * stride, segment g's columns from g * segment_step.
    struct Out {
        T* data;
        Index stride, segment_step;
        Out rows_from(Index r) const { return {data + r * stride, stride, segment_step}; }
    };

    // One segment's A^T into columns [0, rows_) of `out` (row stride ld_).
    template <int Order>
    void transpose_into(const T* data, Index stride, T* out) {
        const Index rows = rows_, depth = depth_;
        if (Order == Eigen::ColMajor) {  // A^T's rows are rows of the source: copies
            for (Index k = 0; k < depth; ++k) std::copy(data + k * stride, data + k * stride + rows, out + k * ld_);
            return;
        }
        // A transpose: P x P blocks through registers (a transposing loop element by element would stride through
        // one side and cost dozens of matrix-vector products on a large W_hh), the edges element by element.
        using namespace Eigen::internal;
        const Index rows_p = rows / P * P, depth_p = depth / P * P;
        for (Index i0 = 0; i0 < rows_p; i0 += P) {
            for (Index k0 = 0; k0 < depth_p; k0 += P) {
                PacketBlock<Packet, static_cast<int>(P)> block;
                for (Index q = 0; q < P; ++q) block.packet[q] = ploadu<Packet>(data + (i0 + q) * stride + k0);
                ptranspose(block);
                for (Index q = 0; q < P; ++q) pstoreu(out + (k0 + q) * ld_ + i0, block.packet[q]);
            }
            for (Index i = i0; i < i0 + P; ++i) {
                for (Index k = depth_p; k < depth; ++k) out[k * ld_ + i] = data[i * stride + k];
            }
        }
        for (Index i = rows_p; i < rows; ++i) {
            for (Index k = 0; k < depth; ++k) out[k * ld_ + i] = data[i * stride + k];
        }
    }

    // R rows of res, all columns, in blocks of up to NP packets (R * NP accumulators stay in registers).
    template <int R, int NP>
    void row_group(const T* x, Index x_stride, const Out& out) const {
        const Index packets = ld_ / P;
        Index j = 0;
        for (; j + NP <= packets; j += NP) tile<R, NP>(x, x_stride, out, j * P);
        dispatch_tail<R, NP - 1>(packets - j, x, x_stride, out, j * P);
    }

    template <int R, int NP>
    void dispatch_tail(Index left, const T* x, Index x_stride, const Out& out, Index c) const {
        if constexpr (NP > 0) {
            if (left == NP) {
                tile<R, NP>(x, x_stride, out, c);
            } else {
                dispatch_tail<R, NP - 1>(left, x, x_stride, out, c);
            }
        }
    }

    // res rows [0, R), the columns of A^T's packets [c, c + NP * P) (padding left out) += x rows [0, R) * A^T.
    template <int R, int NP>
    void tile(const T* x, Index x_stride, const Out& out, Index c) const {
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
        for (int j = 0; j < NP; ++j) {
            // Packets never straddle segments: each segment's width is whole packets.
            const Index col = c + j * P, segment = col / segment_ld_, unit = col - segment * segment_ld_;
            if (unit >= rows_) continue;
            const Index offset = segment * out.segment_step + unit;
            for (int r = 0; r < R; ++r) {
                T* dst = out.data + r * out.stride + offset;
                if (unit + P <= rows_) {
                    pstoreu(dst, padd(ploadu<Packet>(dst), acc[r][j]));
                } else {  // the last, partial packet of a segment
                    alignas(sizeof(Packet)) T part[P];
                    pstoreu(part, acc[r][j]);
                    for (Index q = 0; unit + q < rows_; ++q) dst[q] += part[q];
                }
            }
        }
    }

    Index rows_ = 0, depth_ = 0, ld_ = 0, segment_ld_ = 0;
    std::vector<T, Eigen::aligned_allocator<T>> at_;
};

// W_hh (or a band of it) for one thread's recurrence, laid out once per call for the products its steps make:
// GEMM-packed for steps of kMinPackedRows rows or more; for fewer, the broadcast layout, except where a step has a
// single row and either W_hh is large (Eigen's matrix-vector product is then at least as fast, and the
// transposing copy costs several of them) or the call has too few steps to repay the copy: those multiply by W_hh
// in place.
template <class T>
class StepWeights {
public:
    static constexpr Index kMinPackedRows = 8;
    static constexpr Index kMaxBroadcastVectorSize = 256 * 64;
    static constexpr Index kMinBroadcastVectorSteps = 16;

    // A(i, k) and its segments as in PackedWeights::pack; steps of up to `max_n` rows, `steps` of them in the call.
    template <int Order>
    void pack(const T* data, Index stride, Index rows, Index depth, Index max_n, Index steps, Index segments = 1,
              Index segment_step = 0) {
        source_ = data;
        stride_ = stride;
        rows_ = rows;
        depth_ = depth;
        segments_ = segments;
        segment_step_ = segment_step;
        row_major_ = Order == Eigen::RowMajor;
        max_n_ = max_n;
        const Index size = segments * rows * depth;
        if (max_n >= kMinPackedRows) {
            layout_ = Layout::gemm;
            packed_.template pack<Order>(data, stride, rows, depth, max_n, segments, segment_step);
        } else if (max_n == 1 && (size > kMaxBroadcastVectorSize || steps < kMinBroadcastVectorSteps)) {
            layout_ = Layout::in_place;
        } else {
            layout_ = Layout::broadcast;
            broadcast_.template pack<Order>(data, stride, rows, depth, segments, segment_step);
        }
    }

    // Whether it holds `segments` segments of `rows` rows starting at `data` for steps of up to max_n rows.
    bool holds(const T* data, Index rows, Index max_n, Index segments = 1) const {
        return layout_ != Layout::none && source_ == data && rows_ == rows && segments_ == segments && max_n <= max_n_;
    }

    // res [n, rows] (row stride res_stride) += x [n, depth] (row stride x_stride) * A^T; segment g's columns
    // start at res + g * res_segment_step.
    void multiply_add(const T* x, Index x_stride, Index n, T* res, Index res_stride, Index res_segment_step = 0) {
        switch (layout_) {
            case Layout::gemm: packed_.multiply_add(x, x_stride, n, res, res_stride, res_segment_step); break;
            case Layout::broadcast: broadcast_.multiply_add(x, x_stride, n, res, res_stride, res_segment_step); break;
            case Layout::in_place: {
                const ConstMatrixMap<T> xs(x, n, depth_, Eigen::OuterStride<>(x_stride));
                for (Index g = 0; g < segments_; ++g) {
                    MatrixMap<T> out(res + g * res_segment_step, n, rows_, Eigen::OuterStride<>(res_stride));
                    if (row_major_) {
                        const T* a = source_ + g * segment_step_ * stride_;
                        out.noalias() += xs * ConstMatrixMap<T>(a, rows_, depth_, Eigen::OuterStride<>(stride_)).transpose();
                    } else {
                        const T* a = source_ + g * segment_step_;
                        out.noalias() += xs * ConstMatrixMap<T>(a, depth_, rows_, Eigen::OuterStride<>(stride_));
                    }
                }
                break;
            }
            case Layout::none: break;
        }
    }

private:
    enum class Layout { none, gemm, broadcast, in_place };
    Layout layout_ = Layout::none;
    const T* source_ = nullptr;
    Index stride_ = 0, rows_ = 0, depth_ = 0, segments_ = 1, segment_step_ = 0, max_n_ = 0;
    bool row_major_ = true;
    PackedWeights<T> packed_;
    BroadcastWeights<T> broadcast_;
};

}  // namespace rnnfast::detail

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
