// The recurrence driver's schedules (cpp/src/recurrent.hpp) for a batch of one item: a one-thread recurrence whose
// input projection a second thread runs ahead of it, in both time directions, with and without the chunked gate
// workspace of a forward that keeps no cache; and one-row steps that alternate the direction in which they read
// W_hh. Each must give the bits of the one-thread schedule, and agree with the cell equations in double.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "cells.hpp"
#include "recurrent.hpp"
#include "rnnfast/config.hpp"

#include "helpers.hpp"

namespace {

using rnnfast::Index;
template <class T>
using Matrix = rnnfast::RowMatrix<T>;

struct Lstm {
    Index T, I, H;
    Matrix<double> w_ih, w_hh, x;
    Eigen::Matrix<double, 1, Eigen::Dynamic> b_ih, b_hh;
};

Lstm make_lstm(Index T, Index I, Index H) {
    std::mt19937 gen(17);
    std::uniform_real_distribution<double> dist(-0.3, 0.3);
    Lstm m{T, I, H, Matrix<double>(4 * H, I), Matrix<double>(4 * H, H), Matrix<double>(T, I), {}, {}};
    m.b_ih.resize(4 * H);
    m.b_hh.resize(4 * H);
    for (Matrix<double>* a : {&m.w_ih, &m.w_hh, &m.x})
        for (Index i = 0; i < a->size(); ++i) a->data()[i] = dist(gen);
    for (Index i = 0; i < 4 * H; ++i) {
        m.b_ih[i] = dist(gen);
        m.b_hh[i] = dist(gen);
    }
    return m;
}

// hs [T, H] of one item from zero states, by the cell equations (PyTorch's gate order i, f, g, o).
Matrix<double> lstm_by_hand(const Lstm& m, bool reverse) {
    Matrix<double> hs(m.T, m.H);
    Eigen::VectorXd h = Eigen::VectorXd::Zero(m.H), c = Eigen::VectorXd::Zero(m.H);
    const auto sigmoid = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
    for (Index s = 0; s < m.T; ++s) {
        const Index t = reverse ? m.T - 1 - s : s;
        const Eigen::VectorXd z = m.w_ih * m.x.row(t).transpose() + m.w_hh * h + m.b_ih.transpose() + m.b_hh.transpose();
        for (Index u = 0; u < m.H; ++u) {
            c[u] = sigmoid(z[m.H + u]) * c[u] + sigmoid(z[u]) * std::tanh(z[2 * m.H + u]);
            h[u] = sigmoid(z[3 * m.H + u]) * std::tanh(c[u]);
        }
        hs.row(t) = h.transpose();
    }
    return hs;
}

// recurrent_forward in float at `threads` threads; `gate_rows`: the gate buffer's rows, T where the gates are `kept`
// (otherwise the buffer is a workspace, which runs the steps in chunks).
Matrix<float> lstm_forward(const Lstm& m, bool reverse, int threads, Index gate_rows, bool kept) {
    using rnnfast::detail::LayerWeights;
    const Matrix<float> w_ih = m.w_ih.cast<float>(), w_hh = m.w_hh.cast<float>(), x = m.x.cast<float>(), none(0, m.H);
    const Eigen::Matrix<float, 1, Eigen::Dynamic> b_ih = m.b_ih.cast<float>(), b_hh = m.b_hh.cast<float>();
    const Matrix<float> no_proj(0, m.H);
    LayerWeights<float> wt{w_ih, w_hh, b_ih, b_hh, no_proj};
    Matrix<float> hs(m.T, m.H), gates(gate_rows, 4 * m.H), aux(m.T, m.H);
    const rnnfast::test::ThreadsRestored restore;
    rnnfast::set_num_threads(threads);
    rnnfast::detail::recurrent_forward<rnnfast::detail::LstmCell, float>(
        wt, x, none, none, rnnfast::Activation::tanh, reverse, rnnfast::StepLayout::uniform(m.T, 1), hs, gates, aux,
        kept);
    return hs;
}

// Long enough for the projection to run ahead (kMinAheadSteps), narrow enough for the recurrence to stay on one
// thread; W_hh small enough for panels, whose one-row steps alternate direction.
TEST(RecurrentForward, ProjectionAheadGivesTheOneThreadBitsInBothDirections) {
    const Lstm m = make_lstm(300, 24, 24);
    for (bool reverse : {false, true}) {
        const Matrix<double> want = lstm_by_hand(m, reverse);
        for (Index gate_rows : {m.T, Index(70)}) {
            const Matrix<float> one = lstm_forward(m, reverse, 1, gate_rows, gate_rows == m.T);
            EXPECT_LT((one.cast<double>() - want).cwiseAbs().maxCoeff(), 1e-5) << "reverse " << reverse;
            for (int threads : {2, 3}) {
                const Matrix<float> many = lstm_forward(m, reverse, threads, gate_rows, gate_rows == m.T);
                EXPECT_TRUE(many == one) << "reverse " << reverse << ", gate rows " << gate_rows << ", threads "
                                         << threads;
            }
        }
    }
}

// A workspace that holds every step, of more pre-activations than kItemsChunkBytes (600 steps of 4 * 128 floats,
// 1.2 MB), runs in chunks as a smaller one does: the bits of a forward that keeps its gates, on one thread and with
// the projection ahead.
TEST(RecurrentForward, AWorkspaceHoldingEveryStepGivesTheBitsOfKeptGates) {
    const Lstm m = make_lstm(600, 24, 128);
    for (bool reverse : {false, true}) {
        const Matrix<float> kept = lstm_forward(m, reverse, 1, m.T, true);
        EXPECT_LT((kept.cast<double>() - lstm_by_hand(m, reverse)).cwiseAbs().maxCoeff(), 1e-5);
        for (int threads : {1, 2}) {
            EXPECT_TRUE(lstm_forward(m, reverse, threads, m.T, false) == kept)
                << "reverse " << reverse << ", threads " << threads;
        }
    }
}

// A gate buffer too small for its role is refused before any step: kept gates of fewer rows than the steps, a
// workspace of fewer than one step's.
TEST(RecurrentForward, RefusesAGateBufferTooSmallForItsRole) {
    const Lstm m = make_lstm(10, 4, 4);
    EXPECT_THROW(lstm_forward(m, false, 1, 9, true), std::invalid_argument);
    EXPECT_THROW(lstm_forward(m, false, 1, 0, false), std::invalid_argument);
    EXPECT_LT((lstm_forward(m, false, 1, 1, false).cast<double>() - lstm_by_hand(m, false)).cwiseAbs().maxCoeff(),
              1e-5);  // one step's rows suffice
}

// weight_rows_product against a double product, for both forms of the weight, each start of the rows (zeros, a bias,
// what dst held), widths that end in a partial packet, a depth of several blocks and chunks of rows between
// interruption points; and the same bits at every thread count.
TEST(WeightRowsProduct, MatchesTheProductAndItsBitsDoNotDependOnThreads) {
    std::mt19937 gen(11);
    std::normal_distribution<double> normal;
    const auto random = [&](Index rows, Index cols) {
        Matrix<double> m(rows, cols);
        for (Index i = 0; i < m.size(); ++i) m.data()[i] = normal(gen);
        return m;
    };
    for (const auto& [n, cols, depth] : {std::tuple<Index, Index, Index>{1, 1, 1}, {37, 5, 3}, {300, 80, 100},
                                         {129, 70, 600}, {1000, 33, 17}}) {
        const Matrix<double> lhs = random(n, depth), w = random(cols, depth), start = random(n, cols);
        const Eigen::Matrix<double, 1, Eigen::Dynamic> bias = random(1, cols);
        const Matrix<float> lhs_f = lhs.cast<float>(), w_f = w.cast<float>(), wt_f = w_f.transpose(),
                            start_f = start.cast<float>();
        const Eigen::Matrix<float, 1, Eigen::Dynamic> bias_f = bias.cast<float>();
        const Matrix<double> product = lhs_f.cast<double>() * w_f.cast<double>().transpose();
        for (int transposed = 0; transposed < 2; ++transposed) {
            for (int how = 0; how < 3; ++how) {  // dst = product, bias + product, dst + product
                const bool add = how == 2;
                Matrix<double> want = product;
                if (how == 1) want.rowwise() += bias_f.cast<double>();
                if (add) want += start_f.cast<double>();
                Matrix<float> first;
                for (int threads : {1, 2, 3}) {
                    // A chunk of at least 64 rows per ~2^12 multiply-adds a thread: several chunks for the larger.
                    for (double chunk_work : {rnnfast::detail::kChunkWork, 4096.0}) {
                        Matrix<float> dst = start_f;
                        const int before = rnnfast::get_num_threads();
                        rnnfast::set_num_threads(threads);
                        rnnfast::detail::weight_rows_product<float>(dst, lhs_f, transposed ? w_f : wt_f,
                                                                    transposed != 0, add,
                                                                    how == 1 ? bias_f.data() : nullptr, chunk_work);
                        rnnfast::set_num_threads(before);
                        const double scale = 1.0 + want.cwiseAbs().maxCoeff();
                        EXPECT_LE((dst.cast<double>() - want).cwiseAbs().maxCoeff(),
                                  1e-6 * scale * std::sqrt(double(depth)))
                            << n << "x" << cols << "x" << depth << " transposed " << transposed << " how " << how;
                        if (first.size() == 0) first = dst;
                        EXPECT_TRUE(dst == first) << n << "x" << cols << "x" << depth << " transposed " << transposed
                                                  << " how " << how << " threads " << threads;
                    }
                }
            }
        }
    }
}

}  // namespace
