// LSTM and GRU on the stack driver: stack_backward against centered finite differences of stack_forward in
// float64 (every parameter, x, h0, c0) over layers, directions, bias, projection, ragged lengths and dropout
// masks; float32 against float64; and the cell equations of one step written out here.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "rnnfast/config.hpp"
#include "rnnfast/interrupt.hpp"
#include "rnnfast/stack.hpp"

#include "helpers.hpp"

namespace {

using rnnfast::CellKind;
using rnnfast::Index;
using rnnfast::StackCache;
using rnnfast::StackConfig;
using rnnfast::test::all_close;
using rnnfast::test::MatD;
using rnnfast::test::numeric_grad;
using rnnfast::test::random_matrix;

struct GatedCase {
    CellKind cell;
    Index layers;
    bool bidirectional, bias;
    Index proj;
    bool ragged, masks, states_given;
};

std::string case_name(const ::testing::TestParamInfo<GatedCase>& info) {
    const GatedCase& c = info.param;
    return std::string(c.cell == CellKind::lstm ? "lstm" : "gru") + "_L" + std::to_string(c.layers) +
           (c.bidirectional ? "_bidir" : "_uni") + (c.bias ? "_bias" : "_nobias") + "_proj" + std::to_string(c.proj) +
           (c.ragged ? "_ragged" : "_full") + (c.masks ? "_masks" : "") + (c.states_given ? "_h0" : "");
}

StackConfig config_of(const GatedCase& c, Index I, Index H) {
    StackConfig cfg;
    cfg.input_size = I;
    cfg.hidden_size = H;
    cfg.num_layers = c.layers;
    cfg.bidirectional = c.bidirectional;
    cfg.bias = c.bias;
    cfg.cell = c.cell;
    cfg.proj_size = c.proj;
    return cfg;
}

struct Result {
    MatD output, h_n, c_n;
};

Result forward(const StackConfig& cfg, const std::vector<double>& params, const MatD& x, Index S,
            const std::vector<Index>& lengths, const MatD& h0, const MatD& c0, const MatD& masks,
            StackCache<double>* cache = nullptr) {
    const Index B = x.rows() / S, LDB = cfg.num_layers * cfg.directions() * B;
    Result r{MatD(x.rows(), cfg.output_size()), MatD(LDB, cfg.state_size()),
          MatD(cfg.has_cell_state() ? LDB : 0, cfg.hidden_size)};
    rnnfast::stack_forward<double>(cfg, params.data(), x, S, lengths, h0, c0, masks, r.output, r.h_n, r.c_n, cache);
    return r;
}

class GatedBackwardFD : public ::testing::TestWithParam<GatedCase> {};

TEST_P(GatedBackwardFD, MatchesFiniteDifferences) {
    const GatedCase c = GetParam();
    const Index S = 4, B = 3, I = 3, H = 4, TB = S * B;
    std::mt19937 rng(71);
    const StackConfig cfg = config_of(c, I, H);
    const Index L = cfg.num_layers, D = cfg.directions(), P = cfg.state_size(), DP = cfg.output_size();
    const Index LDB = L * D * B, n = rnnfast::param_count(cfg);
    const bool lstm = cfg.has_cell_state();
    std::vector<double> params(static_cast<size_t>(n));
    for (double& p : params) p = std::uniform_real_distribution<double>(-0.7, 0.7)(rng);
    MatD x = random_matrix(rng, TB, I);
    MatD h0 = c.states_given ? random_matrix(rng, LDB, P) : MatD(MatD::Zero(LDB, P));
    MatD c0 = lstm && c.states_given ? random_matrix(rng, LDB, H) : MatD(MatD::Zero(lstm ? LDB : 0, H));
    MatD masks(0, DP);
    if (c.masks && L > 1) {
        masks.resize((L - 1) * TB, DP);
        for (Index i = 0; i < masks.size(); ++i) masks.data()[i] = (rng() % 3 == 0) ? 0.0 : 1.5;
    }
    const std::vector<Index> lengths = c.ragged ? std::vector<Index>{2, 4, 1} : std::vector<Index>{};
    const MatD G = random_matrix(rng, TB, DP), Gh = random_matrix(rng, LDB, P);
    const MatD Gc = lstm ? random_matrix(rng, LDB, H) : MatD(0, H);
    const MatD h0_arg = c.states_given ? h0 : MatD(0, P);
    const MatD c0_arg = c.states_given && lstm ? c0 : MatD(0, H);

    auto loss = [&] {
        const Result r = forward(cfg, params, x, S, lengths, c.states_given ? h0 : MatD(0, P),
                              c.states_given && lstm ? c0 : MatD(0, H), masks);
        double value = (G.array() * r.output.array()).sum() + (Gh.array() * r.h_n.array()).sum();
        if (lstm) value += (Gc.array() * r.c_n.array()).sum();
        return value;
    };
    const MatD g_params = numeric_grad(params.data(), 1, n, loss);
    const MatD g_x = numeric_grad(x.data(), TB, I, loss);
    const MatD g_h0 = numeric_grad(h0.data(), LDB, P, loss);
    const MatD g_c0 = lstm ? numeric_grad(c0.data(), LDB, H, loss) : MatD(0, H);

    StackCache<double> cache;
    forward(cfg, params, x, S, lengths, h0_arg, c0_arg, masks, &cache);
    MatD dx(TB, I), dh0(LDB, P), dc0(lstm ? LDB : 0, H);
    std::vector<double> grads(static_cast<size_t>(n), 0.25);  // accumulated into
    rnnfast::stack_backward<double>(cfg, params.data(), cache, G, Gh, Gc, dx, dh0, dc0, grads.data());
    MatD got(1, n);
    for (Index i = 0; i < n; ++i) got(0, i) = grads[static_cast<size_t>(i)] - 0.25;
    EXPECT_TRUE(all_close(got, g_params, 1e-6)) << "parameters";
    EXPECT_TRUE(all_close(dx, g_x, 1e-6)) << "dx";
    if (c.states_given) {
        EXPECT_TRUE(all_close(dh0, g_h0, 1e-6)) << "dh0";
        if (lstm) EXPECT_TRUE(all_close(dc0, g_c0, 1e-6)) << "dc0";
    }
}

std::vector<GatedCase> gated_cases() {
    std::vector<GatedCase> cases;
    for (CellKind cell : {CellKind::lstm, CellKind::gru}) {
        for (Index layers : {1, 2}) {
            for (bool bidir : {false, true}) {
                for (bool ragged : {false, true}) {
                    cases.push_back({cell, layers, bidir, true, 0, ragged, layers > 1, true});
                    cases.push_back({cell, layers, bidir, false, 0, ragged, false, false});
                    if (cell == CellKind::lstm) cases.push_back({cell, layers, bidir, true, 3, ragged, layers > 1, true});
                }
            }
        }
    }
    return cases;
}

INSTANTIATE_TEST_SUITE_P(All, GatedBackwardFD, ::testing::ValuesIn(gated_cases()), case_name);

// Gradients behind (recurrent.hpp): a backward whose recurrence runs on one thread makes its weight, bias and input
// gradients in blocks of steps, on a second thread where one is free. I = H = 32 and B = 2 keep every cell's step
// under kMinStepWork (one thread) while its 400 rows' gradients are worth a second thread; two directions run side by
// side, each making its own blocks. float64 against centered finite differences (a spread of parameters and of dx's
// entries); float32 the same bits at 1, 2 and 3 threads.
TEST(GatedBackward, GradientsBehindMatchFiniteDifferencesAndEveryThreadCount) {
    const rnnfast::test::ThreadsRestored restore;
    for (CellKind cell : {CellKind::rnn, CellKind::lstm, CellKind::gru}) {
        for (bool bidir : {false, true}) {
            const bool ragged = bidir;  // one direction over full lengths, two over ragged ones
            const Index S = 200, B = 2, I = 32, H = 32, TB = S * B;
            const StackConfig cfg = config_of({cell, 1, bidir, true, 0, ragged, false, true}, I, H);
            const Index D = cfg.directions(), DB = D * B, n = rnnfast::param_count(cfg);
            const bool lstm = cfg.has_cell_state();
            const std::string where = std::string(cell == CellKind::rnn ? "rnn" : lstm ? "lstm" : "gru") +
                                      (bidir ? " bidir" : "") + (ragged ? " ragged" : "");
            std::mt19937 rng(83);
            std::vector<double> params(static_cast<size_t>(n));
            for (double& p : params) p = std::uniform_real_distribution<double>(-0.4, 0.4)(rng);
            MatD x = random_matrix(rng, TB, I);
            const std::vector<Index> lengths = ragged ? std::vector<Index>{S, 130} : std::vector<Index>{};
            const MatD G = random_matrix(rng, TB, D * H), Gh = random_matrix(rng, DB, H);
            const MatD Gc = lstm ? random_matrix(rng, DB, H) : MatD(0, H), none(0, H), no_masks(0, D * H);

            rnnfast::set_num_threads(2);
            const auto loss = [&] {
                const Result r = forward(cfg, params, x, S, lengths, none, none, no_masks);
                double value = (G.array() * r.output.array()).sum() + (Gh.array() * r.h_n.array()).sum();
                if (lstm) value += (Gc.array() * r.c_n.array()).sum();
                return value;
            };
            StackCache<double> cache;
            forward(cfg, params, x, S, lengths, none, none, no_masks, &cache);
            MatD dx(TB, I), dh0(DB, H), dc0(lstm ? DB : 0, H);
            std::vector<double> grads(static_cast<size_t>(n), 0.0);
            rnnfast::stack_backward<double>(cfg, params.data(), cache, G, Gh, Gc, dx, dh0, dc0, grads.data());
            for (Index i = 0; i < n; i += 53) {
                const double fd = numeric_grad(params.data() + i, 1, 1, loss)(0, 0);
                EXPECT_NEAR(grads[static_cast<size_t>(i)], fd, 1e-6 * std::max(1.0, std::abs(fd)))
                    << where << ", parameter " << i;
            }
            for (Index i = 0; i < TB * I; i += 41) {
                const double fd = numeric_grad(x.data() + i, 1, 1, loss)(0, 0);
                EXPECT_NEAR(dx.data()[i], fd, 1e-6 * std::max(1.0, std::abs(fd))) << where << ", dx entry " << i;
            }

            const std::vector<float> pf(params.begin(), params.end());
            const rnnfast::RowMatrix<float> xf = x.cast<float>(), Gf = G.cast<float>(), Ghf = Gh.cast<float>(),
                                            Gcf = Gc.cast<float>(), nonef(0, H), no_masks_f(0, D * H);
            std::vector<std::vector<float>> runs;
            std::vector<rnnfast::RowMatrix<float>> dxs;
            for (int threads : {1, 2, 3}) {
                rnnfast::set_num_threads(threads);
                rnnfast::RowMatrix<float> out(TB, D * H), h_n(DB, H), c_n(lstm ? DB : 0, H);
                StackCache<float> cf;
                rnnfast::stack_forward<float>(cfg, pf.data(), xf, S, lengths, nonef, nonef, no_masks_f, out, h_n,
                                              c_n, &cf);
                rnnfast::RowMatrix<float> dxf(TB, I), dh0f(DB, H), dc0f(lstm ? DB : 0, H);
                runs.emplace_back(static_cast<size_t>(n), 0.0f);
                rnnfast::stack_backward<float>(cfg, pf.data(), cf, Gf, Ghf, Gcf, dxf, dh0f, dc0f,
                                               runs.back().data());
                dxs.push_back(dxf);
            }
            for (size_t k = 1; k < runs.size(); ++k) {
                EXPECT_TRUE(runs[k] == runs[0]) << where << ": parameters' gradients, run " << k;
                EXPECT_TRUE(dxs[k] == dxs[0]) << where << ": dx, run " << k;
            }
            for (Index i = 0; i < n; ++i) {
                EXPECT_NEAR(runs[0][static_cast<size_t>(i)], grads[static_cast<size_t>(i)],
                            1e-4 * std::max(1.0, std::abs(grads[static_cast<size_t>(i)])))
                    << where << ", float parameter " << i;
            }
        }
    }
}

// Ctrl-C during a recurrence whose gradients a second thread makes behind it stops the call, without leaving that
// thread waiting for blocks that will not come.
TEST(GatedBackward, StopsWhileGradientsRunBehind) {
    const rnnfast::test::ThreadsRestored restore;
    rnnfast::set_num_threads(2);
    const Index S = 3000, B = 1, I = 16, H = 16;  // two chunks of BPTT; the first poll comes mid-chunk
    const StackConfig cfg = config_of({CellKind::lstm, 1, false, true, 0, false, false, false}, I, H);
    std::mt19937 rng(89);
    std::vector<double> params(static_cast<size_t>(rnnfast::param_count(cfg)));
    for (double& p : params) p = std::uniform_real_distribution<double>(-0.4, 0.4)(rng);
    const MatD x = random_matrix(rng, S * B, I), none(0, H);
    StackCache<double> cache;
    forward(cfg, params, x, S, {}, none, none, MatD(0, H), &cache);
    using Polls = rnnfast::test::CountedPolls;
    const auto backward = [&](Polls& polls) {
        rnnfast::InterruptScope scope(&Polls::poll, &polls, 0);
        MatD dx(S * B, I), dh0(B, H), dc0(B, H);
        std::vector<double> grads(params.size(), 0.0);
        rnnfast::stack_backward<double>(cfg, params.data(), cache, MatD::Ones(S * B, H), none, none, dx, dh0, dc0,
                                        grads.data());
    };
    Polls all;
    backward(all);
    ASSERT_GE(all.count, 2);  // about one poll per 2**20 multiply-adds of the recurrence: the first at step 1000 or so
    Polls stop;
    stop.stop_from = 1;
    EXPECT_THROW(backward(stop), rnnfast::Interrupted);
    EXPECT_EQ(stop.count, 1);
}

// One step written out: the gate equations of torch.nn.LSTM and torch.nn.GRU.
TEST(GatedForward, OneStepIsTheCellEquations) {
    const Index I = 3, H = 2, B = 2;
    std::mt19937 rng(72);
    const MatD x = random_matrix(rng, B, I), h = random_matrix(rng, B, H), cprev = random_matrix(rng, B, H);
    auto sigmoid = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
    for (CellKind cell : {CellKind::lstm, CellKind::gru}) {
        StackConfig cfg = config_of({cell, 1, false, true, 0, false, false, true}, I, H);
        const Index G = cfg.gates(), n = rnnfast::param_count(cfg);
        std::vector<double> params(static_cast<size_t>(n));
        for (double& p : params) p = std::uniform_real_distribution<double>(-0.8, 0.8)(rng);
        const Eigen::Map<const MatD> w_ih(params.data(), G * H, I), w_hh(params.data() + G * H * I, G * H, H);
        const Eigen::Map<const rnnfast::RowVector<double>> b_ih(params.data() + G * H * (I + H), G * H);
        const Eigen::Map<const rnnfast::RowVector<double>> b_hh(params.data() + G * H * (I + H + 1), G * H);
        const MatD xi = (x * w_ih.transpose()).rowwise() + b_ih, hh = (h * w_hh.transpose()).rowwise() + b_hh;
        const Result r = forward(cfg, params, x, 1, {}, h, cell == CellKind::lstm ? cprev : MatD(0, H), MatD(0, H));
        for (Index b = 0; b < B; ++b) {
            for (Index u = 0; u < H; ++u) {
                if (cell == CellKind::lstm) {
                    const double i = sigmoid(xi(b, u) + hh(b, u)), f = sigmoid(xi(b, H + u) + hh(b, H + u));
                    const double g = std::tanh(xi(b, 2 * H + u) + hh(b, 2 * H + u));
                    const double o = sigmoid(xi(b, 3 * H + u) + hh(b, 3 * H + u));
                    const double c = f * cprev(b, u) + i * g;
                    EXPECT_NEAR(r.c_n(b, u), c, 1e-12);
                    EXPECT_NEAR(r.h_n(b, u), o * std::tanh(c), 1e-12);
                } else {
                    const double rg = sigmoid(xi(b, u) + hh(b, u)), z = sigmoid(xi(b, H + u) + hh(b, H + u));
                    const double nn = std::tanh(xi(b, 2 * H + u) + rg * hh(b, 2 * H + u));
                    EXPECT_NEAR(r.h_n(b, u), (1 - z) * nn + z * h(b, u), 1e-12);
                }
            }
        }
    }
}

// float32 kernels agree with float64 ones, with threads splitting by bands (wide state, small batch) and by items.
TEST(GatedForward, FloatAgreesWithDoubleAtEverySplit) {
    for (CellKind cell : {CellKind::lstm, CellKind::gru}) {
        for (Index B : {2, 40}) {
            const Index S = 5, I = 8, H = 48, TB = S * B;
            StackConfig cfg = config_of({cell, 2, true, true, 0, false, false, true}, I, H);
            std::mt19937 rng(73);
            const Index n = rnnfast::param_count(cfg), LDB = 4 * B;
            std::vector<double> params(static_cast<size_t>(n));
            for (double& p : params) p = std::uniform_real_distribution<double>(-0.15, 0.15)(rng);
            const MatD x = random_matrix(rng, TB, I);
            const Result d = forward(cfg, params, x, S, {}, MatD(0, H), MatD(0, H), MatD(0, 2 * H));
            std::vector<float> pf(params.begin(), params.end());
            const rnnfast::RowMatrix<float> xf = x.cast<float>();
            rnnfast::RowMatrix<float> out(TB, 2 * H), h_n(LDB, H), c_n(cell == CellKind::lstm ? LDB : 0, H);
            const rnnfast::RowMatrix<float> none(0, H), no_masks(0, 2 * H);
            rnnfast::stack_forward<float>(cfg, pf.data(), xf, S, {}, none, none, no_masks, out, h_n, c_n, nullptr);
            EXPECT_TRUE(all_close(out.cast<double>(), d.output, 1e-5));
            EXPECT_TRUE(all_close(h_n.cast<double>(), d.h_n, 1e-5));
        }
    }
}

// A forward without a cache runs a large layer in chunks of steps, each after its own input projection (a few
// megabytes of gates instead of all of them): the same outputs as the forward that keeps every step's gates, in
// both directions, over ragged batches, with a projection and given states.
TEST(GatedForward, WithoutCacheInChunksMatchesWithCache) {
    for (CellKind cell : {CellKind::lstm, CellKind::gru}) {
        for (bool ragged : {false, true}) {
            // LSTM: two directions of 4 * 128 gates in double, 8 KiB a row, so the workspace holds 512 rows = 17
            // steps of 30, and a chunk of a direction split by items or on one thread 256 rows of its 4 KiB
            // (kItemsChunkBytes: 8 steps; the GRU's 3 * 128 gates: 11 steps of the workspace's 22).
            const Index S = 40, B = 30, I = 8, H = 128, TB = S * B, proj = cell == CellKind::lstm ? 64 : 0;
            StackConfig cfg = config_of({cell, 2, true, true, proj, ragged, false, true}, I, H);
            std::mt19937 rng(91);
            std::vector<double> params(static_cast<size_t>(rnnfast::param_count(cfg)));
            for (double& p : params) p = std::uniform_real_distribution<double>(-0.1, 0.1)(rng);
            const MatD x = random_matrix(rng, TB, I);
            std::vector<Index> lengths;
            if (ragged) {
                for (Index b = 0; b < B; ++b) lengths.push_back(1 + (b * 7) % S);
                lengths[3] = S;
            }
            const Index LDB = 4 * B, P = cfg.state_size();
            const MatD h0 = random_matrix(rng, LDB, P, 0.5), c0 = random_matrix(rng, cell == CellKind::lstm ? LDB : 0, H, 0.5);
            StackCache<double> cache;
            const Result kept = forward(cfg, params, x, S, lengths, h0, c0, MatD(0, cfg.output_size()), &cache);
            const Result chunked = forward(cfg, params, x, S, lengths, h0, c0, MatD(0, cfg.output_size()));
            EXPECT_TRUE(all_close(chunked.output, kept.output, 1e-12));
            EXPECT_TRUE(all_close(chunked.h_n, kept.h_n, 1e-12));
            if (cell == CellKind::lstm) EXPECT_TRUE(all_close(chunked.c_n, kept.c_n, 1e-12));
        }
    }
}

// A cache passed to another forward is refilled in its own storage (same sizes: the same buffers) and gives the
// bits of a fresh cache, whatever the calls before it held: other lengths, another batch, masks or none.
TEST(GatedStack, ACachePassedAgainGivesTheBitsOfAFreshOne) {
    for (CellKind cell : {CellKind::lstm, CellKind::gru, CellKind::rnn}) {
        StackConfig cfg;
        cfg.input_size = 3;
        cfg.hidden_size = 4;
        cfg.num_layers = 2;
        cfg.bidirectional = true;
        cfg.cell = cell;
        const Index n = rnnfast::param_count(cfg), DP = cfg.output_size(), P = cfg.state_size(), H = cfg.hidden_size;
        std::mt19937 rng(5);
        std::vector<double> params(static_cast<size_t>(n));
        for (double& p : params) p = std::uniform_real_distribution<double>(-0.7, 0.7)(rng);
        struct Call {
            Index S, B;
            std::vector<Index> lengths;
            bool masks;
        };
        const std::vector<Call> calls = {{4, 3, {2, 4, 1}, true}, {5, 2, {}, false}, {5, 2, {}, true}, {4, 3, {}, false}};
        StackCache<double> kept;
        const double* kept_gates = nullptr;
        for (size_t i = 0; i < calls.size(); ++i) {
            const Call& c = calls[i];
            const Index TB = c.S * c.B, LDB = cfg.num_layers * 2 * c.B;
            const MatD x = random_matrix(rng, TB, cfg.input_size), G = random_matrix(rng, TB, DP);
            MatD masks(0, DP);
            if (c.masks) {
                masks.resize(TB, DP);
                for (Index k = 0; k < masks.size(); ++k) masks.data()[k] = (rng() % 3 == 0) ? 0.0 : 1.5;
            }
            StackCache<double> fresh;
            const Result want = forward(cfg, params, x, c.S, c.lengths, MatD(0, P), MatD(0, H), masks, &fresh);
            const Result got = forward(cfg, params, x, c.S, c.lengths, MatD(0, P), MatD(0, H), masks, &kept);
            if (cell != CellKind::rnn && i == 2) EXPECT_EQ(kept.gates[0].data(), kept_gates) << "same sizes, same storage";
            kept_gates = cell != CellKind::rnn ? kept.gates[0].data() : nullptr;
            MatD dx_want(TB, cfg.input_size), dh0_want(LDB, P), dc0_want(cfg.has_cell_state() ? LDB : 0, H);
            MatD dx_got = dx_want, dh0_got = dh0_want, dc0_got = dc0_want;
            std::vector<double> g_want(static_cast<size_t>(n), 0.0), g_got = g_want;
            rnnfast::stack_backward<double>(cfg, params.data(), fresh, G, MatD(0, P), MatD(0, H), dx_want, dh0_want,
                                            dc0_want, g_want.data());
            rnnfast::stack_backward<double>(cfg, params.data(), kept, G, MatD(0, P), MatD(0, H), dx_got, dh0_got,
                                            dc0_got, g_got.data());
            EXPECT_TRUE(want.output == got.output && want.h_n == got.h_n && want.c_n == got.c_n) << i;
            EXPECT_TRUE(dx_want == dx_got && dh0_want == dh0_got && dc0_want == dc0_got) << i;
            EXPECT_EQ(g_want, g_got) << i;
        }
    }
}

TEST(GatedConfig, ProjectionOnlyForLstmAndBelowHidden) {
    StackConfig cfg;
    cfg.input_size = 3;
    cfg.hidden_size = 4;
    cfg.cell = CellKind::gru;
    cfg.proj_size = 2;
    EXPECT_THROW(rnnfast::param_count(cfg), std::invalid_argument);
    cfg.cell = CellKind::lstm;
    cfg.proj_size = 4;
    EXPECT_THROW(rnnfast::param_count(cfg), std::invalid_argument);
    cfg.proj_size = 2;
    // weight_ih [16, 3], weight_hh [16, 2], two biases [16], weight_hr [2, 4]
    EXPECT_EQ(rnnfast::param_count(cfg), 16 * 3 + 16 * 2 + 32 + 8);
    EXPECT_THROW(rnnfast::parse_cell("elman"), std::invalid_argument);
}

}  // namespace
