// gemm.hpp (Eigen's GEMM over per-thread packing buffers) against Eigen's own product, and workspace.hpp's reuse.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <tuple>

#include "gemm.hpp"
#include "workspace.hpp"

namespace {

using rnnfast::Index;
using rnnfast::RowMatrix;

template <class T>
RowMatrix<T> random_matrix(Index rows, Index cols, unsigned seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<double> normal;
    RowMatrix<T> m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(normal(gen));
    return m;
}

template <class T>
void check_all_transposes(Index m, Index n, Index k, double tol) {
    // op(A) is A [m, k] or the transpose of At [k, m]; op(B) likewise.
    const RowMatrix<T> A = random_matrix<T>(m, k, 1), At = A.transpose(), B = random_matrix<T>(k, n, 2),
                       Bt = B.transpose(), C0 = random_matrix<T>(m, n, 3);
    const RowMatrix<T> product = (A.template cast<double>() * B.template cast<double>()).template cast<T>();
    for (int a_trans = 0; a_trans < 2; ++a_trans) {
        for (int b_trans = 0; b_trans < 2; ++b_trans) {
            for (int add = 0; add < 2; ++add) {
                RowMatrix<T> C = C0;
                const RowMatrix<T>& a = a_trans ? At : A;
                const RowMatrix<T>& b = b_trans ? Bt : B;
                rnnfast::detail::gemm<T>(m, n, k, a.data(), a.cols(), a_trans, b.data(), b.cols(), b_trans, C.data(),
                                         n, add);
                const RowMatrix<T> expected = add ? RowMatrix<T>(C0 + product) : product;
                const double scale = 1.0 + static_cast<double>(expected.cwiseAbs().maxCoeff());
                EXPECT_LE(static_cast<double>((C - expected).cwiseAbs().maxCoeff()), tol * scale * std::sqrt(double(k) + 1))
                    << m << "x" << n << "x" << k << " a_trans " << a_trans << " b_trans " << b_trans << " add " << add;
            }
        }
    }
}

TEST(Gemm, EveryTransposeAndAccumulationMatchesTheProduct) {
    for (const auto& [m, n, k] : {std::tuple<Index, Index, Index>{1, 1, 1}, {7, 5, 3}, {64, 96, 300}, {200, 33, 17},
                                  {5, 700, 129}, {300, 300, 600}, {48, 40, 2100}}) {
        check_all_transposes<float>(m, n, k, 1e-5);
        check_all_transposes<double>(m, n, k, 1e-13);
    }
}

TEST(Gemm, EmptyDepthSetsOrKeeps) {
    RowMatrix<float> C = RowMatrix<float>::Constant(3, 4, 2.0f), none(3, 0);
    rnnfast::detail::gemm<float>(3, 4, 0, none.data(), 0, false, none.data(), 4, false, C.data(), 4, true);
    EXPECT_TRUE((C.array() == 2.0f).all());
    rnnfast::detail::gemm<float>(3, 4, 0, none.data(), 0, false, none.data(), 4, false, C.data(), 4, false);
    EXPECT_TRUE((C.array() == 0.0f).all());
}

TEST(Gemm, ExpressionOperandsAreReadAsTheirLayout) {
    const RowMatrix<double> A = random_matrix<double>(40, 30, 4), B = random_matrix<double>(40, 20, 5);
    RowMatrix<double> C(30, 20);
    rnnfast::detail::gemm(C.middleRows(0, 30), A.transpose().middleRows(0, 30), B, false);  // A^T B
    EXPECT_LE((C - A.transpose() * B).cwiseAbs().maxCoeff(), 1e-12);
}

TEST(Workspace, SmallBlocksAreKeptPerSlotLargeOnesAreNot) {
    using rnnfast::detail::Workspace;
    using rnnfast::detail::WorkspaceSlot;
    const float* first = nullptr;
    {
        Workspace<float> w(WorkspaceSlot::backward_dz, 100, 50);
        first = w.matrix().data();
        w.matrix().setConstant(1.0f);
    }
    {
        Workspace<float> again(WorkspaceSlot::backward_dz, 80, 50), other(WorkspaceSlot::backward_dzh, 80, 50);
        EXPECT_EQ(again.matrix().data(), first);  // the same block, for the next call
        EXPECT_NE(other.matrix().data(), first);  // another slot, never shared
        EXPECT_EQ(again.rows(10, 5).data(), first + 10 * 50);
        Workspace<float> same_slot(WorkspaceSlot::backward_dz, 10, 10);
        EXPECT_NE(same_slot.matrix().data(), first);  // the slot is in use: a block of its own
    }
    const Index huge_rows = static_cast<Index>(rnnfast::detail::kMaxKeptWorkspaceBytes / sizeof(float) / 64) + 1;
    {
        Workspace<float> huge(WorkspaceSlot::backward_dz, huge_rows, 64);
        EXPECT_NE(huge.matrix().data(), first);  // lives for this call only; the kept block stays
    }
    Workspace<float> after(WorkspaceSlot::backward_dz, 10, 10);
    EXPECT_EQ(after.matrix().data(), first);
}

}  // namespace
