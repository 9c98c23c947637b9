// Unit tests of the one-step and one-layer Elman kernels (rnnfast/elman.hpp).
//
// Forward results are checked against a naive loop written here; gradients against centered finite
// differences of a scalar loss computed with that naive loop, so no expected value comes from the code under
// test.
#include <gtest/gtest.h>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "rnnfast/config.hpp"
#include "rnnfast/elman.hpp"

#include "helpers.hpp"

namespace {

using rnnfast::Activation;
using rnnfast::Index;
using rnnfast::RowMatrix;
using rnnfast::RowVector;
using rnnfast::test::all_close;
using rnnfast::test::bitwise_equal;
using rnnfast::test::MatD;
using rnnfast::test::numeric_grad;
using rnnfast::test::random_matrix;
using VecD = RowVector<double>;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kFdTol = 1e-6;   // relative tolerance of the gradient checks
constexpr double kReluMargin = 0.05;  // relu pre-activations are kept at least this far from the kink

VecD random_vector(std::mt19937& rng, Index n, double scale = 1.0) {
    std::uniform_real_distribution<double> dist(-scale, scale);
    VecD v(n);
    for (Index i = 0; i < n; ++i) v(i) = dist(rng);
    return v;
}

double apply_activation(double z, Activation act) {
    if (act == Activation::tanh) return std::tanh(z);
    return z > 0.0 ? z : 0.0;
}

// h_new(b, j) = act(sum_i x(b, i) w_ih(j, i) + sum_k h(b, k) w_hh(j, k) + b_ih(j) + b_hh(j)), with explicit loops.
// h may have 0 rows (zeros) and the biases size 0 (none). The smallest |pre-activation| goes to *min_abs_pre.
MatD naive_cell(const MatD& x, const MatD& h, const MatD& w_ih, const MatD& w_hh, const VecD& b_ih,
                const VecD& b_hh, Activation act, double* min_abs_pre = nullptr) {
    const Index B = x.rows(), I = x.cols(), H = w_ih.rows();
    MatD out(B, H);
    for (Index b = 0; b < B; ++b) {
        for (Index j = 0; j < H; ++j) {
            double z = 0.0;
            for (Index i = 0; i < I; ++i) z += x(b, i) * w_ih(j, i);
            if (h.rows() != 0) {
                for (Index k = 0; k < H; ++k) z += h(b, k) * w_hh(j, k);
            }
            if (b_ih.size() != 0) z += b_ih(j) + b_hh(j);
            if (min_abs_pre != nullptr) *min_abs_pre = std::min(*min_abs_pre, std::abs(z));
            out(b, j) = apply_activation(z, act);
        }
    }
    return out;
}

// One direction over T steps, one naive_cell per step; the reverse direction visits t = T-1 .. 0 and stores
// the state reached at step t in row block t.
MatD naive_layer(const MatD& x, const MatD& h0, const MatD& w_ih, const MatD& w_hh, const VecD& b_ih,
                 const VecD& b_hh, Activation act, bool reverse, Index T, double* min_abs_pre = nullptr) {
    const Index B = x.rows() / T, H = w_ih.rows();
    MatD hs(x.rows(), H);
    MatD h = h0.rows() != 0 ? h0 : MatD(MatD::Zero(B, H));
    for (Index s = 0; s < T; ++s) {
        const Index t = reverse ? T - 1 - s : s;
        const MatD xt = x.middleRows(t * B, B);
        h = naive_cell(xt, h, w_ih, w_hh, b_ih, b_hh, act, min_abs_pre);
        hs.middleRows(t * B, B) = h;
    }
    return hs;
}

template <class T>
double forward_tol() {
    return std::is_same<T, float>::value ? 2e-5 : 1e-12;
}

const char* act_str(Activation act) { return act == Activation::tanh ? "tanh" : "relu"; }

// ---------------------------------------------------------------------------------------------------------------
// Forward, float and double.

template <class T>
class ElmanForward : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(ElmanForward, Scalars);

TYPED_TEST(ElmanForward, CellMatchesNaiveLoop) {
    using T = TypeParam;
    using Mat = RowMatrix<T>;
    using Vec = RowVector<T>;
    const Index B = 3, I = 5, H = 4;
    std::mt19937 rng(11);
    for (Activation act : {Activation::tanh, Activation::relu}) {
        for (bool bias : {true, false}) {
            for (bool h_given : {true, false}) {
                std::ostringstream trace;
                trace << act_str(act) << " bias=" << bias << " h_given=" << h_given;
                SCOPED_TRACE(trace.str());
                const Mat x = random_matrix(rng, B, I).cast<T>();
                const Mat h = h_given ? Mat(random_matrix(rng, B, H).cast<T>()) : Mat(0, H);
                const Mat w_ih = random_matrix(rng, H, I, 0.7).cast<T>();
                const Mat w_hh = random_matrix(rng, H, H, 0.7).cast<T>();
                const Vec b_ih = bias ? Vec(random_vector(rng, H).cast<T>()) : Vec(0);
                const Vec b_hh = bias ? Vec(random_vector(rng, H).cast<T>()) : Vec(0);
                Mat h_new = Mat::Constant(B, H, std::numeric_limits<T>::quiet_NaN());
                rnnfast::cell_forward<T>(x, h, w_ih, w_hh, b_ih, b_hh, act, h_new);

                const MatD expected = naive_cell(x.template cast<double>(), h.template cast<double>(),
                                                 w_ih.template cast<double>(), w_hh.template cast<double>(),
                                                 b_ih.template cast<double>(), b_hh.template cast<double>(), act);
                EXPECT_TRUE(all_close(h_new, expected, forward_tol<T>()));
                if (act == Activation::relu) {
                    EXPECT_TRUE((h_new.array() >= T(0)).all());
                    EXPECT_TRUE((h_new.array() == T(0)).any()) << "the random data should hit relu's zero branch";
                }
                if (!h_given) {
                    // 0 rows means a zero state.
                    Mat h_new_zero(B, H);
                    rnnfast::cell_forward<T>(x, Mat(Mat::Zero(B, H)), w_ih, w_hh, b_ih, b_hh, act, h_new_zero);
                    EXPECT_TRUE(all_close(h_new, h_new_zero, forward_tol<T>()));
                }
            }
        }
    }
}

TYPED_TEST(ElmanForward, LayerMatchesNaiveLoop) {
    using T = TypeParam;
    using Mat = RowMatrix<T>;
    using Vec = RowVector<T>;
    const Index I = 5, H = 4;
    const T sentinel = T(7.25);
    std::mt19937 rng(12);
    for (Index B : {Index(3), Index(9)})  // 9 rows per step: the packed-weights products
    for (Index seq_len : {Index(1), Index(5)}) {
        for (Activation act : {Activation::tanh, Activation::relu}) {
            for (bool reverse : {false, true}) {
                for (bool bias : {true, false}) {
                    for (bool h0_given : {true, false}) {
                        for (bool strided : {false, true}) {
                            std::ostringstream trace;
                            trace << "B=" << B << " T=" << seq_len << " " << act_str(act) << " reverse=" << reverse
                                  << " bias=" << bias << " h0_given=" << h0_given << " strided=" << strided;
                            SCOPED_TRACE(trace.str());
                            const Index TB = seq_len * B;
                            // Strided: x is columns [1, 1+I) of a [TB, I+3] matrix, hs the right half of [TB, 2H].
                            const Mat x_wide = random_matrix(rng, TB, strided ? I + 3 : I).cast<T>();
                            const Index x_col = strided ? 1 : 0;
                            const Mat h0 = h0_given ? Mat(random_matrix(rng, B, H).cast<T>()) : Mat(0, H);
                            const Mat w_ih = random_matrix(rng, H, I, 0.7).cast<T>();
                            const Mat w_hh = random_matrix(rng, H, H, 0.7).cast<T>();
                            const Vec b_ih = bias ? Vec(random_vector(rng, H).cast<T>()) : Vec(0);
                            const Vec b_hh = bias ? Vec(random_vector(rng, H).cast<T>()) : Vec(0);
                            Mat hs_wide = Mat::Constant(TB, strided ? 2 * H : H, sentinel);
                            const Index hs_col = strided ? H : 0;
                            if (!strided) hs_wide.setConstant(std::numeric_limits<T>::quiet_NaN());

                            rnnfast::layer_forward<T>(x_wide.middleCols(x_col, I), h0, w_ih, w_hh, b_ih, b_hh, act,
                                                      reverse, seq_len, hs_wide.middleCols(hs_col, H));

                            const MatD expected =
                                naive_layer(x_wide.middleCols(x_col, I).template cast<double>(),
                                            h0.template cast<double>(), w_ih.template cast<double>(),
                                            w_hh.template cast<double>(), b_ih.template cast<double>(),
                                            b_hh.template cast<double>(), act, reverse, seq_len);
                            EXPECT_TRUE(all_close(hs_wide.middleCols(hs_col, H), expected, forward_tol<T>()));
                            if (strided) {
                                EXPECT_TRUE((hs_wide.leftCols(H).array() == sentinel).all())
                                    << "columns outside the hs block were written";
                            }
                        }
                    }
                }
            }
        }
    }
}

TEST(ElmanForwardPrecision, FloatAgreesWithDouble) {
    const Index T = 8, B = 4, I = 6, H = 5;
    std::mt19937 rng(13);
    for (Activation act : {Activation::tanh, Activation::relu}) {
        for (bool reverse : {false, true}) {
            SCOPED_TRACE(std::string(act_str(act)) + (reverse ? " reverse" : " forward"));
            const MatD x = random_matrix(rng, T * B, I);
            const MatD h0 = random_matrix(rng, B, H);
            const MatD w_ih = random_matrix(rng, H, I, 0.5);
            const MatD w_hh = random_matrix(rng, H, H, 0.5);
            const VecD b_ih = random_vector(rng, H, 0.3);
            const VecD b_hh = random_vector(rng, H, 0.3);
            MatD hs_d(T * B, H);
            rnnfast::layer_forward<double>(x, h0, w_ih, w_hh, b_ih, b_hh, act, reverse, T, hs_d);
            RowMatrix<float> hs_f(T * B, H);
            rnnfast::layer_forward<float>(x.cast<float>(), h0.cast<float>(), w_ih.cast<float>(), w_hh.cast<float>(),
                                          b_ih.cast<float>(), b_hh.cast<float>(), act, reverse, T, hs_f);
            EXPECT_TRUE(all_close(hs_f, hs_d, 1e-5));

            MatD h_d(B, H);
            rnnfast::cell_forward<double>(x.topRows(B), h0, w_ih, w_hh, b_ih, b_hh, act, h_d);
            RowMatrix<float> h_f(B, H);
            rnnfast::cell_forward<float>(x.topRows(B).cast<float>(), h0.cast<float>(), w_ih.cast<float>(),
                                         w_hh.cast<float>(), b_ih.cast<float>(), b_hh.cast<float>(), act, h_f);
            EXPECT_TRUE(all_close(h_f, h_d, 1e-5));
        }
    }
}

TEST(ElmanForwardEdge, ReluPropagatesNaN) {
    const MatD x = (MatD(2, 1) << kNaN, -2.0).finished();
    const MatD w_ih = MatD::Ones(1, 1), w_hh = MatD::Zero(1, 1);
    MatD h_new(2, 1);
    rnnfast::cell_forward<double>(x, MatD(0, 1), w_ih, w_hh, VecD(0), VecD(0), Activation::relu, h_new);
    EXPECT_TRUE(std::isnan(h_new(0, 0)));
    EXPECT_EQ(h_new(1, 0), 0.0);
}

// ---------------------------------------------------------------------------------------------------------------
// cell_backward against finite differences of L = sum(G .* h_new), double.

struct CellCase {
    Activation act;
    bool bias;
    bool h_given;
    bool dh_wanted;
};

std::string cell_case_name(const ::testing::TestParamInfo<CellCase>& info) {
    const CellCase& c = info.param;
    return std::string(act_str(c.act)) + (c.bias ? "_bias" : "_nobias") + (c.h_given ? "_h" : "_noh") +
           (c.dh_wanted ? "_dh" : "_nodh");
}

class CellBackwardFD : public ::testing::TestWithParam<CellCase> {};

TEST_P(CellBackwardFD, MatchesFiniteDifferences) {
    const CellCase c = GetParam();
    const Index B = 3, I = 4, H = 3;
    std::mt19937 rng(21);
    MatD x, h, w_ih, w_hh, G;
    VecD b_ih, b_hh;
    // Redraw until every relu pre-activation keeps away from 0 (the finite differences must not cross the kink).
    bool found = false;
    for (int attempt = 0; attempt < 1000 && !found; ++attempt) {
        x = random_matrix(rng, B, I);
        h = random_matrix(rng, B, H);  // explicit zeros replace it below when !h_given
        w_ih = random_matrix(rng, H, I, 0.8);
        w_hh = random_matrix(rng, H, H, 0.8);
        b_ih = c.bias ? random_vector(rng, H, 0.5) : VecD(0);
        b_hh = c.bias ? random_vector(rng, H, 0.5) : VecD(0);
        G = random_matrix(rng, B, H);
        if (!c.h_given) h.setZero();
        double min_abs = std::numeric_limits<double>::infinity();
        naive_cell(x, h, w_ih, w_hh, b_ih, b_hh, c.act, &min_abs);
        found = c.act == Activation::tanh || min_abs > kReluMargin;
    }
    ASSERT_TRUE(found);

    auto loss = [&] { return (G.array() * naive_cell(x, h, w_ih, w_hh, b_ih, b_hh, c.act).array()).sum(); };
    const MatD g_x = numeric_grad(x.data(), B, I, loss);
    const MatD g_h = numeric_grad(h.data(), B, H, loss);
    const MatD g_w_ih = numeric_grad(w_ih.data(), H, I, loss);
    const MatD g_w_hh = numeric_grad(w_hh.data(), H, H, loss);
    MatD g_b_ih, g_b_hh;
    if (c.bias) {
        g_b_ih = numeric_grad(b_ih.data(), 1, H, loss);
        g_b_hh = numeric_grad(b_hh.data(), 1, H, loss);
    }

    const MatD h_arg = c.h_given ? h : MatD(0, H);
    MatD h_new(B, H);
    rnnfast::cell_forward<double>(x, h_arg, w_ih, w_hh, b_ih, b_hh, c.act, h_new);

    // Outputs documented "=" start as NaN; accumulated ones start from random values.
    MatD dx = MatD::Constant(B, I, kNaN);
    MatD dh = c.dh_wanted ? MatD(MatD::Constant(B, H, kNaN)) : MatD(0, H);
    const MatD dw_ih0 = random_matrix(rng, H, I), dw_hh0 = random_matrix(rng, H, H);
    const VecD db_ih0 = c.bias ? random_vector(rng, H) : VecD(0), db_hh0 = c.bias ? random_vector(rng, H) : VecD(0);
    MatD dw_ih = dw_ih0, dw_hh = dw_hh0;
    VecD db_ih = db_ih0, db_hh = db_hh0;
    rnnfast::cell_backward<double>(x, h_arg, w_ih, w_hh, h_new, G, c.act, dx, dh, dw_ih, dw_hh, db_ih, db_hh);

    EXPECT_TRUE(all_close(dx, g_x, kFdTol)) << "dx";
    if (c.dh_wanted) {
        EXPECT_TRUE(all_close(dh, g_h, kFdTol)) << "dh";
    } else {
        EXPECT_EQ(dh.rows(), 0);
    }
    EXPECT_TRUE(all_close(dw_ih, dw_ih0 + g_w_ih, kFdTol)) << "dw_ih";
    if (c.h_given) {
        EXPECT_TRUE(all_close(dw_hh, dw_hh0 + g_w_hh, kFdTol)) << "dw_hh";
    } else {
        // A zero state contributes nothing to dW_hh.
        EXPECT_TRUE(all_close(g_w_hh, MatD::Zero(H, H), kFdTol));
        EXPECT_TRUE(bitwise_equal(dw_hh, dw_hh0)) << "dw_hh";
    }
    if (c.bias) {
        EXPECT_TRUE(all_close(db_ih, db_ih0 + g_b_ih, kFdTol)) << "db_ih";
        EXPECT_TRUE(all_close(db_hh, db_hh0 + g_b_hh, kFdTol)) << "db_hh";
    }
    // The input gradient is nonzero somewhere: the check above is not vacuous.
    EXPECT_GT(g_x.cwiseAbs().maxCoeff(), 1e-3);
}

std::vector<CellCase> cell_cases() {
    std::vector<CellCase> cases;
    for (Activation act : {Activation::tanh, Activation::relu})
        for (bool bias : {true, false})
            for (bool h_given : {true, false})
                for (bool dh_wanted : {true, false}) cases.push_back({act, bias, h_given, dh_wanted});
    return cases;
}

INSTANTIATE_TEST_SUITE_P(All, CellBackwardFD, ::testing::ValuesIn(cell_cases()), cell_case_name);

TEST(CellBackward, AccumulatesIntoParameterGradients) {
    const Index B = 3, I = 4, H = 3;
    std::mt19937 rng(22);
    const MatD x = random_matrix(rng, B, I), h = random_matrix(rng, B, H);
    const MatD w_ih = random_matrix(rng, H, I), w_hh = random_matrix(rng, H, H);
    const VecD b_ih = random_vector(rng, H), b_hh = random_vector(rng, H);
    const MatD G = random_matrix(rng, B, H);
    MatD h_new(B, H);
    rnnfast::cell_forward<double>(x, h, w_ih, w_hh, b_ih, b_hh, Activation::tanh, h_new);

    MatD dx1(B, I), dh1(B, H), dx2(B, I), dh2(B, H);
    MatD dw_ih = MatD::Zero(H, I), dw_hh = MatD::Zero(H, H);
    VecD db_ih = VecD::Zero(H), db_hh = VecD::Zero(H);
    rnnfast::cell_backward<double>(x, h, w_ih, w_hh, h_new, G, Activation::tanh, dx1, dh1, dw_ih, dw_hh, db_ih, db_hh);
    const MatD once_ih = dw_ih, once_hh = dw_hh;
    const VecD once_b_ih = db_ih, once_b_hh = db_hh;
    ASSERT_GT(once_ih.cwiseAbs().maxCoeff(), 1e-3);
    rnnfast::cell_backward<double>(x, h, w_ih, w_hh, h_new, G, Activation::tanh, dx2, dh2, dw_ih, dw_hh, db_ih, db_hh);
    EXPECT_TRUE(all_close(dw_ih, 2.0 * once_ih, 1e-12));
    EXPECT_TRUE(all_close(dw_hh, 2.0 * once_hh, 1e-12));
    EXPECT_TRUE(all_close(db_ih, 2.0 * once_b_ih, 1e-12));
    EXPECT_TRUE(all_close(db_hh, 2.0 * once_b_hh, 1e-12));
    // dx and dh are assigned, not accumulated.
    EXPECT_TRUE(all_close(dx2, dx1, 1e-12));
    EXPECT_TRUE(all_close(dh2, dh1, 1e-12));
}

// ---------------------------------------------------------------------------------------------------------------
// layer_backward against finite differences of L = sum(G .* hs) + sum(Gn .* h_n), double.

enum class Upstream { both, hs_only, h_n_only };

struct LayerCase {
    Activation act;
    bool reverse;
    bool bias;
    bool h0_given;
    Upstream upstream;
    bool strided;
};

std::string layer_case_name(const ::testing::TestParamInfo<LayerCase>& info) {
    const LayerCase& c = info.param;
    const char* up = c.upstream == Upstream::both ? "_dhs_dhn" : c.upstream == Upstream::hs_only ? "_dhs" : "_dhn";
    return std::string(act_str(c.act)) + (c.reverse ? "_rev" : "_fwd") + (c.bias ? "_bias" : "_nobias") +
           (c.h0_given ? "_h0" : "_noh0") + up + (c.strided ? "_strided" : "_dense");
}

class LayerBackwardFD : public ::testing::TestWithParam<LayerCase> {};

TEST_P(LayerBackwardFD, MatchesFiniteDifferences) {
    const LayerCase c = GetParam();
    // The strided cases take a batch of 9, enough rows per step for the packed-weights products.
    const Index T = 3, B = c.strided ? 9 : 2, I = 3, H = 2, TB = T * B;
    std::mt19937 rng(c.strided ? 37 : 31);
    MatD x, h0, w_ih, w_hh, G, Gn;
    VecD b_ih, b_hh;
    bool found = false;
    for (int attempt = 0; attempt < 1000 && !found; ++attempt) {
        x = random_matrix(rng, TB, I);
        h0 = c.h0_given ? random_matrix(rng, B, H) : MatD(MatD::Zero(B, H));
        w_ih = random_matrix(rng, H, I, 0.8);
        w_hh = random_matrix(rng, H, H, 0.8);
        b_ih = c.bias ? random_vector(rng, H, 0.5) : VecD(0);
        b_hh = c.bias ? random_vector(rng, H, 0.5) : VecD(0);
        G = c.upstream != Upstream::h_n_only ? random_matrix(rng, TB, H) : MatD(0, H);
        Gn = c.upstream != Upstream::hs_only ? random_matrix(rng, B, H) : MatD(0, H);
        double min_abs = std::numeric_limits<double>::infinity();
        naive_layer(x, h0, w_ih, w_hh, b_ih, b_hh, c.act, c.reverse, T, &min_abs);
        found = c.act == Activation::tanh || min_abs > kReluMargin;
    }
    ASSERT_TRUE(found);

    const Index last = c.reverse ? 0 : T - 1;  // row block of the final state
    auto loss = [&] {
        const MatD hs = naive_layer(x, h0, w_ih, w_hh, b_ih, b_hh, c.act, c.reverse, T);
        double value = 0.0;
        if (G.rows() != 0) value += (G.array() * hs.array()).sum();
        if (Gn.rows() != 0) value += (Gn.array() * hs.middleRows(last * B, B).array()).sum();
        return value;
    };
    const MatD g_x = numeric_grad(x.data(), TB, I, loss);
    const MatD g_h0 = numeric_grad(h0.data(), B, H, loss);
    const MatD g_w_ih = numeric_grad(w_ih.data(), H, I, loss);
    const MatD g_w_hh = numeric_grad(w_hh.data(), H, H, loss);
    MatD g_b_ih, g_b_hh;
    if (c.bias) {
        g_b_ih = numeric_grad(b_ih.data(), 1, H, loss);
        g_b_hh = numeric_grad(b_hh.data(), 1, H, loss);
    }

    // Strided: every sequence matrix is a column block of a wider one.
    const Index pad = c.strided ? 2 : 0, col = c.strided ? 1 : 0;
    MatD x_wide = random_matrix(rng, TB, I + pad);
    x_wide.middleCols(col, I) = x;
    MatD hs_wide = random_matrix(rng, TB, H + pad);
    hs_wide.middleCols(col, H) = naive_layer(x, h0, w_ih, w_hh, b_ih, b_hh, c.act, c.reverse, T);
    MatD dhs_wide = random_matrix(rng, G.rows() != 0 ? TB : 0, H + pad);
    if (G.rows() != 0) dhs_wide.middleCols(col, H) = G;
    const MatD dx_wide0 = random_matrix(rng, TB, I + pad);
    MatD dx_wide = dx_wide0;
    const MatD h0_arg = c.h0_given ? h0 : MatD(0, H);

    MatD dh0 = MatD::Constant(B, H, kNaN);
    MatD dz = MatD::Constant(TB, H, kNaN);
    const MatD dw_ih0 = random_matrix(rng, H, I), dw_hh0 = random_matrix(rng, H, H);
    const VecD db_ih0 = c.bias ? random_vector(rng, H) : VecD(0), db_hh0 = c.bias ? random_vector(rng, H) : VecD(0);
    MatD dw_ih = dw_ih0, dw_hh = dw_hh0;
    VecD db_ih = db_ih0, db_hh = db_hh0;

    rnnfast::layer_backward<double>(x_wide.middleCols(col, I), h0_arg, w_ih, w_hh, hs_wide.middleCols(col, H),
                                    dhs_wide.middleCols(col, H), Gn, c.act, c.reverse, T,
                                    dx_wide.middleCols(col, I), dh0, dw_ih, dw_hh, db_ih, db_hh, dz);

    EXPECT_TRUE(all_close(dx_wide.middleCols(col, I), dx_wide0.middleCols(col, I) + g_x, kFdTol)) << "dx (+=)";
    if (c.strided) {
        EXPECT_TRUE(bitwise_equal(dx_wide.leftCols(col), dx_wide0.leftCols(col))) << "dx: padding written";
        EXPECT_TRUE(bitwise_equal(dx_wide.rightCols(pad - col), dx_wide0.rightCols(pad - col)))
            << "dx: padding written";
    }
    EXPECT_TRUE(all_close(dh0, g_h0, kFdTol)) << "dh0";
    EXPECT_TRUE(all_close(dw_ih, dw_ih0 + g_w_ih, kFdTol)) << "dw_ih";
    EXPECT_TRUE(all_close(dw_hh, dw_hh0 + g_w_hh, kFdTol)) << "dw_hh";
    if (c.bias) {
        EXPECT_TRUE(all_close(db_ih, db_ih0 + g_b_ih, kFdTol)) << "db_ih";
        EXPECT_TRUE(all_close(db_hh, db_hh0 + g_b_hh, kFdTol)) << "db_hh";
    }
    EXPECT_GT(g_w_hh.cwiseAbs().maxCoeff(), 1e-3) << "the recurrent gradient should not vanish here";
}

std::vector<LayerCase> layer_cases() {
    std::vector<LayerCase> cases;
    for (Activation act : {Activation::tanh, Activation::relu})
        for (bool reverse : {false, true})
            for (bool bias : {true, false})
                for (bool h0_given : {true, false})
                    for (Upstream up : {Upstream::both, Upstream::hs_only, Upstream::h_n_only})
                        for (bool strided : {false, true}) cases.push_back({act, reverse, bias, h0_given, up, strided});
    return cases;
}

INSTANTIATE_TEST_SUITE_P(All, LayerBackwardFD, ::testing::ValuesIn(layer_cases()), layer_case_name);

TEST(LayerBackward, AccumulatesIntoDxAndParameterGradients) {
    const Index T = 4, B = 2, I = 3, H = 3, TB = T * B;
    std::mt19937 rng(32);
    for (bool reverse : {false, true}) {
        SCOPED_TRACE(reverse ? "reverse" : "forward");
        const MatD x = random_matrix(rng, TB, I), h0 = random_matrix(rng, B, H);
        const MatD w_ih = random_matrix(rng, H, I), w_hh = random_matrix(rng, H, H, 0.6);
        const VecD b_ih = random_vector(rng, H), b_hh = random_vector(rng, H);
        const MatD G = random_matrix(rng, TB, H), Gn = random_matrix(rng, B, H);
        MatD hs(TB, H);
        rnnfast::layer_forward<double>(x, h0, w_ih, w_hh, b_ih, b_hh, Activation::tanh, reverse, T, hs);

        MatD dx = MatD::Zero(TB, I), dh0_1(B, H), dh0_2(B, H), dz(TB, H);
        MatD dw_ih = MatD::Zero(H, I), dw_hh = MatD::Zero(H, H);
        VecD db_ih = VecD::Zero(H), db_hh = VecD::Zero(H);
        rnnfast::layer_backward<double>(x, h0, w_ih, w_hh, hs, G, Gn, Activation::tanh, reverse, T, dx, dh0_1, dw_ih,
                                        dw_hh, db_ih, db_hh, dz);
        const MatD once_x = dx, once_ih = dw_ih, once_hh = dw_hh;
        const VecD once_b_ih = db_ih, once_b_hh = db_hh;
        ASSERT_GT(once_x.cwiseAbs().maxCoeff(), 1e-3);
        ASSERT_GT(once_hh.cwiseAbs().maxCoeff(), 1e-3);
        rnnfast::layer_backward<double>(x, h0, w_ih, w_hh, hs, G, Gn, Activation::tanh, reverse, T, dx, dh0_2, dw_ih,
                                        dw_hh, db_ih, db_hh, dz);
        EXPECT_TRUE(all_close(dx, 2.0 * once_x, 1e-12)) << "dx";
        EXPECT_TRUE(all_close(dw_ih, 2.0 * once_ih, 1e-12)) << "dw_ih";
        EXPECT_TRUE(all_close(dw_hh, 2.0 * once_hh, 1e-12)) << "dw_hh";
        EXPECT_TRUE(all_close(db_ih, 2.0 * once_b_ih, 1e-12)) << "db_ih";
        EXPECT_TRUE(all_close(db_hh, 2.0 * once_b_hh, 1e-12)) << "db_hh";
        EXPECT_TRUE(all_close(dh0_2, dh0_1, 1e-12)) << "dh0 is assigned, not accumulated";
    }
}

TEST(LayerBackward, FloatAgreesWithDouble) {
    const Index T = 5, B = 3, I = 4, H = 3, TB = T * B;
    std::mt19937 rng(33);
    for (bool reverse : {false, true}) {
        SCOPED_TRACE(reverse ? "reverse" : "forward");
        const MatD x = random_matrix(rng, TB, I), h0 = random_matrix(rng, B, H);
        const MatD w_ih = random_matrix(rng, H, I, 0.6), w_hh = random_matrix(rng, H, H, 0.6);
        const VecD b_ih = random_vector(rng, H), b_hh = random_vector(rng, H);
        const MatD G = random_matrix(rng, TB, H), Gn = random_matrix(rng, B, H);

        MatD hs(TB, H), dx = MatD::Zero(TB, I), dh0(B, H), dz(TB, H);
        MatD dw_ih = MatD::Zero(H, I), dw_hh = MatD::Zero(H, H);
        VecD db_ih = VecD::Zero(H), db_hh = VecD::Zero(H);
        rnnfast::layer_forward<double>(x, h0, w_ih, w_hh, b_ih, b_hh, Activation::tanh, reverse, T, hs);
        rnnfast::layer_backward<double>(x, h0, w_ih, w_hh, hs, G, Gn, Activation::tanh, reverse, T, dx, dh0, dw_ih,
                                        dw_hh, db_ih, db_hh, dz);

        using MatF = RowMatrix<float>;
        using VecF = RowVector<float>;
        const MatF xf = x.cast<float>(), h0f = h0.cast<float>(), w_ihf = w_ih.cast<float>(), w_hhf = w_hh.cast<float>();
        MatF hsf(TB, H), dxf = MatF::Zero(TB, I), dh0f(B, H), dzf(TB, H);
        MatF dw_ihf = MatF::Zero(H, I), dw_hhf = MatF::Zero(H, H);
        VecF db_ihf = VecF::Zero(H), db_hhf = VecF::Zero(H);
        rnnfast::layer_forward<float>(xf, h0f, w_ihf, w_hhf, b_ih.cast<float>(), b_hh.cast<float>(), Activation::tanh,
                                      reverse, T, hsf);
        rnnfast::layer_backward<float>(xf, h0f, w_ihf, w_hhf, hsf, G.cast<float>(), Gn.cast<float>(),
                                       Activation::tanh, reverse, T, dxf, dh0f, dw_ihf, dw_hhf, db_ihf, db_hhf, dzf);
        EXPECT_TRUE(all_close(dxf, dx, 1e-4)) << "dx";
        EXPECT_TRUE(all_close(dh0f, dh0, 1e-4)) << "dh0";
        EXPECT_TRUE(all_close(dw_ihf, dw_ih, 1e-4)) << "dw_ih";
        EXPECT_TRUE(all_close(dw_hhf, dw_hh, 1e-4)) << "dw_hh";
        EXPECT_TRUE(all_close(db_ihf, db_ih, 1e-4)) << "db_ih";
    }
}

TEST(LayerBackward, RejectsNonPositiveSeqLen) {
    const Index B = 2, I = 3, H = 2;
    const MatD x(0, I), w_ih = MatD::Zero(H, I), w_hh = MatD::Zero(H, H), hs(0, H);
    MatD dx(0, I), dh0(B, H), dw_ih = MatD::Zero(H, I), dw_hh = MatD::Zero(H, H), dz(0, H);
    VecD db_ih(0), db_hh(0);
    EXPECT_THROW(rnnfast::layer_backward<double>(x, MatD(0, H), w_ih, w_hh, hs, MatD(0, H), MatD(0, H),
                                                 Activation::tanh, false, 0, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dz),
                 std::invalid_argument);
}

}  // namespace

// The recurrence in chunks of steps (a workspace smaller than all rows) gives the one-chunk results, which the
// finite-difference tests above check; and dx with 0 rows skips only the input gradient.
TEST(LayerBackward, ChunkedWorkspaceAndSkippedDxMatchOneChunk) {
    const Index I = 4, H = 5;
    std::mt19937 rng(34);
    // Batches of 3 (matrix-vector steps) and 9 (W_hh packed once, and kept across the chunks).
    const std::vector<std::vector<Index>> layouts = {{3, 3, 3, 3, 3, 3}, {3, 3, 2, 2, 1, 0}, {9, 9, 9, 9, 9, 9},
                                                     {9, 9, 8, 5, 2, 0}};
    for (const auto& sizes : layouts) {
        const rnnfast::StepLayout steps = rnnfast::StepLayout::packed(sizes);
        const Index R = steps.rows(), B = steps.size(0);
        for (bool reverse : {false, true}) {
            for (bool with_h0 : {false, true}) {
                SCOPED_TRACE("B=" + std::to_string(B) + (steps.is_uniform() ? " uniform" : " packed") + (reverse ? " reverse" : " forward") +
                             (with_h0 ? " h0" : " no h0"));
                const MatD x = random_matrix(rng, R, I), h0 = with_h0 ? random_matrix(rng, B, H) : MatD(0, H);
                const MatD w_ih = random_matrix(rng, H, I, 0.6), w_hh = random_matrix(rng, H, H, 0.6);
                const VecD b_ih = random_vector(rng, H), b_hh = random_vector(rng, H);
                const MatD G = random_matrix(rng, R, H), Gn = random_matrix(rng, B, H);
                MatD hs(R, H);
                rnnfast::layer_forward<double>(x, h0, w_ih, w_hh, b_ih, b_hh, Activation::tanh, reverse, steps, hs);

                struct Result {
                    MatD dx, dh0, dw_ih, dw_hh;
                    VecD db_ih, db_hh;
                };
                auto run = [&](Index workspace_rows, bool want_dx) {
                    Result r{want_dx ? MatD::Zero(R, I) : MatD(0, I), MatD(B, H), MatD::Zero(H, I), MatD::Zero(H, H),
                             VecD::Zero(H), VecD::Zero(H)};
                    MatD dz(workspace_rows, H);
                    rnnfast::layer_backward<double>(x, h0, w_ih, w_hh, hs, G, Gn, Activation::tanh, reverse, steps, r.dx,
                                                    r.dh0, r.dw_ih, r.dw_hh, r.db_ih, r.db_hh, dz);
                    return r;
                };
                const Result one = run(R, true);
                for (Index rows = steps.size(0); rows < R; ++rows) {
                    SCOPED_TRACE("workspace rows " + std::to_string(rows));
                    const Result chunked = run(rows, rows % 2 == 0);
                    if (chunked.dx.rows() != 0) EXPECT_TRUE(all_close(chunked.dx, one.dx, 1e-12)) << "dx";
                    EXPECT_TRUE(all_close(chunked.dh0, one.dh0, 1e-12)) << "dh0";
                    EXPECT_TRUE(all_close(chunked.dw_ih, one.dw_ih, 1e-12)) << "dw_ih";
                    EXPECT_TRUE(all_close(chunked.dw_hh, one.dw_hh, 1e-12)) << "dw_hh";
                    EXPECT_TRUE(all_close(chunked.db_ih, one.db_ih, 1e-12)) << "db_ih";
                    EXPECT_TRUE(all_close(chunked.db_hh, one.db_hh, 1e-12)) << "db_hh";
                }
                MatD too_small(steps.size(0) - 1, H), dx(R, I), dh0(B, H), dw_ih(H, I), dw_hh(H, H);
                VecD db_ih(H), db_hh(H);
                EXPECT_THROW(rnnfast::layer_backward<double>(x, h0, w_ih, w_hh, hs, G, Gn, Activation::tanh, reverse, steps,
                                                             dx, dh0, dw_ih, dw_hh, db_ih, db_hh, too_small),
                             std::invalid_argument);
            }
        }
    }
}

// Two threads split a layer's recurrence by items (20 items: 10 each) or by bands of columns (6 items); both give
// the one-thread results, and the forward matches the naive loop.
TEST(LayerThreads, ItemAndBandSplitsMatchOneThread) {
    const Index I = 5, H = 70, T = 6;
    std::mt19937 rng(35);
    const int before = rnnfast::get_num_threads();
    for (Index B : {Index(20), Index(6)}) {
        const std::vector<std::vector<Index>> layouts = {std::vector<Index>(static_cast<size_t>(T), B),
                                                         {B, B, B - 2, B - 3, 2, 1}};
        for (const auto& sizes : layouts) {
            const rnnfast::StepLayout steps = rnnfast::StepLayout::packed(sizes);
            const Index R = steps.rows();
            for (bool reverse : {false, true}) {
                SCOPED_TRACE("B=" + std::to_string(B) + (steps.is_uniform() ? " uniform" : " packed") +
                             (reverse ? " reverse" : " forward"));
                const MatD x = random_matrix(rng, R, I), h0 = random_matrix(rng, B, H, 0.5);
                const MatD w_ih = random_matrix(rng, H, I, 0.3), w_hh = random_matrix(rng, H, H, 0.15);
                const VecD b_ih = random_vector(rng, H), b_hh = random_vector(rng, H);
                const MatD G = random_matrix(rng, R, H), Gn = random_matrix(rng, B, H);
                struct Result {
                    MatD hs, dx, dh0, dw_ih, dw_hh;
                    VecD db;
                };
                // One thread with a workspace for all rows (one chunk); two with one of two steps (three chunks).
                auto run = [&](int threads) {
                    rnnfast::set_num_threads(threads);
                    Result r{MatD(R, H), MatD::Zero(R, I), MatD(B, H), MatD::Zero(H, I), MatD::Zero(H, H), VecD::Zero(H)};
                    VecD db_hh = VecD::Zero(H);
                    MatD dz(threads == 1 ? R : 2 * B, H);
                    rnnfast::layer_forward<double>(x, h0, w_ih, w_hh, b_ih, b_hh, Activation::tanh, reverse, steps, r.hs);
                    rnnfast::layer_backward<double>(x, h0, w_ih, w_hh, r.hs, G, Gn, Activation::tanh, reverse, steps, r.dx,
                                                    r.dh0, r.dw_ih, r.dw_hh, r.db, db_hh, dz);
                    return r;
                };
                const Result one = run(1), two = run(2);
                if (steps.is_uniform()) {
                    EXPECT_TRUE(all_close(one.hs, naive_layer(x, h0, w_ih, w_hh, b_ih, b_hh, Activation::tanh, reverse, T),
                                          1e-12));
                }
                EXPECT_TRUE(all_close(two.hs, one.hs, 1e-12)) << "hs";
                EXPECT_TRUE(all_close(two.dx, one.dx, 1e-12)) << "dx";
                EXPECT_TRUE(all_close(two.dh0, one.dh0, 1e-12)) << "dh0";
                EXPECT_TRUE(all_close(two.dw_ih, one.dw_ih, 1e-12)) << "dw_ih";
                EXPECT_TRUE(all_close(two.dw_hh, one.dw_hh, 1e-12)) << "dw_hh";
                EXPECT_TRUE(all_close(two.db, one.db, 1e-12)) << "db";
                EXPECT_GT(one.dw_hh.cwiseAbs().maxCoeff(), 1e-3);
            }
        }
    }
    rnnfast::set_num_threads(before);
}
