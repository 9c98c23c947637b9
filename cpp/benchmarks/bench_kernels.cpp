// Unit benchmarks of the kernels (Google Benchmark): layer forward, layer backward, stack forward/backward and
// one cell step, over the speed grid, float32, each reporting a GFLOP/s counter; the gated_* ones run the stack
// grid and one cell step with LSTM and GRU cells; step_product times the recurrence's per-step product (W_hh laid
// out once, then one step's rows; float32, and float64 on the float64 benchmark's shapes), beside fma_peak, the
// most one thread can multiply-add, and eigen_product, Eigen's GEMM of the same shape; weight_gradient times a
// weight gradient's product (dW += dz^T h over a chunk's rows) both ways the backward makes it, beside Eigen's own.
//
//   ./rnnfast_benchmarks --benchmark_filter=layer_forward
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "gemm.hpp"
#include "packed_product.hpp"
#include "recurrent.hpp"
#include "workspace.hpp"
#include "rnnfast/checksum.hpp"
#include "rnnfast/config.hpp"
#include "rnnfast/elman.hpp"
#include "rnnfast/stack.hpp"

namespace {

using rnnfast::Index;
using Matrix = rnnfast::RowMatrix<float>;
using Vector = rnnfast::RowVector<float>;

Matrix random_matrix(Index rows, Index cols, std::mt19937& gen, float scale = 1.0f) {
    std::uniform_real_distribution<float> dist(-scale, scale);
    Matrix m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = dist(gen);
    return m;
}

// Multiply-adds of one direction of one layer: input projection + recurrence.
double layer_flops(Index T, Index B, Index I, Index H) { return 2.0 * T * B * H * (I + H); }

void set_flops(benchmark::State& state, double flops) {
    state.counters["GFLOP/s"] =
        benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// One direction of one layer with random inputs and PyTorch-scaled weights: Args T, B, I, H.
struct LayerFixture {
    Index T, B, I, H;
    Matrix x, h0, w_ih, w_hh, hs;
    Vector b_ih, b_hh;
    LayerFixture(const benchmark::State& state, unsigned seed)
        : T(state.range(0)), B(state.range(1)), I(state.range(2)), H(state.range(3)) {
        std::mt19937 gen(seed);
        const float bound = 1.0f / std::sqrt(static_cast<float>(H));
        x = random_matrix(T * B, I, gen);
        h0 = random_matrix(B, H, gen);
        w_ih = random_matrix(H, I, gen, bound);
        w_hh = random_matrix(H, H, gen, bound);
        b_ih = random_matrix(1, H, gen, bound);
        b_hh = random_matrix(1, H, gen, bound);
        hs.resize(T * B, H);
    }
    void forward() {
        rnnfast::layer_forward<float>(x, h0, w_ih, w_hh, b_ih, b_hh, rnnfast::Activation::tanh, false, T, hs);
    }
};

void layer_forward(benchmark::State& state) {
    LayerFixture f(state, 0);
    for (auto _ : state) {
        f.forward();
        benchmark::DoNotOptimize(f.hs.data());
        benchmark::ClobberMemory();
    }
    set_flops(state, layer_flops(f.T, f.B, f.I, f.H));
}

void layer_backward(benchmark::State& state) {
    LayerFixture f(state, 1);
    const Index T = f.T, B = f.B, I = f.I, H = f.H;
    f.forward();
    std::mt19937 gen(2);
    const Matrix dhs = random_matrix(T * B, H, gen);
    const Matrix none(0, H);
    Matrix dx(T * B, I), dh0(B, H), dw_ih = Matrix::Zero(H, I), dw_hh = Matrix::Zero(H, H), dz(T * B, H);
    Vector db_ih = Vector::Zero(H), db_hh = Vector::Zero(H);
    for (auto _ : state) {
        dx.setZero();
        rnnfast::layer_backward<float>(f.x, f.h0, f.w_ih, f.w_hh, f.hs, dhs, none, rnnfast::Activation::tanh, false, T,
                                       dx, dh0, dw_ih, dw_hh, db_ih, db_hh, dz);
        benchmark::DoNotOptimize(dx.data());
        benchmark::ClobberMemory();
    }
    // dz recurrence + dW_ih, dW_hh, dX products.
    set_flops(state, 2.0 * T * B * H * (H + I + H + I));
}

// One RNNCell step: Args B, I, H.
void cell_forward(benchmark::State& state) {
    const Index B = state.range(0), I = state.range(1), H = state.range(2);
    std::mt19937 gen(2);
    const float bound = 1.0f / std::sqrt(static_cast<float>(H));
    const Matrix x = random_matrix(B, I, gen), h = random_matrix(B, H, gen);
    const Matrix w_ih = random_matrix(H, I, gen, bound), w_hh = random_matrix(H, H, gen, bound);
    const Vector b_ih = random_matrix(1, H, gen, bound), b_hh = random_matrix(1, H, gen, bound);
    Matrix h_new(B, H);
    for (auto _ : state) {
        rnnfast::cell_forward<float>(x, h, w_ih, w_hh, b_ih, b_hh, rnnfast::Activation::tanh, h_new);
        benchmark::DoNotOptimize(h_new.data());
        benchmark::ClobberMemory();
    }
    set_flops(state, 2.0 * B * H * (I + H));
}

// A whole stacked model, forward then forward + backward: Args T, B, I, H, L, bidirectional (and for the
// gated_* benchmarks the cell kind: 1 LSTM, 2 GRU).
struct StackFixture {
    rnnfast::StackConfig cfg;
    std::vector<float> params;
    Matrix x, out, h_n, c_n;
    explicit StackFixture(const benchmark::State& state, rnnfast::CellKind kind = rnnfast::CellKind::rnn) {
        cfg.cell = kind;
        cfg.input_size = state.range(2);
        cfg.hidden_size = state.range(3);
        cfg.num_layers = state.range(4);
        cfg.bidirectional = state.range(5) != 0;
        std::mt19937 gen(3);
        std::uniform_real_distribution<float> dist(-0.1f, 0.1f);
        params.resize(static_cast<size_t>(rnnfast::param_count(cfg)));
        for (float& p : params) p = dist(gen);
        const Index TB = state.range(0) * state.range(1);
        x = random_matrix(TB, cfg.input_size, gen);
        out.resize(TB, cfg.output_size());
        h_n.resize(cfg.num_layers * cfg.directions() * state.range(1), cfg.hidden_size);
        c_n.resize(cfg.has_cell_state() ? h_n.rows() : 0, cfg.hidden_size);
    }
    double flops(Index T, Index B) const {
        double total = 0;
        for (Index l = 0; l < cfg.num_layers; ++l)
            total += cfg.directions() * cfg.gates() * layer_flops(T, B, cfg.layer_input_size(l), cfg.hidden_size);
        return total;
    }
};

void stack_forward(benchmark::State& state) {
    StackFixture f(state);
    const Matrix none(0, f.cfg.hidden_size), no_masks(0, f.cfg.output_size());
    for (auto _ : state) {
        rnnfast::stack_forward<float>(f.cfg, f.params.data(), f.x, state.range(0), {}, none, no_masks, f.out, f.h_n,
                                      nullptr);
        benchmark::DoNotOptimize(f.out.data());
        benchmark::ClobberMemory();
    }
    set_flops(state, f.flops(state.range(0), state.range(1)));
}

void stack_train_step(benchmark::State& state) {
    StackFixture f(state);
    const Matrix none(0, f.cfg.hidden_size), no_masks(0, f.cfg.output_size());
    std::vector<float> grads(f.params.size(), 0.0f);
    Matrix dx(f.x.rows(), f.x.cols()), dh0(f.h_n.rows(), f.h_n.cols());
    rnnfast::StackCache<float> cache;
    for (auto _ : state) {
        rnnfast::stack_forward<float>(f.cfg, f.params.data(), f.x, state.range(0), {}, none, no_masks, f.out, f.h_n,
                                      &cache);
        rnnfast::stack_backward<float>(f.cfg, f.params.data(), cache, f.out, none, dx, dh0, grads.data());
        benchmark::DoNotOptimize(dx.data());
        benchmark::ClobberMemory();
    }
    set_flops(state, 3.0 * f.flops(state.range(0), state.range(1)));
}

// The training step as the Python API runs it for a full-length batch: its cache borrows x and the output, whose
// checksums are taken after forward and checked before backward (Arg sums = 1; sums = 0: the same step without
// them, so the pair gives what the check costs).
void stack_train_step_borrowing(benchmark::State& state) {
    StackFixture f(state);
    const Matrix none(0, f.cfg.hidden_size), no_masks(0, f.cfg.output_size());
    std::vector<float> grads(f.params.size(), 0.0f);
    Matrix dx(f.x.rows(), f.x.cols()), dh0(f.h_n.rows(), f.h_n.cols());
    const std::size_t x_bytes = sizeof(float) * static_cast<std::size_t>(f.x.size());
    const std::size_t out_bytes = sizeof(float) * static_cast<std::size_t>(f.out.size());
    const bool sums = state.range(6) != 0;
    for (auto _ : state) {
        rnnfast::StackCache<float> cache;
        cache.borrow = true;
        rnnfast::stack_forward<float>(f.cfg, f.params.data(), f.x, state.range(0), {}, none, no_masks, f.out, f.h_n,
                                      &cache);
        if (sums) {
            const std::uint64_t seen = rnnfast::checksum(f.x.data(), x_bytes) + rnnfast::checksum(f.out.data(), out_bytes);
            if (rnnfast::checksum(f.x.data(), x_bytes) + rnnfast::checksum(f.out.data(), out_bytes) != seen) {
                state.SkipWithError("checksum changed");
            }
        }
        rnnfast::stack_backward<float>(f.cfg, f.params.data(), cache, f.out, none, dx, dh0, grads.data());
        benchmark::DoNotOptimize(dx.data());
        benchmark::ClobberMemory();
    }
    set_flops(state, 3.0 * f.flops(state.range(0), state.range(1)));
}

// LSTM and GRU on the same driver: Args T, B, I, H, L, bidirectional, kind (1 LSTM, 2 GRU).
rnnfast::CellKind kind_arg(const benchmark::State& state) {
    return state.range(6) == 1 ? rnnfast::CellKind::lstm : rnnfast::CellKind::gru;
}

void gated_stack_forward(benchmark::State& state) {
    StackFixture f(state, kind_arg(state));
    const Matrix none(0, f.cfg.hidden_size), no_masks(0, f.cfg.output_size());
    for (auto _ : state) {
        rnnfast::stack_forward<float>(f.cfg, f.params.data(), f.x, state.range(0), {}, none, none, no_masks, f.out,
                                      f.h_n, f.c_n, nullptr);
        benchmark::DoNotOptimize(f.out.data());
        benchmark::ClobberMemory();
    }
    set_flops(state, f.flops(state.range(0), state.range(1)));
}

void gated_stack_train_step(benchmark::State& state) {
    StackFixture f(state, kind_arg(state));
    const Matrix none(0, f.cfg.hidden_size), no_masks(0, f.cfg.output_size());
    std::vector<float> grads(f.params.size(), 0.0f);
    Matrix dx(f.x.rows(), f.x.cols()), dh0(f.h_n.rows(), f.h_n.cols()), dc0(f.c_n.rows(), f.c_n.cols());
    rnnfast::StackCache<float> cache;
    for (auto _ : state) {
        rnnfast::stack_forward<float>(f.cfg, f.params.data(), f.x, state.range(0), {}, none, none, no_masks, f.out,
                                      f.h_n, f.c_n, &cache);
        rnnfast::stack_backward<float>(f.cfg, f.params.data(), cache, f.out, none, none, dx, dh0, dc0, grads.data());
        benchmark::DoNotOptimize(dx.data());
        benchmark::ClobberMemory();
    }
    set_flops(state, 3.0 * f.flops(state.range(0), state.range(1)));
}

// One LSTMCell / GRUCell step (a one-step stack): Args B, I, H, kind (1 LSTM, 2 GRU).
void gated_cell_step(benchmark::State& state) {
    rnnfast::StackConfig cfg;
    cfg.cell = state.range(3) == 1 ? rnnfast::CellKind::lstm : rnnfast::CellKind::gru;
    cfg.input_size = state.range(1);
    cfg.hidden_size = state.range(2);
    const Index B = state.range(0);
    std::mt19937 gen(4);
    std::vector<float> params(static_cast<size_t>(rnnfast::param_count(cfg)));
    std::uniform_real_distribution<float> dist(-0.1f, 0.1f);
    for (float& p : params) p = dist(gen);
    const Matrix x = random_matrix(B, cfg.input_size, gen), h = random_matrix(B, cfg.hidden_size, gen);
    const Matrix c = cfg.has_cell_state() ? random_matrix(B, cfg.hidden_size, gen) : Matrix(0, cfg.hidden_size);
    const Matrix no_masks(0, cfg.output_size());
    Matrix out(B, cfg.hidden_size), h_n(B, cfg.hidden_size), c_n(c.rows(), cfg.hidden_size);
    for (auto _ : state) {
        rnnfast::stack_forward<float>(cfg, params.data(), x, 1, {}, h, c, no_masks, out, h_n, c_n, nullptr);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    set_flops(state, cfg.gates() * layer_flops(1, B, cfg.input_size, cfg.hidden_size));
}

// The recurrence's product of one step, res [B, G*H] += h [B, H] * W_hh^T, W_hh [G*H, H] laid out once (as a
// call does) and the step repeated: Args B, H, G, and A: 1 visits W's units backwards every other step, as the
// recurrence does (a step starts on what the step before left in cache), 0 always forwards. Its GFLOP/s over
// fma_peak's of the same dtype is the register tiles' share of what one core can multiply-add.
template <class T>
void step_product(benchmark::State& state) {
    using M = rnnfast::RowMatrix<T>;
    const Index B = state.range(0), H = state.range(1), GH = state.range(2) * H;
    const bool alternate = state.range(3) != 0;
    std::mt19937 gen(5);
    const M w = random_matrix(GH, H, gen).cast<T>(), h = random_matrix(B, H, gen).cast<T>();
    M res = M::Zero(B, GH);
    rnnfast::detail::StepWeights<T> weights;
    weights.template pack<Eigen::RowMajor>(w.data(), w.cols(), GH, H, B, 100);
    bool backwards = false;
    for (auto _ : state) {
        backwards = alternate && !backwards;
        weights.multiply_add(h.data(), h.cols(), B, res.data(), res.cols(), 0, backwards);
        benchmark::DoNotOptimize(res.data());
        benchmark::ClobberMemory();
    }
    set_flops(state, 2.0 * B * GH * H);
}

// The most multiply-adds one thread of this build can make: kChains independent chains of SIMD packets (the build's
// widest) on values held in registers, nothing loaded or stored. With FMA units of latency 4, two of them need at
// least 8 chains to stay busy. A ceiling for step_product and the stack benchmarks: the register tiles also load
// W's packets and broadcast h.
template <class T>
void fma_peak(benchmark::State& state) {
    using namespace Eigen::internal;
    using Packet = typename packet_traits<T>::type;
    constexpr int kChains = 12, kRounds = 1000;
    constexpr Index P = static_cast<Index>(sizeof(Packet) / sizeof(T));  // the packet's lanes
    Packet acc[kChains];
    for (int i = 0; i < kChains; ++i) acc[i] = pset1<Packet>(static_cast<T>(i));
    const Packet scale = pset1<Packet>(T(0.999)), shift = pset1<Packet>(T(0.001));  // stays bounded
    for (auto _ : state) {
        for (int round = 0; round < kRounds; ++round) {
            for (int i = 0; i < kChains; ++i) acc[i] = pmadd(acc[i], scale, shift);
        }
        benchmark::DoNotOptimize(acc);
    }
    set_flops(state, 2.0 * kRounds * kChains * P);
}

// The same product through Eigen's GEMM (which packs W_hh again on every call), for reference.
void eigen_product(benchmark::State& state) {
    const Index B = state.range(0), H = state.range(1), GH = state.range(2) * H;
    std::mt19937 gen(5);
    const Matrix w = random_matrix(GH, H, gen), h = random_matrix(B, H, gen);
    Matrix res = Matrix::Zero(B, GH);
    for (auto _ : state) {
        res.noalias() += h * w.transpose();
        benchmark::DoNotOptimize(res.data());
        benchmark::ClobberMemory();
    }
    set_flops(state, 2.0 * B * GH * H);
}

// A weight gradient of one thread's share, dW [M, N] += dz^T h, dz [K, M] and h [K, N] row-major (K: a chunk's
// rows, M: this thread's gate units): Args M, N, K, and E: 0 through gemm.hpp as the backward does for a large
// chunk (depth blocks sized for the strided packing of dz), 1 through Eigen's own product and blocking, 2 through
// PanelWeights' transposed product as the backward does for a chunk whose dz fits in L2 (recurrent.hpp,
// kPanelGradientL2s).
void weight_gradient(benchmark::State& state) {
    const Index M = state.range(0), N = state.range(1), K = state.range(2);
    const int how = static_cast<int>(state.range(3));
    std::mt19937 gen(6);
    // dz's rows padded as the backward's workspace pads them (workspace.hpp).
    const Matrix dz_rows = random_matrix(K, rnnfast::detail::padded_stride<float>(M), gen), h = random_matrix(K, N, gen);
    const auto dz = dz_rows.leftCols(M);
    Matrix dw = Matrix::Zero(M, N);
    std::vector<const float*> rows(static_cast<size_t>(K));
    for (Index k = 0; k < K; ++k) rows[static_cast<size_t>(k)] = h.data() + k * N;
    rnnfast::detail::PanelWeights<float> panels;
    for (auto _ : state) {
        if (how == 1) {
            dw.noalias() += dz.transpose() * h;
        } else if (how == 2) {
            panels.pack_rows(rows.data(), N, K);
            panels.multiply_add_transposed(dz.data(), dz_rows.cols(), M, dw.data(), N);
        } else {
            rnnfast::detail::gemm(dw, dz.transpose(), h, true);
        }
        benchmark::DoNotOptimize(dw.data());
        benchmark::ClobberMemory();
    }
    set_flops(state, 2.0 * M * N * K);
}

// Per thread at two threads: LSTM mid (dW_ih, dW_hh of 800 rows), LSTM big H256 and H512 (chunks of 1600 rows).
void weight_gradient_grid(benchmark::internal::Benchmark* b) {
    b->ArgNames({"M", "N", "K", "E"});
    for (const std::vector<int64_t>& c : {std::vector<int64_t>{256, 64, 800}, {256, 128, 800}, {512, 256, 1600},
                                          {1024, 512, 1600}}) {
        for (int64_t how : {0, 1, 2}) b->Args({c[0], c[1], c[2], how});
    }
}

// A product by a weight matrix as a layer makes it, dst [M, N] = lhs [M, K] * op(W), at the benchmark's threads:
// Args M, K, N, T: 1 the input projection (op(W) = W_ih^T, W_ih [N, K]), 0 dx (op(W) = W_ih [K, N]); E: 0 Eigen's
// GEMM split by rows (interruptible_rows_product), 1 the register tiles (weight_rows_product), which the driver
// uses in builds with 32 vector registers (kTiledWeightProducts).
void weight_product(benchmark::State& state) {
    const Index M = state.range(0), K = state.range(1), N = state.range(2);
    const bool transposed = state.range(3) != 0, tiles = state.range(4) != 0;
    std::mt19937 gen(7);
    const Matrix lhs = random_matrix(M, K, gen), w = transposed ? random_matrix(N, K, gen) : random_matrix(K, N, gen);
    Matrix dst = Matrix::Zero(M, N);
    for (auto _ : state) {
        if (tiles) {
            rnnfast::detail::weight_rows_product<float>(dst, lhs, w, transposed, false);
        } else if (transposed) {
            rnnfast::detail::interruptible_rows_product(dst, lhs, w.transpose(), false);
        } else {
            rnnfast::detail::interruptible_rows_product(dst, lhs, w, false);
        }
        benchmark::DoNotOptimize(dst.data());
        benchmark::ClobberMemory();
    }
    set_flops(state, 2.0 * M * K * N);
}

// The projections and dx of the LSTM big cases and of a bidir2 layer (T 50, B 32: 1600 rows).
void weight_product_grid(benchmark::internal::Benchmark* b) {
    b->ArgNames({"M", "K", "N", "T", "E"});
    for (const std::vector<int64_t>& c : {std::vector<int64_t>{6400, 256, 1024, 1}, {6400, 1024, 256, 0},
                                          {6400, 512, 2048, 1}, {6400, 2048, 512, 0}, {1600, 128, 512, 1},
                                          {1600, 512, 128, 0}}) {
        for (int64_t how : {0, 1}) b->Args({c[0], c[1], c[2], c[3], how});
    }
}

// The steps of the speed grid's cases (B, H) for one gate (Elman), three (GRU) and four (LSTM), alternating as
// the recurrence does; one-row steps and the largest also always forwards, for comparison.
void step_product_grid(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "H", "G", "A"});
    for (const std::vector<int64_t>& c : {std::vector<int64_t>{3, 20}, {1, 64}, {16, 128}, {32, 128}, {64, 256},
                                          {64, 512}}) {
        for (int64_t gates : {1, 3, 4}) {
            b->Args({c[0], c[1], gates, 1});
            if (c[0] == 1 || c[1] == 512) b->Args({c[0], c[1], gates, 0});
        }
    }
}

// float64's rows: the shapes of the float64 benchmark's cases (bench --dtype float64: mid and the two big ones).
void step_product_f64_grid(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "H", "G", "A"});
    for (const std::vector<int64_t>& c : {std::vector<int64_t>{16, 128}, {64, 256}, {64, 512}}) {
        for (int64_t gates : {1, 3, 4}) b->Args({c[0], c[1], gates, 1});
    }
}

void product_grid(benchmark::internal::Benchmark* b) {
    b->ArgNames({"B", "H", "G"});
    for (const std::vector<int64_t>& c : {std::vector<int64_t>{3, 20}, {1, 64}, {16, 128}, {32, 128}, {64, 256},
                                          {64, 512}}) {
        for (int64_t gates : {1, 3, 4}) b->Args({c[0], c[1], gates});
    }
}

// The speed grid: T, B, I, H (+ L, bidirectional for the stack).
void layer_grid(benchmark::internal::Benchmark* b) {
    b->ArgNames({"T", "B", "I", "H"});
    b->Args({10, 3, 100, 20});
    b->Args({1000, 1, 32, 64});
    b->Args({50, 16, 64, 128});
    b->Args({100, 64, 256, 256});
    b->Args({100, 64, 512, 512});
}

const std::vector<std::vector<int64_t>> kStackCases = {
    {10, 3, 100, 20, 1, 0},  {10, 3, 100, 20, 4, 0},     {1000, 1, 32, 64, 1, 0},  {50, 16, 64, 128, 1, 0},
    {100, 64, 256, 256, 1, 0}, {100, 64, 512, 512, 1, 0}, {50, 32, 128, 128, 2, 1},
    {35, 20, 200, 200, 2, 0},  // PyTorch's word-language-model example, as the Python grid's wlm case
};

void stack_grid(benchmark::internal::Benchmark* b) {
    b->ArgNames({"T", "B", "I", "H", "L", "bidi"});
    for (const std::vector<int64_t>& c : kStackCases) b->Args(c);
}

void gated_grid(benchmark::internal::Benchmark* b) {
    b->ArgNames({"T", "B", "I", "H", "L", "bidi", "kind"});
    for (std::vector<int64_t> c : kStackCases) {
        if (c[4] == 4) continue;  // the four-layer seed case is the Elman grid's
        for (int64_t kind : {1, 2}) {
            c.push_back(kind);
            b->Args(c);
            c.pop_back();
        }
    }
}

void borrowing_grid(benchmark::internal::Benchmark* b) {
    b->ArgNames({"T", "B", "I", "H", "L", "bidi", "sums"});
    for (std::vector<int64_t> c : kStackCases) {
        for (int64_t sums : {0, 1}) {
            c.push_back(sums);
            b->Args(c);
            c.pop_back();
        }
    }
}

BENCHMARK(layer_forward)->Apply(layer_grid);
BENCHMARK(layer_backward)->Apply(layer_grid);
BENCHMARK(stack_forward)->Apply(stack_grid);
BENCHMARK(stack_train_step)->Apply(stack_grid);
BENCHMARK(stack_train_step_borrowing)->Apply(borrowing_grid);
BENCHMARK(gated_stack_forward)->Apply(gated_grid);
BENCHMARK(gated_stack_train_step)->Apply(gated_grid);
BENCHMARK(cell_forward)->ArgNames({"B", "I", "H"})->Args({1, 20, 20})->Args({1, 128, 128});
BENCHMARK(gated_cell_step)->ArgNames({"B", "I", "H", "kind"})->ArgsProduct({{1}, {20, 128}, {20, 128}, {1, 2}});
BENCHMARK_TEMPLATE(fma_peak, float);
BENCHMARK_TEMPLATE(fma_peak, double);
BENCHMARK_TEMPLATE(step_product, float)->Apply(step_product_grid);
BENCHMARK_TEMPLATE(step_product, double)->Apply(step_product_f64_grid);
BENCHMARK(eigen_product)->Apply(product_grid);
BENCHMARK(weight_gradient)->Apply(weight_gradient_grid);
BENCHMARK(weight_product)->Apply(weight_product_grid);

}  // namespace

BENCHMARK_MAIN();
