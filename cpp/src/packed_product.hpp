// Products with a weight operand that every time step reuses: the weights are packed once per call into the panel
// layout of Eigen's GEMM kernel, so a step packs only its small state operand. A general product repacks both
// operands on every call, which for a layer's recurrence repacks W_hh once per step.
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

}  // namespace rnnfast::detail
