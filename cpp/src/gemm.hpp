// Large products through Eigen's sequential GEMM with packing buffers that persist per thread. Eigen's own product
// allocates its packing buffers on every call, above 128 KiB from the heap; glibc hands such blocks back to the
// system when they are freed, so the next call faults them in again, each fault of a page that another thread of
// the process may have cached also costing a TLB shootdown across the pool's threads. For a mid-sized BPTT (GRU,
// T 50, B 16, H 128) that was half of the backward's time.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <vector>

#include "buffer.hpp"
#include "rnnfast/types.hpp"

namespace rnnfast::detail {

// (Internal linkage: a function-local static of an inline function is one object per process under GCC's
// STB_GNU_UNIQUE, shared by the modules of every instruction-set level, whose Eigen aligns differently.)
namespace {

// A thread's packing buffers, grown to the largest product it has made and kept: a few megabytes per thread.
template <class T>
T* packing_buffer(int which, Index size) {
    thread_local Buffer<T> buffers[2];
    Buffer<T>& buffer = buffers[which];
    if (static_cast<Index>(buffer.size()) < size) {
        buffer.clear();
        buffer.shrink_to_fit();
        buffer.resize(static_cast<size_t>(size));
    }
    return buffer.data();
}

}  // namespace

// Eigen's level-3 blocking (the sizes its own product would choose) over this thread's packing buffers.
// `row_major_rhs`: Eigen packs the right-hand side from rows far apart (each panel of nr columns reads one cache line
// per row of depth); a depth block of more lines than about two thirds of L1 then drops the lines the next panel
// needs. Such a depth is split in even blocks below that (the weight gradients: bench_kernels' weight_gradient).
template <class T>
class ThreadBlocking : public Eigen::internal::level3_blocking<T, T> {
public:
    ThreadBlocking(Index rows, Index cols, Index depth, bool row_major_rhs) {
        this->m_mc = rows;
        this->m_nc = cols;
        this->m_kc = depth;
        Eigen::internal::computeProductBlockingSizes<T, T, 1>(this->m_kc, this->m_mc, this->m_nc, Index(1));
        const Index max_depth = std::max<Index>(64, Eigen::l1CacheSize() / 96);
        if (row_major_rhs && this->m_kc > max_depth) {
            const Index blocks = (this->m_kc + max_depth - 1) / max_depth;
            this->m_kc = ((this->m_kc + blocks - 1) / blocks + 7) / 8 * 8;
        }
        this->m_blockA = packing_buffer<T>(0, this->m_mc * this->m_kc);
        this->m_blockB = packing_buffer<T>(1, this->m_kc * this->m_nc);
    }
};

// C [m, n] (row-major, row stride ldc) = or += op(A) [m, k] * op(B) [k, n], where op(A) is A (row-major [m, k],
// row stride lda) or, with a_trans, the transpose of row-major [k, m]; op(B) likewise.
template <class T>
void gemm(Index m, Index n, Index k, const T* a, Index lda, bool a_trans, const T* b, Index ldb, bool b_trans, T* c,
          Index ldc, bool add) {
    if (m == 0 || n == 0) return;
    if (!add) {
        for (Index i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, T(0));
    }
    if (k == 0) return;
    // In column-major terms C^T [n, m] += op(B)^T [n, k] * op(A)^T [k, m]: op(B)^T is column-major exactly when
    // op(B) is B itself (row-major), and op(A)^T likewise.
    using Eigen::ColMajor;
    using Eigen::RowMajor;
    ThreadBlocking<T> blocking(n, m, k, a_trans);
    if (!b_trans && !a_trans) {
        Eigen::internal::general_matrix_matrix_product<Index, T, ColMajor, false, T, ColMajor, false, ColMajor, 1>::run(
            n, m, k, b, ldb, a, lda, c, 1, ldc, T(1), blocking, nullptr);
    } else if (!b_trans && a_trans) {
        Eigen::internal::general_matrix_matrix_product<Index, T, ColMajor, false, T, RowMajor, false, ColMajor, 1>::run(
            n, m, k, b, ldb, a, lda, c, 1, ldc, T(1), blocking, nullptr);
    } else if (b_trans && !a_trans) {
        Eigen::internal::general_matrix_matrix_product<Index, T, RowMajor, false, T, ColMajor, false, ColMajor, 1>::run(
            n, m, k, b, ldb, a, lda, c, 1, ldc, T(1), blocking, nullptr);
    } else {
        Eigen::internal::general_matrix_matrix_product<Index, T, RowMajor, false, T, RowMajor, false, ColMajor, 1>::run(
            n, m, k, b, ldb, a, lda, c, 1, ldc, T(1), blocking, nullptr);
    }
}

// gemm for Eigen operands with unit inner stride: dst row-major; lhs and rhs row-major blocks or transposes of them.
template <class Dst, class Lhs, class Rhs>
void gemm(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool add) {
    using T = typename std::decay_t<Dst>::Scalar;
    static_assert(std::decay_t<Dst>::IsRowMajor, "gemm: a row-major destination");
    constexpr bool a_trans = !Lhs::IsRowMajor, b_trans = !Rhs::IsRowMajor;
    gemm<T>(dst.rows(), dst.cols(), lhs.cols(), lhs.data(), lhs.outerStride(), a_trans, rhs.data(), rhs.outerStride(),
            b_trans, dst.data(), dst.outerStride(), add);
}

}  // namespace rnnfast::detail
