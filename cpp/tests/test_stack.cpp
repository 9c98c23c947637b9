// Unit tests of the layer/direction driver (rnnfast/stack.hpp): parameter layout, configuration checks,
// stack_forward against a naive multi-layer loop written here and stack_backward against centered finite
// differences of that loop.
#include <gtest/gtest.h>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "rnnfast/interrupt.hpp"
#include "rnnfast/stack.hpp"

#include "helpers.hpp"

namespace {

using rnnfast::Activation;
using rnnfast::Index;
using rnnfast::ParamSpec;
using rnnfast::RowMatrix;
using rnnfast::RowVector;
using rnnfast::StackCache;
using rnnfast::StackConfig;
using rnnfast::test::all_close;
using rnnfast::test::bitwise_equal;
using rnnfast::test::MatD;
using rnnfast::test::numeric_grad;
using rnnfast::test::random_matrix;
using VecD = RowVector<double>;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kFdTol = 1e-6;
constexpr double kReluMargin = 0.05;

StackConfig make_config(Index input, Index hidden, Index layers, bool bidirectional, bool bias,
                        Activation act = Activation::tanh) {
    StackConfig cfg;
    cfg.input_size = input;
    cfg.hidden_size = hidden;
    cfg.num_layers = layers;
    cfg.bidirectional = bidirectional;
    cfg.bias = bias;
    cfg.activation = act;
    return cfg;
}

std::string config_str(const StackConfig& cfg) {
    std::ostringstream s;
    s << "I=" << cfg.input_size << " H=" << cfg.hidden_size << " L=" << cfg.num_layers
      << " bidirectional=" << cfg.bidirectional << " bias=" << cfg.bias
      << " act=" << (cfg.activation == Activation::tanh ? "tanh" : "relu");
    return s.str();
}

std::vector<double> random_params(std::mt19937& rng, Index n, double scale) {
    std::uniform_real_distribution<double> dist(-scale, scale);
    std::vector<double> p(static_cast<size_t>(n));
    for (double& v : p) v = dist(rng);
    return p;
}

// Inverted-dropout style masks: each entry 0 or 2 with probability 1/2.
MatD random_masks(std::mt19937& rng, Index rows, Index cols) {
    std::bernoulli_distribution keep(0.5);
    MatD m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = keep(rng) ? 2.0 : 0.0;
    return m;
}

// ---------------------------------------------------------------------------------------------------------------
// The expected layout, from the specification: PyTorch's nn.RNN parameter order, packed without gaps.

struct Expected {
    std::string name;
    Index offset;
    Index rows;
    Index cols;  // 0: a vector
};

std::vector<Expected> expected_layout(const StackConfig& cfg) {
    const Index H = cfg.hidden_size, D = cfg.bidirectional ? 2 : 1;
    std::vector<Expected> out;
    Index offset = 0;
    auto add = [&](const std::string& name, Index rows, Index cols) {
        out.push_back({name, offset, rows, cols});
        offset += cols == 0 ? rows : rows * cols;
    };
    for (Index l = 0; l < cfg.num_layers; ++l) {
        const Index in = l == 0 ? cfg.input_size : D * H;
        for (Index d = 0; d < D; ++d) {
            const std::string sfx = "_l" + std::to_string(l) + (d == 1 ? "_reverse" : "");
            add("weight_ih" + sfx, H, in);
            add("weight_hh" + sfx, H, H);
            if (cfg.bias) {
                add("bias_ih" + sfx, H, 0);
                add("bias_hh" + sfx, H, 0);
            }
        }
    }
    return out;
}

Index expected_count(const StackConfig& cfg) {
    const Index H = cfg.hidden_size, D = cfg.bidirectional ? 2 : 1, I = cfg.input_size;
    const Index b = cfg.bias ? 2 * H : 0;
    return D * (H * I + H * H + b) + (cfg.num_layers - 1) * D * (H * D * H + H * H + b);
}

MatD take(const double* params, Index offset, Index rows, Index cols) {
    MatD m(rows, cols);
    for (Index i = 0; i < rows * cols; ++i) m.data()[i] = params[offset + i];
    return m;
}

// ---------------------------------------------------------------------------------------------------------------
// Naive reference.

double apply_activation(double z, Activation act) {
    if (act == Activation::tanh) return std::tanh(z);
    return z > 0.0 ? z : 0.0;
}

// One direction of one layer with explicit loops: h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh); the
// reverse direction runs t = T-1 .. 0. Rows are time-major (t*B + b).
MatD naive_layer(const MatD& x, const MatD& h0, const MatD& w_ih, const MatD& w_hh, const VecD& b_ih,
                 const VecD& b_hh, Activation act, bool reverse, Index T, double* min_abs_pre) {
    const Index B = x.rows() / T, I = x.cols(), H = w_ih.rows();
    MatD hs(x.rows(), H);
    MatD h = h0.rows() != 0 ? h0 : MatD(MatD::Zero(B, H));
    for (Index s = 0; s < T; ++s) {
        const Index t = reverse ? T - 1 - s : s;
        MatD h_new(B, H);
        for (Index b = 0; b < B; ++b) {
            for (Index j = 0; j < H; ++j) {
                double z = 0.0;
                for (Index i = 0; i < I; ++i) z += x(t * B + b, i) * w_ih(j, i);
                for (Index k = 0; k < H; ++k) z += h(b, k) * w_hh(j, k);
                if (b_ih.size() != 0) z += b_ih(j) + b_hh(j);
                if (min_abs_pre != nullptr) *min_abs_pre = std::min(*min_abs_pre, std::abs(z));
                h_new(b, j) = apply_activation(z, act);
            }
        }
        h = h_new;
        hs.middleRows(t * B, B) = h;
    }
    return hs;
}

struct NaiveStack {
    MatD output;
    MatD h_n;
    std::vector<MatD> ys;  // every layer's output before dropout
};

// Layers in sequence; layer l > 0 reads layer l-1's output times its mask; directions side by side [fwd | rev];
// h_n rows (l*D + d)*B .. + B, the reverse direction's final state being the one at t = 0.
NaiveStack naive_stack(const StackConfig& cfg, const double* params, const MatD& x, Index T, const MatD& h0,
                       const MatD& masks, double* min_abs_pre = nullptr) {
    const Index L = cfg.num_layers, D = cfg.bidirectional ? 2 : 1, H = cfg.hidden_size;
    const Index TB = x.rows(), B = TB / T;
    const std::vector<Expected> layout = expected_layout(cfg);
    NaiveStack r;
    r.h_n.resize(L * D * B, H);
    size_t k = 0;
    MatD in = x;
    for (Index l = 0; l < L; ++l) {
        MatD y(TB, D * H);
        for (Index d = 0; d < D; ++d) {
            const Expected& wi = layout[k++];
            const Expected& wh = layout[k++];
            const MatD w_ih = take(params, wi.offset, wi.rows, wi.cols);
            const MatD w_hh = take(params, wh.offset, wh.rows, wh.cols);
            VecD b_ih(0), b_hh(0);
            if (cfg.bias) {
                b_ih = take(params, layout[k++].offset, 1, H);
                b_hh = take(params, layout[k++].offset, 1, H);
            }
            const Index ld = l * D + d;
            const MatD h0_ld = h0.rows() != 0 ? MatD(h0.middleRows(ld * B, B)) : MatD(0, H);
            const MatD hs = naive_layer(in, h0_ld, w_ih, w_hh, b_ih, b_hh, cfg.activation, d == 1, T, min_abs_pre);
            y.middleCols(d * H, H) = hs;
            r.h_n.middleRows(ld * B, B) = hs.middleRows((d == 1 ? 0 : T - 1) * B, B);
        }
        r.ys.push_back(y);
        in = y;
        if (l < L - 1 && masks.rows() != 0) in = y.cwiseProduct(masks.middleRows(l * TB, TB));
    }
    r.output = r.ys.back();
    return r;
}

template <class T>
double forward_tol() {
    return std::is_same<T, float>::value ? 3e-5 : 1e-12;
}

// ---------------------------------------------------------------------------------------------------------------
// param_layout / param_count.

TEST(ParamLayout, TwoLayerBidirectionalByHand) {
    // I=3, H=2: weight_ih_l0 2x3, weight_hh 2x2, biases 2; weight_ih_l1 2x4 (D*H = 4 inputs).
    const StackConfig cfg = make_config(3, 2, 2, true, true);
    const std::vector<Expected> want = {
        {"weight_ih_l0", 0, 2, 3},          {"weight_hh_l0", 6, 2, 2},          {"bias_ih_l0", 10, 2, 0},
        {"bias_hh_l0", 12, 2, 0},           {"weight_ih_l0_reverse", 14, 2, 3}, {"weight_hh_l0_reverse", 20, 2, 2},
        {"bias_ih_l0_reverse", 24, 2, 0},   {"bias_hh_l0_reverse", 26, 2, 0},   {"weight_ih_l1", 28, 2, 4},
        {"weight_hh_l1", 36, 2, 2},         {"bias_ih_l1", 40, 2, 0},           {"bias_hh_l1", 42, 2, 0},
        {"weight_ih_l1_reverse", 44, 2, 4}, {"weight_hh_l1_reverse", 52, 2, 2}, {"bias_ih_l1_reverse", 56, 2, 0},
        {"bias_hh_l1_reverse", 58, 2, 0},
    };
    const std::vector<ParamSpec> got = rnnfast::param_layout(cfg);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
        SCOPED_TRACE(want[i].name);
        EXPECT_EQ(got[i].name, want[i].name);
        EXPECT_EQ(got[i].offset, want[i].offset);
        EXPECT_EQ(got[i].rows, want[i].rows);
        EXPECT_EQ(got[i].cols, want[i].cols);
    }
    EXPECT_EQ(rnnfast::param_count(cfg), 60);
}

TEST(ParamLayout, NamesOrderShapesAndContiguousOffsets) {
    for (Index L = 1; L <= 3; ++L) {
        for (bool bidir : {false, true}) {
            for (bool bias : {true, false}) {
                const StackConfig cfg = make_config(3, 5, L, bidir, bias);
                SCOPED_TRACE(config_str(cfg));
                const std::vector<ParamSpec> got = rnnfast::param_layout(cfg);
                const std::vector<Expected> want = expected_layout(cfg);
                ASSERT_EQ(got.size(), want.size());
                ASSERT_EQ(got.size(), static_cast<size_t>(L * (bidir ? 2 : 1) * (bias ? 4 : 2)));
                Index next = 0;
                for (size_t i = 0; i < got.size(); ++i) {
                    SCOPED_TRACE(want[i].name);
                    EXPECT_EQ(got[i].name, want[i].name);
                    EXPECT_EQ(got[i].rows, want[i].rows);
                    EXPECT_EQ(got[i].cols, want[i].cols);
                    EXPECT_EQ(got[i].offset, next) << "offsets must be contiguous";
                    EXPECT_EQ(got[i].size(), got[i].cols == 0 ? got[i].rows : got[i].rows * got[i].cols);
                    next = got[i].offset + got[i].size();
                }
                EXPECT_EQ(next, rnnfast::param_count(cfg)) << "the layout must cover the buffer exactly";
                EXPECT_EQ(rnnfast::param_count(cfg), expected_count(cfg));
            }
        }
    }
}

TEST(ParamLayout, UpperLayerInputIsDirectionsTimesHidden) {
    const std::vector<ParamSpec> uni = rnnfast::param_layout(make_config(7, 3, 2, false, false));
    ASSERT_EQ(uni.size(), 4u);
    EXPECT_EQ(uni[0].cols, 7);
    EXPECT_EQ(uni[2].name, "weight_ih_l1");
    EXPECT_EQ(uni[2].cols, 3);
    const std::vector<ParamSpec> bi = rnnfast::param_layout(make_config(7, 3, 2, true, false));
    ASSERT_EQ(bi.size(), 8u);
    EXPECT_EQ(bi[4].name, "weight_ih_l1");
    EXPECT_EQ(bi[4].cols, 6);
    EXPECT_EQ(bi[6].name, "weight_ih_l1_reverse");
    EXPECT_EQ(bi[6].cols, 6);
}

// ---------------------------------------------------------------------------------------------------------------
// StackConfig::validate.

TEST(StackConfigValidate, AcceptsPositiveSizes) {
    EXPECT_NO_THROW(make_config(1, 1, 1, false, false).validate());
    EXPECT_NO_THROW(make_config(1000, 1000, 3, true, true).validate());
    EXPECT_EQ(rnnfast::param_count(make_config(1000, 1000, 3, true, true)),
              2 * (1000 * 1000 + 1000 * 1000 + 2000) + 2 * 2 * (1000 * 2000 + 1000 * 1000 + 2000));
}

TEST(StackConfigValidate, RejectsNonPositiveSizes) {
    for (Index bad : {Index(0), Index(-1), std::numeric_limits<Index>::min()}) {
        SCOPED_TRACE(bad);
        const StackConfig configs[] = {make_config(bad, 4, 1, false, true), make_config(3, bad, 1, false, true),
                                       make_config(3, 4, bad, false, true), make_config(bad, 4, 2, true, true),
                                       make_config(3, bad, 2, true, false), make_config(3, 4, bad, true, false)};
        for (const StackConfig& cfg : configs) {
            EXPECT_THROW(cfg.validate(), std::invalid_argument) << config_str(cfg);
            EXPECT_THROW(rnnfast::param_count(cfg), std::invalid_argument) << config_str(cfg);
            EXPECT_THROW(rnnfast::param_layout(cfg), std::invalid_argument) << config_str(cfg);
        }
    }
}

TEST(StackConfigValidate, RejectsOverflowingSizes) {
    const StackConfig configs[] = {
        make_config(3, Index(1) << 40, 1, false, true),
        make_config(3, Index(1) << 40, 2, true, false),
        make_config(Index(1) << 62, 2, 1, false, true),
        make_config(std::numeric_limits<Index>::max(), 1, 1, false, false),
        make_config(3, 2, Index(1) << 62, true, true),
        make_config(3, 2, std::numeric_limits<Index>::max(), false, false),
        make_config(1, Index(3037000500), 1, false, false),  // H*H alone just exceeds 2^63
        make_config(Index(1) << 32, Index(1) << 32, 1, false, false),
    };
    for (const StackConfig& cfg : configs) {
        EXPECT_THROW(cfg.validate(), std::invalid_argument) << config_str(cfg);
        EXPECT_THROW(rnnfast::param_count(cfg), std::invalid_argument) << config_str(cfg);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// stack_forward.

template <class T>
class StackForward : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(StackForward, Scalars);

TYPED_TEST(StackForward, MatchesNaiveComposition) {
    using T = TypeParam;
    using Mat = RowMatrix<T>;
    const Index S = 4, B = 3, I = 5, H = 4, TB = S * B;
    std::mt19937 rng(41);
    for (Index L = 1; L <= 3; ++L) {
        for (bool bidir : {false, true}) {
            for (bool bias : {true, false}) {
                for (Activation act : {Activation::tanh, Activation::relu}) {
                    for (bool h0_given : {true, false}) {
                        for (bool use_masks : {false, true}) {
                            if (use_masks && L == 1) continue;
                            const StackConfig cfg = make_config(I, H, L, bidir, bias, act);
                            const Index D = cfg.directions(), DH = cfg.output_size();
                            SCOPED_TRACE(config_str(cfg) + " h0_given=" + std::to_string(h0_given) +
                                         " masks=" + std::to_string(use_masks));
                            std::vector<T> params;
                            for (double v : random_params(rng, rnnfast::param_count(cfg), 0.6))
                                params.push_back(static_cast<T>(v));
                            const Mat x = random_matrix(rng, TB, I).cast<T>();
                            const Mat h0 = h0_given ? Mat(random_matrix(rng, L * D * B, H).cast<T>()) : Mat(0, H);
                            const Mat masks =
                                use_masks ? Mat(random_masks(rng, (L - 1) * TB, DH).cast<T>()) : Mat(0, DH);
                            const std::vector<double> params_d(params.begin(), params.end());
                            const NaiveStack want =
                                naive_stack(cfg, params_d.data(), x.template cast<double>(),
                                            S, h0.template cast<double>(), masks.template cast<double>());
                            for (bool cached : {false, true}) {
                                SCOPED_TRACE(cached ? "cached" : "inference");
                                Mat output = Mat::Constant(TB, DH, std::numeric_limits<T>::quiet_NaN());
                                Mat h_n = Mat::Constant(L * D * B, H, std::numeric_limits<T>::quiet_NaN());
                                StackCache<T> cache;
                                rnnfast::stack_forward<T>(cfg, params.data(), x, S, {}, h0, masks, output, h_n,
                                                          cached ? &cache : nullptr);
                                EXPECT_TRUE(all_close(output, want.output, forward_tol<T>())) << "output";
                                EXPECT_TRUE(all_close(h_n, want.h_n, forward_tol<T>())) << "h_n";
                            }
                        }
                    }
                }
            }
        }
    }
}

TYPED_TEST(StackForward, InferenceEqualsCachedBitwise) {
    using T = TypeParam;
    using Mat = RowMatrix<T>;
    const Index S = 6, B = 5, I = 7, H = 9, TB = S * B;
    std::mt19937 rng(42);
    for (Index L = 1; L <= 3; ++L) {
        for (bool bidir : {false, true}) {
            for (bool use_masks : {false, true}) {
                if (use_masks && L == 1) continue;
                const StackConfig cfg = make_config(I, H, L, bidir, true, Activation::tanh);
                const Index D = cfg.directions(), DH = cfg.output_size();
                SCOPED_TRACE(config_str(cfg) + " masks=" + std::to_string(use_masks));
                std::vector<T> params;
                for (double v : random_params(rng, rnnfast::param_count(cfg), 0.4)) params.push_back(static_cast<T>(v));
                const Mat x = random_matrix(rng, TB, I).cast<T>();
                const Mat h0 = random_matrix(rng, L * D * B, H).cast<T>();
                const Mat masks = use_masks ? Mat(random_masks(rng, (L - 1) * TB, DH).cast<T>()) : Mat(0, DH);
                Mat out_inf(TB, DH), hn_inf(L * D * B, H), out_c(TB, DH), hn_c(L * D * B, H);
                rnnfast::stack_forward<T>(cfg, params.data(), x, S, {}, h0, masks, out_inf, hn_inf, nullptr);
                StackCache<T> cache;
                rnnfast::stack_forward<T>(cfg, params.data(), x, S, {}, h0, masks, out_c, hn_c, &cache);
                EXPECT_TRUE(bitwise_equal(out_inf, out_c)) << "output";
                EXPECT_TRUE(bitwise_equal(hn_inf, hn_c)) << "h_n";
            }
        }
    }
}

TEST(StackForwardDetails, CacheHoldsInputsAndStatesBeforeDropout) {
    const Index S = 3, B = 2, I = 3, H = 4, TB = S * B;
    std::mt19937 rng(43);
    const StackConfig cfg = make_config(I, H, 3, true, true);
    const Index L = 3, D = 2, DH = 2 * H;
    const std::vector<double> params = random_params(rng, rnnfast::param_count(cfg), 0.6);
    const MatD x = random_matrix(rng, TB, I);
    const MatD masks = random_masks(rng, (L - 1) * TB, DH);
    for (bool h0_given : {true, false}) {
        SCOPED_TRACE(h0_given ? "h0 given" : "no h0");
        const MatD h0 = h0_given ? random_matrix(rng, L * D * B, H) : MatD(0, H);
        MatD output(TB, DH), h_n(L * D * B, H);
        StackCache<double> cache;
        rnnfast::stack_forward<double>(cfg, params.data(), x, S, {}, h0, masks, output, h_n, &cache);
        const NaiveStack want = naive_stack(cfg, params.data(), x, S, h0, masks);
        EXPECT_EQ(cache.packing.seq_len, S);
        EXPECT_EQ(cache.packing.batch, B);
        EXPECT_TRUE(bitwise_equal(cache.x, x));
        if (h0_given) {
            EXPECT_TRUE(bitwise_equal(cache.h0, h0));
        } else {
            EXPECT_TRUE(bitwise_equal(cache.h0, MatD::Zero(L * D * B, H)));
        }
        EXPECT_TRUE(bitwise_equal(cache.masks, masks));
        ASSERT_EQ(cache.ys.size(), static_cast<size_t>(L));
        for (Index l = 0; l < L; ++l) {
            EXPECT_TRUE(all_close(cache.ys[static_cast<size_t>(l)], want.ys[static_cast<size_t>(l)], 1e-12))
                << "ys[" << l << "] (before dropout)";
        }
    }
}

TEST(StackForwardDetails, DropoutMasksApplyBetweenLayersOnly) {
    const Index S = 3, B = 2, I = 3, H = 3, TB = S * B;
    std::mt19937 rng(44);
    const StackConfig cfg = make_config(I, H, 2, false, true);
    const std::vector<double> params = random_params(rng, rnnfast::param_count(cfg), 0.6);
    const std::vector<Expected> layout = expected_layout(cfg);
    const MatD x = random_matrix(rng, TB, I);
    const MatD h0 = random_matrix(rng, 2 * B, H);
    MatD out_none(TB, H), hn_none(2 * B, H);
    rnnfast::stack_forward<double>(cfg, params.data(), x, S, {}, h0, MatD(0, H), out_none, hn_none, nullptr);

    // All-zero masks: layer 1 sees a zero input, but its own output and every h_n stay unmasked.
    MatD out_zero(TB, H), hn_zero(2 * B, H);
    rnnfast::stack_forward<double>(cfg, params.data(), x, S, {}, h0, MatD::Zero(TB, H), out_zero, hn_zero, nullptr);
    const MatD layer1_zero_input =
        naive_layer(MatD::Zero(TB, H), h0.bottomRows(B), take(params.data(), layout[4].offset, H, H),
                    take(params.data(), layout[5].offset, H, H), take(params.data(), layout[6].offset, 1, H),
                    take(params.data(), layout[7].offset, 1, H), Activation::tanh, false, S, nullptr);
    EXPECT_TRUE(all_close(out_zero, layer1_zero_input, 1e-12));
    EXPECT_GT(out_zero.cwiseAbs().minCoeff(), 0.0) << "the last layer's output must not be masked";
    EXPECT_TRUE(all_close(hn_zero.topRows(B), hn_none.topRows(B), 1e-12)) << "layer 0's h_n is before dropout";
    EXPECT_TRUE(all_close(hn_zero.bottomRows(B), layer1_zero_input.bottomRows(B), 1e-12));

    // All-one masks change nothing.
    MatD out_one(TB, H), hn_one(2 * B, H);
    rnnfast::stack_forward<double>(cfg, params.data(), x, S, {}, h0, MatD::Ones(TB, H), out_one, hn_one, nullptr);
    EXPECT_TRUE(all_close(out_one, out_none, 1e-14));
    EXPECT_TRUE(all_close(hn_one, hn_none, 1e-14));

    // Masks of 2 double layer 1's input.
    MatD out_two(TB, H), hn_two(2 * B, H);
    rnnfast::stack_forward<double>(cfg, params.data(), x, S, {}, h0, MatD::Constant(TB, H, 2.0), out_two, hn_two, nullptr);
    std::vector<double> doubled = params;
    for (Index i = 0; i < layout[4].rows * layout[4].cols; ++i) doubled[static_cast<size_t>(layout[4].offset + i)] *= 2.0;
    MatD out_ref(TB, H), hn_ref(2 * B, H);
    rnnfast::stack_forward<double>(cfg, doubled.data(), x, S, {}, h0, MatD(0, H), out_ref, hn_ref, nullptr);
    EXPECT_TRUE(all_close(out_two, out_ref, 1e-12));
}

TEST(StackForwardDetails, StridedInputOutputAndFinalState) {
    const Index S = 4, B = 3, I = 5, H = 4, TB = S * B;
    const double sentinel = -123.5;
    std::mt19937 rng(45);
    for (Index L : {Index(1), Index(2), Index(3)}) {
        const StackConfig cfg = make_config(I, H, L, true, true);
        const Index D = 2, DH = 2 * H;
        SCOPED_TRACE(config_str(cfg));
        const std::vector<double> params = random_params(rng, rnnfast::param_count(cfg), 0.6);
        const MatD x_wide = random_matrix(rng, TB, I + 3);
        const MatD h0 = random_matrix(rng, L * D * B, H);
        const MatD masks = L > 1 ? random_masks(rng, (L - 1) * TB, DH) : MatD(0, DH);
        const NaiveStack want = naive_stack(cfg, params.data(), x_wide.middleCols(1, I), S, h0, masks);
        for (bool cached : {false, true}) {
            SCOPED_TRACE(cached ? "cached" : "inference");
            MatD out_wide = MatD::Constant(TB, DH + 4, sentinel);
            MatD hn_wide = MatD::Constant(L * D * B, H + 2, sentinel);
            StackCache<double> cache;
            rnnfast::stack_forward<double>(cfg, params.data(), x_wide.middleCols(1, I), S, {}, h0, masks,
                                           out_wide.middleCols(2, DH), hn_wide.middleCols(1, H),
                                           cached ? &cache : nullptr);
            EXPECT_TRUE(all_close(out_wide.middleCols(2, DH), want.output, 1e-12));
            EXPECT_TRUE(all_close(hn_wide.middleCols(1, H), want.h_n, 1e-12));
            EXPECT_TRUE((out_wide.leftCols(2).array() == sentinel).all());
            EXPECT_TRUE((out_wide.rightCols(2).array() == sentinel).all());
            EXPECT_TRUE((hn_wide.leftCols(1).array() == sentinel).all());
            EXPECT_TRUE((hn_wide.rightCols(1).array() == sentinel).all());
        }
    }
}

TEST(StackForwardDetails, BatchSizeZeroRuns) {
    const Index S = 3, I = 3, H = 2;
    const StackConfig cfg = make_config(I, H, 2, true, true);
    std::mt19937 rng(46);
    const std::vector<double> params = random_params(rng, rnnfast::param_count(cfg), 0.5);
    const MatD x(0, I);
    MatD output(0, 2 * H), h_n(0, H);
    EXPECT_NO_THROW(rnnfast::stack_forward<double>(cfg, params.data(), x, S, {}, MatD(0, H), MatD(0, 2 * H), output,
                                                   h_n, nullptr));
    StackCache<double> cache;
    ASSERT_NO_THROW(rnnfast::stack_forward<double>(cfg, params.data(), x, S, {}, MatD(0, H), MatD(0, 2 * H), output,
                                                   h_n, &cache));
    EXPECT_EQ(cache.packing.batch, 0);
    EXPECT_EQ(cache.packing.seq_len, S);

    const std::vector<double> grads0 = random_params(rng, rnnfast::param_count(cfg), 1.0);
    std::vector<double> grads = grads0;
    MatD dx(0, I), dh0(0, H);
    ASSERT_NO_THROW(rnnfast::stack_backward<double>(cfg, params.data(), cache, MatD(0, 2 * H), MatD(0, H), dx, dh0,
                                                    grads.data()));
    EXPECT_EQ(grads, grads0) << "an empty batch contributes no gradient";
}

TEST(StackForwardDetails, RejectsBadSeqLenAndShapes) {
    const Index I = 3, H = 2, B = 2, S = 3;
    const StackConfig cfg = make_config(I, H, 2, false, true);
    const std::vector<double> params(static_cast<size_t>(rnnfast::param_count(cfg)), 0.1);
    {
        MatD output(0, H), h_n(2 * B, H);
        EXPECT_THROW(rnnfast::stack_forward<double>(cfg, params.data(), MatD(0, I), 0, {}, MatD(0, H), MatD(0, H),
                                                    output, h_n, nullptr),
                     std::invalid_argument);
        EXPECT_THROW(rnnfast::stack_forward<double>(cfg, params.data(), MatD(0, I), -1, {}, MatD(0, H), MatD(0, H),
                                                    output, h_n, nullptr),
                     std::invalid_argument);
    }
    const MatD x = MatD::Zero(S * B, I);
    MatD output(S * B, H), h_n(2 * B, H);
    // seq_len 0 with a non-empty input.
    EXPECT_THROW(rnnfast::stack_forward<double>(cfg, params.data(), x, 0, {}, MatD(0, H), MatD(0, H), output, h_n,
                                                nullptr),
                 std::invalid_argument);
    // Rows not a multiple of seq_len.
    EXPECT_THROW(rnnfast::stack_forward<double>(cfg, params.data(), MatD::Zero(S * B + 1, I), S, {}, MatD(0, H),
                                                MatD(0, H), output, h_n, nullptr),
                 std::invalid_argument);
    // Wrong input width, output, h_n, h0 and masks shapes.
    EXPECT_THROW(rnnfast::stack_forward<double>(cfg, params.data(), MatD::Zero(S * B, I + 1), S, {}, MatD(0, H),
                                                MatD(0, H), output, h_n, nullptr),
                 std::invalid_argument);
    MatD bad_output(S * B, H + 1), bad_h_n(B, H);
    EXPECT_THROW(rnnfast::stack_forward<double>(cfg, params.data(), x, S, {}, MatD(0, H), MatD(0, H), bad_output, h_n,
                                                nullptr),
                 std::invalid_argument);
    EXPECT_THROW(rnnfast::stack_forward<double>(cfg, params.data(), x, S, {}, MatD(0, H), MatD(0, H), output, bad_h_n,
                                                nullptr),
                 std::invalid_argument);
    EXPECT_THROW(rnnfast::stack_forward<double>(cfg, params.data(), x, S, {}, MatD::Zero(B, H), MatD(0, H), output,
                                                h_n, nullptr),
                 std::invalid_argument);
    EXPECT_THROW(rnnfast::stack_forward<double>(cfg, params.data(), x, S, {}, MatD(0, H), MatD::Ones(2 * S * B, H),
                                                output, h_n, nullptr),
                 std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------------------------
// stack_backward against finite differences of L = sum(G .* output) + sum(Gn .* h_n), double.

enum class Upstream { both, output_only, h_n_only };

struct StackCase {
    Index layers;
    bool bidirectional;
    bool bias;
    bool masks;
    Upstream upstream;
};

std::string stack_case_name(const ::testing::TestParamInfo<StackCase>& info) {
    const StackCase& c = info.param;
    const char* up = c.upstream == Upstream::both          ? "_dout_dhn"
                     : c.upstream == Upstream::output_only ? "_dout"
                                                           : "_dhn";
    return "L" + std::to_string(c.layers) + (c.bidirectional ? "_bidir" : "_uni") + (c.bias ? "_bias" : "_nobias") +
           (c.masks ? "_masks" : "_nomasks") + up;
}

class StackBackwardFD : public ::testing::TestWithParam<StackCase> {};

TEST_P(StackBackwardFD, MatchesFiniteDifferences) {
    const StackCase c = GetParam();
    const Index S = 3, B = 2, I = 3, H = 2, TB = S * B;
    std::mt19937 rng(51);
    for (Activation act : {Activation::tanh, Activation::relu}) {
        for (bool h0_given : {true, false}) {
            const StackConfig cfg = make_config(I, H, c.layers, c.bidirectional, c.bias, act);
            const Index L = cfg.num_layers, D = cfg.directions(), DH = cfg.output_size(), LDB = L * D * B;
            const Index n = rnnfast::param_count(cfg);
            SCOPED_TRACE(config_str(cfg) + (h0_given ? " h0 given" : " no h0"));

            std::vector<double> params;
            MatD x, h0, masks, G, Gn;
            bool found = false;
            for (int attempt = 0; attempt < 2000 && !found; ++attempt) {
                params = random_params(rng, n, 0.9);
                x = random_matrix(rng, TB, I);
                h0 = h0_given ? random_matrix(rng, LDB, H) : MatD(MatD::Zero(LDB, H));
                masks = c.masks ? random_masks(rng, (L - 1) * TB, DH) : MatD(0, DH);
                G = c.upstream != Upstream::h_n_only ? random_matrix(rng, TB, DH) : MatD(0, DH);
                Gn = c.upstream != Upstream::output_only ? random_matrix(rng, LDB, H) : MatD(0, H);
                double min_abs = std::numeric_limits<double>::infinity();
                const NaiveStack r = naive_stack(cfg, params.data(), x, S, h0, masks, &min_abs);
                // relu: pre-activations away from the kink, and enough live units that gradients reach every layer.
                auto live = [](const MatD& m) { return (m.array() > 0.0).count() * 4 >= m.size(); };
                bool lively = live(r.h_n);
                for (const MatD& y : r.ys) lively = lively && live(y);
                found = act == Activation::tanh || (min_abs > kReluMargin && lively);
            }
            ASSERT_TRUE(found);

            auto loss = [&] {
                const NaiveStack r = naive_stack(cfg, params.data(), x, S, h0, masks);
                double value = 0.0;
                if (G.rows() != 0) value += (G.array() * r.output.array()).sum();
                if (Gn.rows() != 0) value += (Gn.array() * r.h_n.array()).sum();
                return value;
            };
            const MatD g_params = numeric_grad(params.data(), 1, n, loss);
            const MatD g_x = numeric_grad(x.data(), TB, I, loss);
            const MatD g_h0 = numeric_grad(h0.data(), LDB, H, loss);

            const MatD h0_arg = h0_given ? h0 : MatD(0, H);
            MatD output(TB, DH), h_n(LDB, H);
            StackCache<double> cache;
            rnnfast::stack_forward<double>(cfg, params.data(), x, S, {}, h0_arg, masks, output, h_n, &cache);

            MatD dx = MatD::Constant(TB, I, kNaN), dh0 = MatD::Constant(LDB, H, kNaN);
            const std::vector<double> grads0 = random_params(rng, n, 1.0);
            std::vector<double> grads = grads0;
            rnnfast::stack_backward<double>(cfg, params.data(), cache, G, Gn, dx, dh0, grads.data());

            EXPECT_TRUE(all_close(dx, g_x, kFdTol)) << "dx";
            EXPECT_TRUE(all_close(dh0, g_h0, kFdTol)) << "dh0";
            for (const Expected& spec : expected_layout(cfg)) {
                const Index size = spec.cols == 0 ? spec.rows : spec.rows * spec.cols;
                VecD got(size), want(size);
                for (Index i = 0; i < size; ++i) {
                    const size_t k = static_cast<size_t>(spec.offset + i);
                    got(i) = grads[k];
                    want(i) = grads0[k] + g_params(0, spec.offset + i);
                }
                EXPECT_TRUE(all_close(got, want, kFdTol)) << spec.name << " (accumulated onto its initial value)";
            }
            EXPECT_GT(g_params.cwiseAbs().maxCoeff(), 1e-3);
        }
    }
}

std::vector<StackCase> stack_cases() {
    std::vector<StackCase> cases;
    for (Index layers = 1; layers <= 3; ++layers)
        for (bool bidir : {false, true})
            for (bool bias : {true, false})
                for (bool masks : {false, true}) {
                    if (masks && layers == 1) continue;  // a one-layer stack has no mask
                    for (Upstream up : {Upstream::both, Upstream::output_only, Upstream::h_n_only})
                        cases.push_back({layers, bidir, bias, masks, up});
                }
    return cases;
}

INSTANTIATE_TEST_SUITE_P(All, StackBackwardFD, ::testing::ValuesIn(stack_cases()), stack_case_name);

TEST(StackBackward, AccumulatesIntoGradsAndAssignsDxDh0) {
    const Index S = 4, B = 3, I = 3, H = 3, TB = S * B;
    std::mt19937 rng(52);
    const StackConfig cfg = make_config(I, H, 2, true, true);
    const Index LDB = 4 * B, DH = 2 * H, n = rnnfast::param_count(cfg);
    const std::vector<double> params = random_params(rng, n, 0.6);
    const MatD x = random_matrix(rng, TB, I), h0 = random_matrix(rng, LDB, H), masks = random_masks(rng, TB, DH);
    const MatD G = random_matrix(rng, TB, DH), Gn = random_matrix(rng, LDB, H);
    MatD output(TB, DH), h_n(LDB, H);
    StackCache<double> cache;
    rnnfast::stack_forward<double>(cfg, params.data(), x, S, {}, h0, masks, output, h_n, &cache);

    std::vector<double> grads(static_cast<size_t>(n), 0.0);
    MatD dx1(TB, I), dh01(LDB, H), dx2(TB, I), dh02(LDB, H);
    rnnfast::stack_backward<double>(cfg, params.data(), cache, G, Gn, dx1, dh01, grads.data());
    const std::vector<double> once = grads;
    rnnfast::stack_backward<double>(cfg, params.data(), cache, G, Gn, dx2, dh02, grads.data());
    double max_once = 0.0;
    for (size_t i = 0; i < grads.size(); ++i) {
        EXPECT_NEAR(grads[i], 2.0 * once[i], 1e-12 * std::max(1.0, std::abs(once[i]))) << "parameter " << i;
        max_once = std::max(max_once, std::abs(once[i]));
    }
    EXPECT_GT(max_once, 1e-3);
    EXPECT_TRUE(all_close(dx2, dx1, 1e-12)) << "dx is assigned";
    EXPECT_TRUE(all_close(dh02, dh01, 1e-12)) << "dh0 is assigned";
}

TEST(StackBackward, FloatAgreesWithDouble) {
    const Index S = 4, B = 3, I = 4, H = 3, TB = S * B;
    std::mt19937 rng(53);
    const StackConfig cfg = make_config(I, H, 2, true, true);
    const Index LDB = 4 * B, DH = 2 * H, n = rnnfast::param_count(cfg);
    const std::vector<double> params = random_params(rng, n, 0.6);
    const MatD x = random_matrix(rng, TB, I), h0 = random_matrix(rng, LDB, H), masks = random_masks(rng, TB, DH);
    const MatD G = random_matrix(rng, TB, DH), Gn = random_matrix(rng, LDB, H);

    MatD output(TB, DH), h_n(LDB, H), dx(TB, I), dh0(LDB, H);
    StackCache<double> cache;
    rnnfast::stack_forward<double>(cfg, params.data(), x, S, {}, h0, masks, output, h_n, &cache);
    std::vector<double> grads(static_cast<size_t>(n), 0.0);
    rnnfast::stack_backward<double>(cfg, params.data(), cache, G, Gn, dx, dh0, grads.data());

    using MatF = RowMatrix<float>;
    const std::vector<float> params_f(params.begin(), params.end());
    MatF output_f(TB, DH), h_n_f(LDB, H), dx_f(TB, I), dh0_f(LDB, H);
    StackCache<float> cache_f;
    rnnfast::stack_forward<float>(cfg, params_f.data(), x.cast<float>(), S, {}, h0.cast<float>(), masks.cast<float>(),
                                  output_f, h_n_f, &cache_f);
    std::vector<float> grads_f(static_cast<size_t>(n), 0.0f);
    rnnfast::stack_backward<float>(cfg, params_f.data(), cache_f, G.cast<float>(), Gn.cast<float>(), dx_f, dh0_f,
                                   grads_f.data());

    EXPECT_TRUE(all_close(output_f, output, 1e-5));
    EXPECT_TRUE(all_close(h_n_f, h_n, 1e-5));
    EXPECT_TRUE(all_close(dx_f, dx, 1e-4));
    EXPECT_TRUE(all_close(dh0_f, dh0, 1e-4));
    for (size_t i = 0; i < grads.size(); ++i) {
        EXPECT_NEAR(grads_f[i], grads[i], 1e-4 * std::max(1.0, std::abs(grads[i]))) << "parameter " << i;
    }
}

TEST(StackBackward, RejectsACacheFromAnotherConfiguration) {
    const Index S = 2, B = 2, I = 3, H = 2;
    const StackConfig cfg2 = make_config(I, H, 2, false, true);
    const StackConfig cfg3 = make_config(I, H, 3, false, true);
    const std::vector<double> params(static_cast<size_t>(rnnfast::param_count(cfg3)), 0.1);
    MatD output(S * B, H), h_n(2 * B, H);
    StackCache<double> cache;
    rnnfast::stack_forward<double>(cfg2, params.data(), MatD::Zero(S * B, I), S, {}, MatD(0, H), MatD(0, H), output, h_n,
                                   &cache);
    std::vector<double> grads(params.size(), 0.0);
    MatD dx(S * B, I), dh0(3 * B, H);
    EXPECT_THROW(rnnfast::stack_backward<double>(cfg3, params.data(), cache, MatD(0, H), MatD(0, H), dx, dh0,
                                                 grads.data()),
                 std::invalid_argument);
    const StackCache<double> empty;
    EXPECT_THROW(rnnfast::stack_backward<double>(cfg2, params.data(), empty, MatD(0, H), MatD(0, H), dx, dh0,
                                                 grads.data()),
                 std::invalid_argument);
}

}  // namespace

namespace {

// A borrowing cache refers to x and the output instead of copying them, and backward gives the same results from
// it; dx with 0 rows skips only the input gradient. A ragged batch is packed, so its cache copies anyway.
TEST(StackBackward, BorrowingCacheAndSkippedDxMatchOwningCache) {
    const Index S = 5, B = 3, I = 4, H = 3, TB = S * B;
    std::mt19937 rng(53);
    for (const StackConfig& cfg : {make_config(I, H, 1, false, true), make_config(I, H, 2, true, true)}) {
        for (bool ragged : {false, true}) {
            SCOPED_TRACE(config_str(cfg) + (ragged ? " ragged" : " full"));
            const Index LDB = cfg.num_layers * cfg.directions() * B, DH = cfg.output_size(), n = rnnfast::param_count(cfg);
            const std::vector<Index> lengths = ragged ? std::vector<Index>{5, 2, 4} : std::vector<Index>{};
            const std::vector<double> params = random_params(rng, n, 0.6);
            const MatD x = random_matrix(rng, TB, I), h0 = random_matrix(rng, LDB, H);
            const MatD G = random_matrix(rng, TB, DH), Gn = random_matrix(rng, LDB, H);
            MatD out_own(TB, DH), hn_own(LDB, H), out_borrow(TB, DH), hn_borrow(LDB, H);
            StackCache<double> own, borrowed;
            borrowed.borrow = true;
            rnnfast::stack_forward<double>(cfg, params.data(), x, S, lengths, h0, MatD(0, DH), out_own, hn_own, &own);
            rnnfast::stack_forward<double>(cfg, params.data(), x, S, lengths, h0, MatD(0, DH), out_borrow, hn_borrow, &borrowed);
            EXPECT_TRUE(bitwise_equal(out_borrow, out_own));
            EXPECT_TRUE(bitwise_equal(hn_borrow, hn_own));
            EXPECT_EQ(own.x_data, nullptr);
            if (ragged) {
                EXPECT_EQ(borrowed.x_data, nullptr) << "a packed batch is copied";
            } else {
                EXPECT_EQ(borrowed.x_data, x.data());
                EXPECT_EQ(borrowed.top_data, out_borrow.data());
                EXPECT_EQ(borrowed.x.size(), 0);
                EXPECT_EQ(borrowed.ys.back().size(), 0);
            }

            std::vector<double> g_own(static_cast<size_t>(n), 0.0), g_borrow(g_own), g_nodx(g_own);
            MatD dx_own(TB, I), dh0_own(LDB, H), dx_borrow(TB, I), dh0_borrow(LDB, H), dx_none(0, I), dh0_nodx(LDB, H);
            rnnfast::stack_backward<double>(cfg, params.data(), own, G, Gn, dx_own, dh0_own, g_own.data());
            rnnfast::stack_backward<double>(cfg, params.data(), borrowed, G, Gn, dx_borrow, dh0_borrow, g_borrow.data());
            rnnfast::stack_backward<double>(cfg, params.data(), own, G, Gn, dx_none, dh0_nodx, g_nodx.data());
            EXPECT_TRUE(bitwise_equal(dx_borrow, dx_own));
            EXPECT_TRUE(bitwise_equal(dh0_borrow, dh0_own));
            EXPECT_TRUE(bitwise_equal(dh0_nodx, dh0_own));
            EXPECT_GT(MatD(dx_own).cwiseAbs().maxCoeff(), 1e-3);
            for (size_t i = 0; i < g_own.size(); ++i) {
                EXPECT_EQ(g_borrow[i], g_own[i]) << "parameter " << i;
                EXPECT_EQ(g_nodx[i], g_own[i]) << "parameter " << i;
            }
        }
    }
}

// Ctrl-C that comes after the last step of a backward's recurrence stops the call in the products that follow it
// (weight and input gradients), which poll too: one step here, so the recurrence polls once and the products
// after it must poll again. Inputs of 512 features make the weight gradients with the steps' register tiles,
// 4096 (a chunk larger than L2) through Eigen's GEMM.
TEST(StackBackward, StopsInTheProductsAfterTheRecurrence) {
    for (const Index I : {512, 4096}) {
        const Index H = 256, B = 512, S = 1;
        const StackConfig cfg = make_config(I, H, 1, false, true);
        std::mt19937 rng(29);
        const std::vector<double> params = random_params(rng, rnnfast::param_count(cfg), 0.1);
        const MatD x = random_matrix(rng, S * B, I);
        MatD output(S * B, H), h_n(B, H);
        StackCache<double> cache;
        rnnfast::stack_forward<double>(cfg, params.data(), x, S, {}, MatD(0, H), MatD(0, H), output, h_n, &cache);

        using Polls = rnnfast::test::CountedPolls;
        const auto backward = [&](Polls& polls) {
            rnnfast::InterruptScope scope(&Polls::poll, &polls, 0);  // polls at every look at the clock
            const MatD d_output = MatD::Ones(S * B, H);
            MatD dx(S * B, I), dh0(B, H);
            std::vector<double> grads(params.size(), 0.0);
            rnnfast::stack_backward<double>(cfg, params.data(), cache, d_output, MatD(0, H), dx, dh0, grads.data());
        };
        Polls all;
        backward(all);
        ASSERT_GE(all.count, 2) << "I=" << I << ": the products after the recurrence's one step did not poll";
        Polls stop;
        stop.stop_from = 2;
        EXPECT_THROW(backward(stop), rnnfast::Interrupted) << "I=" << I;
        EXPECT_EQ(stop.count, 2) << "I=" << I;
    }
}

}  // namespace
