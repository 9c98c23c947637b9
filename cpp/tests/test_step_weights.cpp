// The weight layouts of the recurrence's per-step products (cpp/src/packed_product.hpp) against Eigen's product,
// over the row counts, widths and depths that reach every register tile and partial packet; and the bits of each
// result element independent of the block of rows and the band of units it was computed in.
#include <gtest/gtest.h>

#include <Eigen/Core>

#include <array>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <type_traits>
#include <vector>

#include "packed_product.hpp"

namespace {

using rnnfast::Index;

template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class T>
Matrix<T> random_matrix(Index rows, Index cols, std::mt19937& gen) {
    std::uniform_real_distribution<double> dist(-1.0, 1.0);
    Matrix<T> m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(dist(gen));
    return m;
}

// The weight storage of `Order` (A's rows, or A^T's) and x with the depth (k) in reverse: a forward product of these
// sums every element in the order a backwards one-row step sums the originals.
template <class T, int Order>
Matrix<T> depth_reversed_store(const Matrix<T>& store, Index depth) {
    Matrix<T> out = store;
    if (Order == Eigen::RowMajor) {
        out.leftCols(depth) = store.leftCols(depth).rowwise().reverse().eval();
    } else {
        out.topRows(depth) = store.topRows(depth).colwise().reverse().eval();
    }
    return out;
}

template <class T>
Matrix<T> depth_reversed_x(const Matrix<T>& x, Index depth) {
    Matrix<T> out = x;
    out.leftCols(depth) = x.leftCols(depth).rowwise().reverse().eval();
    return out;
}

// res [n, rows] += x [n, depth] * A^T for A given as rows of a weight matrix (RowMajor) or columns of one
// (ColMajor), operands with row strides wider than their widths; columns outside [0, rows) must stay untouched.
template <class T, int Order>
void check_layouts(Index rows, Index depth, Index n, Index batch, Index steps) {
    std::mt19937 gen(static_cast<unsigned>(rows * 100000 + depth * 100 + n));
    const Index pad = 3;
    const Matrix<T> a = random_matrix<T>(rows, depth, gen);
    // The weight storage: A itself (RowMajor) or A^T (ColMajor), each row padded.
    Matrix<T> store = Order == Eigen::RowMajor ? Matrix<T>(rows, depth + pad) : Matrix<T>(depth, rows + pad);
    store.setConstant(T(7));
    if (Order == Eigen::RowMajor) {
        store.leftCols(depth) = a;
    } else {
        store.leftCols(rows) = a.transpose();
    }
    const Matrix<T> x = random_matrix<T>(n, depth + pad, gen);
    const Matrix<T> res0 = random_matrix<T>(n, rows + pad, gen);
    Matrix<T> expected = res0;
    expected.leftCols(rows) += x.leftCols(depth) * a.transpose();

    rnnfast::detail::StepWeights<T> step;
    step.template pack<Order>(store.data(), store.cols(), rows, depth, batch, steps);
    Matrix<T> got = res0;
    step.multiply_add(x.data(), x.cols(), n, got.data(), got.cols());
    EXPECT_TRUE(step.holds(store.data(), rows));
    EXPECT_FALSE(step.holds(store.data(), rows + 1));
    EXPECT_FALSE(step.holds(store.data(), rows, 2));

    rnnfast::detail::PanelWeights<T> panels;
    panels.template pack<Order>(store.data(), store.cols(), rows, depth);
    Matrix<T> got_panels = res0;
    panels.multiply_add(x.data(), x.cols(), n, got_panels.data(), got_panels.cols(), 0, false);

    const double tol = std::is_same<T, float>::value ? 1e-4 : 1e-12;
    for (const Matrix<T>* result : {&got, &got_panels}) {
        EXPECT_LE((*result - expected).cwiseAbs().maxCoeff(), tol * depth)
            << "rows " << rows << " depth " << depth << " n " << n << " batch " << batch << " steps " << steps;
        EXPECT_EQ(result->rightCols(pad), res0.rightCols(pad));
    }

    // With a start row, the same bits as copying it into every row first, whatever the rows held; the padding
    // untouched.
    const Matrix<T> start = random_matrix<T>(1, rows, gen);
    for (bool panel_object : {false, true}) {
        for (bool backwards : {false, true}) {
            Matrix<T> copied = res0, started = res0 * T(3);
            copied.leftCols(rows).rowwise() = start.row(0);
            if (panel_object) {
                panels.multiply_add(x.data(), x.cols(), n, copied.data(), copied.cols(), 0, backwards);
                panels.multiply_add(x.data(), x.cols(), n, started.data(), started.cols(), 0, backwards, start.data());
            } else {
                step.multiply_add(x.data(), x.cols(), n, copied.data(), copied.cols(), 0, backwards);
                step.multiply_add(x.data(), x.cols(), n, started.data(), started.cols(), 0, backwards, start.data());
            }
            EXPECT_EQ(started.leftCols(rows), copied.leftCols(rows))
                << "start: rows " << rows << " depth " << depth << " n " << n << " backwards " << backwards;
            EXPECT_EQ(started.rightCols(pad), (res0 * T(3)).rightCols(pad));
        }
    }

    // Visiting the units backwards (as every other step does) gives each element the same bits; a one-row panel
    // layout also reads the depth last to first, the bits of the forward product with the depth reversed.
    Matrix<T> backwards = res0, expected_backwards = got;
    step.multiply_add(x.data(), x.cols(), n, backwards.data(), backwards.cols(), 0, true);
    // (A batch of one item on columns of W always gets one-row panels; a batch of many never does.)
    if (batch == 1 && Order == Eigen::ColMajor) EXPECT_TRUE(step.reverses_depth());
    if (batch > 1) EXPECT_FALSE(step.reverses_depth());
    if (step.reverses_depth()) {
        const Matrix<T> store_r = depth_reversed_store<T, Order>(store, depth), x_r = depth_reversed_x(x, depth);
        rnnfast::detail::StepWeights<T> step_r;
        step_r.template pack<Order>(store_r.data(), store_r.cols(), rows, depth, batch, steps);
        expected_backwards = res0;
        step_r.multiply_add(x_r.data(), x_r.cols(), n, expected_backwards.data(), expected_backwards.cols());
        EXPECT_LE((expected_backwards - expected).cwiseAbs().maxCoeff(), tol * depth);
    }
    EXPECT_EQ(backwards, expected_backwards)
        << "backwards: rows " << rows << " depth " << depth << " n " << n << " batch " << batch << " steps " << steps;

    // The same bits for each element when its row is multiplied alone, or within a block starting elsewhere, and
    // when only a band of units [u0, rows) is laid out (how threads split the recurrence).
    if (n > 1) {
        const Index split = n / 2 + 1;
        Matrix<T> parts = res0;
        step.multiply_add(x.data(), x.cols(), split, parts.data(), parts.cols());
        for (Index r = split; r < n; ++r) step.multiply_add(x.data() + r * x.cols(), x.cols(), 1, parts.data() + r * parts.cols(), parts.cols());
        EXPECT_EQ(parts, got) << "rows " << rows << " depth " << depth << " n " << n << " batch " << batch;
    }
    for (Index u0 : {Index(1), rows / 2}) {
        if (u0 <= 0 || u0 >= rows) continue;
        const T* band = Order == Eigen::RowMajor ? store.data() + u0 * store.cols() : store.data() + u0;
        rnnfast::detail::StepWeights<T> part;
        part.template pack<Order>(band, store.cols(), rows - u0, depth, batch, steps, 1, 0, rows);
        Matrix<T> banded = res0;
        part.multiply_add(x.data(), x.cols(), n, banded.data() + u0, banded.cols());
        EXPECT_EQ(banded.middleCols(u0, rows - u0), got.middleCols(u0, rows - u0))
            << "band from " << u0 << ": rows " << rows << " depth " << depth << " n " << n << " batch " << batch;
    }
}

template <class T>
void check_all() {
    // Every layout StepWeights picks: panels, and in place (a batch of one item: one-row steps of a large W_hh
    // or of a short call); depths and widths off and on whole packets of every instruction-set level, row counts
    // past two register tiles.
    for (Index rows : {1, 3, 8, 9, 16, 17, 20, 33, 64, 100, 130}) {
        for (Index depth : {1, 5, 20, 70}) {
            for (Index n = 1; n <= 18; ++n) {
                for (Index batch : {Index(1), Index(12)}) {
                    if (batch == 1 && n > 1) continue;
                    for (Index steps : {Index(1), Index(100)}) {
                        check_layouts<T, Eigen::RowMajor>(rows, depth, n, batch, steps);
                        check_layouts<T, Eigen::ColMajor>(rows, depth, n, batch, steps);
                    }
                }
            }
        }
    }
    // Depths of several passes over a panel (its depth block at every level and dtype is at most 1024).
    for (Index rows : {9, 33, 100}) {
        for (Index depth : {300, 1100}) {
            for (Index n : {1, 3, 9, 17}) {
                check_layouts<T, Eigen::RowMajor>(rows, depth, n, 12, 100);
                check_layouts<T, Eigen::ColMajor>(rows, depth, n, 12, 100);
            }
            check_layouts<T, Eigen::RowMajor>(rows, depth, 1, 1, 100);
        }
    }
}

// A made of `segments` blocks of `rows` rows, `gap` rows apart in the storage (the same units of every gate),
// written `gap` columns apart in res: each block's product lands in its columns, the gaps stay untouched.
template <class T, int Order>
void check_segments(Index rows, Index depth, Index n, Index segments, Index gap) {
    std::mt19937 gen(static_cast<unsigned>(rows * 1000 + depth * 10 + n + segments));
    const Index total = segments * gap;  // storage rows: every segment plus its gap
    const Matrix<T> a_all = random_matrix<T>(total, depth, gen);
    const Matrix<T> store = Order == Eigen::RowMajor ? Matrix<T>(a_all) : Matrix<T>(a_all.transpose());
    const Matrix<T> x = random_matrix<T>(n, depth, gen);
    const Matrix<T> res0 = random_matrix<T>(n, total, gen);
    Matrix<T> expected = res0;
    for (Index g = 0; g < segments; ++g) {
        expected.middleCols(g * gap, rows) += x * a_all.middleRows(g * gap, rows).transpose();
    }
    const double tol = std::is_same<T, float>::value ? 1e-4 : 1e-12;
    for (Index batch : {n, Index(12)}) {
        for (Index steps : {Index(1), Index(100)}) {
            rnnfast::detail::StepWeights<T> step;
            step.template pack<Order>(store.data(), store.cols(), rows, depth, batch, steps, segments, gap);
            EXPECT_TRUE(step.holds(store.data(), rows, segments));
            Matrix<T> got = res0;
            step.multiply_add(x.data(), x.cols(), n, got.data(), got.cols(), gap);
            EXPECT_LE((got - expected).cwiseAbs().maxCoeff(), tol * depth)
                << "rows " << rows << " depth " << depth << " n " << n << " segments " << segments << " batch " << batch;
            Matrix<T> backwards = res0, expected_backwards = got;
            step.multiply_add(x.data(), x.cols(), n, backwards.data(), backwards.cols(), gap, true);
            if (step.reverses_depth()) {
                const Matrix<T> store_r = depth_reversed_store<T, Order>(store, depth), x_r = depth_reversed_x(x, depth);
                rnnfast::detail::StepWeights<T> step_r;
                step_r.template pack<Order>(store_r.data(), store_r.cols(), rows, depth, batch, steps, segments, gap);
                expected_backwards = res0;
                step_r.multiply_add(x_r.data(), x_r.cols(), n, expected_backwards.data(), expected_backwards.cols(), gap);
            }
            EXPECT_EQ(backwards, expected_backwards)
                << "backwards: rows " << rows << " segments " << segments << " batch " << batch << " steps " << steps;
            // A start row laid out as res's: each segment starts from its own columns of it, the gaps untouched.
            const Matrix<T> start = random_matrix<T>(1, total, gen);
            Matrix<T> copied = res0;
            for (Index g = 0; g < segments; ++g) {
                copied.middleCols(g * gap, rows).rowwise() = start.middleCols(g * gap, rows).row(0);
            }
            step.multiply_add(x.data(), x.cols(), n, copied.data(), copied.cols(), gap);
            Matrix<T> started = res0;
            step.multiply_add(x.data(), x.cols(), n, started.data(), started.cols(), gap, false, start.data());
            EXPECT_EQ(started, copied) << "start: rows " << rows << " segments " << segments << " batch " << batch;
        }
    }
}

template <class T>
void check_all_segments() {
    for (Index rows : {1, 5, 16, 20, 33}) {
        for (Index depth : {3, 20}) {
            for (Index n : {1, 3, 4, 9}) {
                for (Index segments : {2, 3, 4}) {
                    check_segments<T, Eigen::RowMajor>(rows, depth, n, segments, rows + 7);
                    check_segments<T, Eigen::ColMajor>(rows, depth, n, segments, rows + 7);
                }
            }
        }
    }
}

// Small weights are packed once per thread and taken again while they hold the same bytes (PackedCopies): a second
// pack gives the bits of a fresh packing, and so does one after any element that the packing reads changed in place
// (same pointer, same shape), never the kept panels. Elements outside the packed region (a segment's gap) may change
// freely.
template <class T, int Order>
void check_kept_packing(Index rows, Index depth, Index segments) {
    std::mt19937 gen(static_cast<unsigned>(rows * 1000 + depth * 10 + segments));
    const Index gap = 1, step_rows = rows + gap, n = 9, res_step = rows + 2;
    const Index segment_step = step_rows;  // rows (RowMajor) or columns (ColMajor) of the store between segments
    Matrix<T> store = Order == Eigen::RowMajor ? random_matrix<T>(segments * step_rows, depth + 2, gen)
                                               : random_matrix<T>(depth, segments * step_rows + 2, gen);
    const Matrix<T> x = random_matrix<T>(n, depth, gen);
    const Matrix<T> res0 = random_matrix<T>(n, segments * res_step, gen);
    const auto kept = [&] {
        rnnfast::detail::StepWeights<T> step;
        step.template pack<Order>(store.data(), store.cols(), rows, depth, 4, 50, segments, segment_step);
        Matrix<T> got = res0;
        step.multiply_add(x.data(), x.cols(), n, got.data(), got.cols(), res_step);
        return got;
    };
    const auto fresh = [&] {
        rnnfast::detail::PanelWeights<T> panels;
        panels.template pack<Order>(store.data(), store.cols(), rows, depth, segments, segment_step);
        Matrix<T> got = res0;
        panels.multiply_add(x.data(), x.cols(), n, got.data(), got.cols(), res_step, false);
        return got;
    };
    const Matrix<T> first = fresh();
    ASSERT_EQ(kept(), first);
    ASSERT_EQ(kept(), first);  // taken again
    // The store's (row, column) of A(i, k) in segment g, and of the gap after segment g.
    const auto at = [&](Index g, Index i, Index k) -> T& {
        return Order == Eigen::RowMajor ? store(g * segment_step + i, k) : store(k, g * segment_step + i);
    };
    const T gap_before = at(0, rows, 0);
    at(0, rows, 0) = T(100);  // not read: the packing is still the same
    EXPECT_EQ(kept(), first);
    at(0, rows, 0) = gap_before;
    for (const auto& [g, i, k] : {std::array<Index, 3>{0, 0, 0}, std::array<Index, 3>{segments - 1, rows - 1, depth - 1},
                                  std::array<Index, 3>{segments - 1, rows / 2, depth / 2}}) {
        const T before = at(g, i, k);
        at(g, i, k) = before + T(1);
        const Matrix<T> changed = fresh();
        EXPECT_NE(changed, first) << "g " << g << " i " << i << " k " << k;
        EXPECT_EQ(kept(), changed) << "g " << g << " i " << i << " k " << k;
        at(g, i, k) = before;
        EXPECT_EQ(kept(), first);
    }
}

TEST(StepWeights, KeptPackingFollowsTheWeights) {
    for (Index segments : {1, 4}) {
        check_kept_packing<float, Eigen::RowMajor>(20, 100, segments);
        check_kept_packing<float, Eigen::ColMajor>(20, 37, segments);
        check_kept_packing<double, Eigen::RowMajor>(33, 20, segments);
        check_kept_packing<double, Eigen::ColMajor>(5, 64, segments);
    }
}

// Two StepWeights of the same weights share one kept packing; their products keep their accumulators between depth
// blocks in scratch of their own (the depth here spans several blocks), so the two may run at once on two threads.
TEST(StepWeights, SharedPackingRunsOnTwoThreadsAtOnce) {
    using T = float;
    std::mt19937 gen(7);
    const Index rows = 20, depth = 600, n = 64;
    const Matrix<T> a = random_matrix<T>(rows, depth, gen);
    const Matrix<T> x = random_matrix<T>(n, depth, gen);
    rnnfast::detail::PanelWeights<T> fresh;
    fresh.pack<Eigen::RowMajor>(a.data(), depth, rows, depth);
    Matrix<T> expected = Matrix<T>::Zero(n, rows);
    fresh.multiply_add(x.data(), depth, n, expected.data(), rows, 0, false);
    rnnfast::detail::StepWeights<T> first, second;
    first.pack<Eigen::RowMajor>(a.data(), depth, rows, depth, 4, 50);
    second.pack<Eigen::RowMajor>(a.data(), depth, rows, depth, 4, 50);  // takes the kept packing
    const auto run = [&](rnnfast::detail::StepWeights<T>& step, int& wrong) {
        for (int i = 0; i < 200; ++i) {
            Matrix<T> got = Matrix<T>::Zero(n, rows);
            step.multiply_add(x.data(), depth, n, got.data(), rows);
            if (got != expected) ++wrong;
        }
    };
    int wrong_first = 0, wrong_second = 0;
    std::thread other([&] { run(first, wrong_first); });
    run(second, wrong_second);
    other.join();
    EXPECT_EQ(wrong_first, 0);
    EXPECT_EQ(wrong_second, 0);
}

TEST(StepWeights, FloatMatchesEigenProduct) { check_all<float>(); }

TEST(StepWeights, SegmentsFloat) { check_all_segments<float>(); }

TEST(StepWeights, SegmentsDouble) { check_all_segments<double>(); }

TEST(StepWeights, DoubleMatchesEigenProduct) { check_all<double>(); }

TEST(StepWeights, StartRowWithoutDepthIsCopied) {
    const Matrix<float> none(5, 1), x(3, 1), start = Matrix<float>::Constant(1, 5, 2.5f);
    for (Index batch : {Index(1), Index(12)}) {
        rnnfast::detail::StepWeights<float> step;
        step.pack<Eigen::RowMajor>(none.data(), 1, 5, 0, batch, 100);
        Matrix<float> res = Matrix<float>::Constant(3, 6, -1.0f);
        step.multiply_add(x.data(), 1, 3, res.data(), 6, 0, false, start.data());
        EXPECT_TRUE((res.leftCols(5).array() == 2.5f).all()) << res;
        EXPECT_TRUE((res.col(5).array() == -1.0f).all());
        Matrix<float> kept = Matrix<float>::Constant(3, 6, -1.0f);
        step.multiply_add(x.data(), 1, 3, kept.data(), 6);
        EXPECT_TRUE((kept.array() == -1.0f).all());
    }
}

}  // namespace

// PanelWeights' transposed product (weight gradients): res += dz^T A against a double product, over row counts that
// reach every tile and the rows left over, widths with a partial last packet and several panels, depths over
// several depth blocks, A's rows scattered (a row given twice, as h0 is for items that start together); and the
// bits of every element independent of the block of res's rows it was computed in (row offsets as threads split
// them, and small L2 sizes that cut blocks).
template <class T>
void check_transposed_product() {
    std::mt19937 gen(11);
    rnnfast::detail::PanelWeights<T> panels;
    for (const Index n : {1, 7, 8, 13, 40}) {
        for (const Index cols : {1, 5, 16, 20, 48, 70, 128}) {
            for (const Index depth : {1, 9, 130, 300}) {
                const Index stride = n + 3;  // dz is a block of a wider workspace
                const Matrix<T> dz = random_matrix<T>(depth, stride, gen);
                const Matrix<T> source = random_matrix<T>(depth + 1, cols + 2, gen);
                std::vector<const T*> rows(static_cast<size_t>(depth));
                Matrix<double> a(depth, cols);
                for (Index k = 0; k < depth; ++k) {
                    const Index from = k % 5 == 0 ? depth : (k * 7) % depth;  // out of order, one row repeated
                    rows[static_cast<size_t>(k)] = source.data() + from * source.cols() + 1;
                    a.row(k) = source.row(from).segment(1, cols).template cast<double>();
                }
                panels.pack_rows(rows.data(), cols, depth);
                const Matrix<T> start = random_matrix<T>(n, cols, gen);
                Matrix<T> res = start;
                panels.multiply_add_transposed(dz.data(), stride, n, res.data(), cols);
                const Matrix<double> want =
                    start.template cast<double>() + dz.leftCols(n).template cast<double>().transpose() * a;
                const double tol = (std::is_same<T, float>::value ? 2e-6 : 1e-14) * static_cast<double>(depth);
                ASSERT_LE((res.template cast<double>() - want).cwiseAbs().maxCoeff(), tol)
                    << "n " << n << " cols " << cols << " depth " << depth;
                // Rows [8, n) apart, and blocks of res's rows cut for an L2 of a few rows of dz: the same bits.
                for (const Index l2 : {Index(1), Index(2 * 8 * depth * static_cast<Index>(sizeof(T)) * 3)}) {
                    Matrix<T> again = start;
                    const Index r0 = n > 8 ? 8 : 0;
                    if (r0 > 0) panels.multiply_add_transposed(dz.data(), stride, r0, again.data(), cols, l2);
                    panels.multiply_add_transposed(dz.data() + r0, stride, n - r0, again.data() + r0 * cols, cols, l2);
                    ASSERT_TRUE(again == res) << "n " << n << " cols " << cols << " depth " << depth << " l2 " << l2;
                }
            }
        }
    }
}

TEST(TransposedProduct, FloatMatchesDoubleProduct) { check_transposed_product<float>(); }
TEST(TransposedProduct, DoubleMatchesDoubleProduct) { check_transposed_product<double>(); }

namespace {

// Whether a product can be called on a P without a scratch of the caller's (on the layout's own).
template <class P, class = void>
struct HasOwnScratchProduct : std::false_type {};
template <class P>
struct HasOwnScratchProduct<P, std::void_t<decltype(std::declval<P&>().multiply_add(
                                   std::declval<const float*>(), Index{}, Index{}, std::declval<float*>(), Index{},
                                   Index{}, bool{}))>> : std::true_type {};

}  // namespace

// Layouts that the threads' calls share (PackedCopies) are handed out const, and a const layout's products take the
// caller's scratch: none can reach the layout's own, which two threads would write at once.
TEST(PackedCopies, SharedLayoutsTakeTheCallersScratch) {
    using rnnfast::detail::PackedCopies;
    using rnnfast::detail::PanelWeights;
    static_assert(HasOwnScratchProduct<PanelWeights<float>>::value, "an owned layout uses its own scratch");
    static_assert(!HasOwnScratchProduct<const PanelWeights<float>>::value, "a const layout needs the caller's");
    using Kept = decltype(PackedCopies<float>::local().panels<Eigen::RowMajor>(
        std::declval<const typename PackedCopies<float>::Key&>()));
    static_assert(std::is_same_v<Kept, std::shared_ptr<const PanelWeights<float>>>, "kept layouts are const");
    // And the product through the caller's scratch is the owned one, bit for bit, on a depth of several blocks.
    std::mt19937 gen(11);
    const Index rows = 40, depth = 700, n = 9;
    const Matrix<float> a = random_matrix<float>(rows, depth, gen), x = random_matrix<float>(n, depth, gen);
    PanelWeights<float> owned;
    owned.pack<Eigen::RowMajor>(a.data(), depth, rows, depth);
    Matrix<float> mine = Matrix<float>::Zero(n, rows), theirs = Matrix<float>::Zero(n, rows);
    owned.multiply_add(x.data(), depth, n, mine.data(), rows, 0, false);
    rnnfast::detail::Buffer<float> scratch;
    static_cast<const PanelWeights<float>&>(owned).multiply_add(x.data(), depth, n, theirs.data(), rows, 0, false,
                                                                nullptr, scratch);
    EXPECT_GT(scratch.size(), 0u);
    EXPECT_EQ(0, std::memcmp(mine.data(), theirs.data(), sizeof(float) * static_cast<size_t>(mine.size())));
}
