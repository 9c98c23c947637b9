// The one driver of a recurrent layer, for every cell kind (cells.hpp): one direction of one layer over a
// sequence, forward and BPTT.
//
// Forward: the input projection of every step as one product into the gate buffer [R, G*H] (without a cache: of a
// chunk of steps at a time, into a workspace of a few megabytes), then step by step the recurrent product
// h_{t-1} W_hh^T (W_hh [G*H, P], packed once per call, every gate in one product) and the cell's elementwise math.
// BPTT: step by step back, the cell's elementwise backward into dz [C, G*H] and dL/dh_{t-1} = dz W_hh, in chunks of
// steps that fit in dz, each chunk followed by its weight, bias and input gradients as whole products.
//
// Threads split the recurrence by items (each runs its items through every step, no waiting) when each gets at
// least kMinItemRows items and the step is not large; otherwise by bands of state units (the same units of every
// gate, so the elementwise math stays within a thread), meeting at a barrier every step. A projected LSTM (w_hr)
// mixes the units after the cell, so it is split by items only.
#pragma once

#include <algorithm>
#include <atomic>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cells.hpp"
#include "gemm.hpp"
#include "packed_product.hpp"
#include "parallel.hpp"
#include "rnnfast/interrupt.hpp"
#include "rnnfast/steps.hpp"
#include "rnnfast/types.hpp"

namespace rnnfast::detail {

// Multiply-adds below which splitting across threads costs more than it saves: a whole product, and one
// step of the recurrence (whose threads meet at a barrier every step).
constexpr double kMinProductWork = 1 << 18;
constexpr double kMinStepWork = 1 << 16;

// Items per thread below which the recurrence is split by bands of units instead.
constexpr Index kMinItemRows = 8;

// Rows [0, rows) of a product of `work` multiply-adds split across the threads it is worth: f(r0, r1) for each
// thread's rows (none for a thread left without any).
template <class F>
void parallel_rows(Index rows, double work, F&& f) {
    parallel(threads_for(work, kMinProductWork), [&](int k, int parts) {
        const Index r0 = split(rows, k, parts, 8), r1 = split(rows, k + 1, parts, 8);
        if (r1 > r0) f(r0, r1);
    });
}

// dst = lhs * rhs (or += with `add`), the rows of dst split across threads (gemm.hpp: Eigen's GEMM over packing
// buffers that persist per thread). With `bias` (dst.cols() values), dst = bias + lhs * rhs in every row: each
// thread starts its rows from it (one pass over dst, where zeroing and adding it after would be two).
template <class Dst, class Lhs, class Rhs>
void rows_product(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool add,
                  const typename std::decay_t<Dst>::Scalar* bias = nullptr) {
    parallel_rows(dst.rows(), static_cast<double>(dst.rows()) * dst.cols() * lhs.cols(), [&](Index r0, Index r1) {
        if (bias != nullptr) {
            for (Index r = r0; r < r1; ++r) std::copy(bias, bias + dst.cols(), &dst.coeffRef(r, 0));
        }
        gemm(dst.middleRows(r0, r1 - r0), lhs.middleRows(r0, r1 - r0), rhs, add || bias != nullptr);
    });
}

// dst = lhs * rhs as rows_product, in chunks of rows after each of which a call can be interrupted: at most about
// kChunkWork multiply-adds per thread (or `chunk_work`) or kChunkElements results (what bounds a product with a
// short inner dimension), some milliseconds each. Each chunk repacks rhs, so products within those bounds stay
// whole.
constexpr double kChunkWork = 1 << 29, kChunkElements = 1 << 24;

// The chunks of rows of such a product of `rows` rows, `cols` results and `depth` multiply-adds each: f(r0, n) for
// rows [r0, r0 + n), an interruption point after each.
template <class F>
void interruptible_row_chunks(Index rows, Index cols, Index depth, double chunk_work, F&& f) {
    const double c = static_cast<double>(std::max<Index>(cols, 1));
    const double per_row = c * static_cast<double>(std::max<Index>(depth, 1));
    const double rows_per_chunk = std::min(chunk_work * std::max(1, thread_limit()) / per_row, kChunkElements / c);
    const Index chunk = rows_per_chunk >= static_cast<double>(rows)
                            ? rows
                            : std::max<Index>(64, static_cast<Index>(rows_per_chunk) / 8 * 8);
    for (Index r0 = 0; r0 < rows; r0 += chunk) {
        const Index n = std::min(chunk, rows - r0);
        f(r0, n);
        interruption_point(static_cast<double>(n) * per_row);
    }
}

template <class Dst, class Lhs, class Rhs>
void interruptible_rows_product(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool add,
                                const typename std::decay_t<Dst>::Scalar* bias = nullptr,
                                double chunk_work = kChunkWork) {
    interruptible_row_chunks(dst.rows(), dst.cols(), lhs.cols(), chunk_work, [&](Index r0, Index n) {
        rows_product(dst.middleRows(r0, n), lhs.middleRows(r0, n), rhs, add, bias);
    });
}

// Whether the products by a weight matrix (an input projection, dx) go through the register tiles of the steps'
// products rather than Eigen's GEMM: in builds with 32 vector registers (AVX-512), where the tiles are 8 rows x 3
// packets. There, on the grid's projection and dx shapes (bench_kernels' weight_product), Eigen's GEMM ran at 61-79
// GFLOP/s a thread and the tiles at 81-94, the weight's layout included; with 16 registers (AVX2) Eigen's was
// faster on some of them. A property of the build, never of the call's threads.
template <class T>
constexpr bool kTiledWeightProducts = PanelWeights<T>::kTileRows >= 8;

// A weight matrix laid out for weight_rows_product: op(W) [K, N] is W^T for a row-major W [N, K] (`transposed`) or
// a row-major W [K, N] itself, in the panels of the steps' products (PanelWeights' A is W [N, K]).
template <class T>
void pack_weight(PanelWeights<T>& panels, const ConstMatrixRef<T>& w, bool transposed) {
    if (transposed) {
        panels.template pack<Eigen::RowMajor>(w.data(), w.outerStride(), w.rows(), w.cols());
    } else {
        panels.template pack<Eigen::ColMajor>(w.data(), w.outerStride(), w.cols(), w.rows());
    }
}

// dst [n, N] = lhs [n, K] * op(W) (or += with `add`; with `bias`, N values, dst = bias + lhs * op(W)), op(W) laid
// out by pack_weight (once for every product by the same weight): each thread's rows through the register tiles in
// blocks whose rows of lhs stay in L2 while every panel reads them. Each element is summed as a step sums it,
// whatever the split of the rows (and so the same bits at every thread count). In chunks of rows between
// interruption points, as interruptible_rows_product.
template <class T, class Dst, class Lhs>
void weight_rows_product(Dst&& dst, const Lhs& lhs, const PanelWeights<T>& panels, bool add, const T* bias = nullptr,
                         double chunk_work = kChunkWork) {
    const Index rows = dst.rows(), cols = dst.cols(), depth = lhs.cols();
    if (rows == 0 || cols == 0 || (add && depth == 0)) return;
    const RowVector<T> zeros = add || bias != nullptr ? RowVector<T>() : RowVector<T>(RowVector<T>::Zero(cols));
    const T* start = add ? nullptr : (bias != nullptr ? bias : zeros.data());
    const Index row_bytes = std::max<Index>(depth, 1) * static_cast<Index>(sizeof(T));
    const Index block = std::max<Index>(8, static_cast<Index>(Eigen::l2CacheSize()) / 2 / row_bytes / 8 * 8);
    interruptible_row_chunks(rows, cols, depth, chunk_work, [&](Index c0, Index n) {
        parallel_rows(n, static_cast<double>(n) * cols * depth, [&](Index r0, Index r1) {
            Buffer<T> scratch;  // the tiles' accumulators between depth blocks
            for (Index r = c0 + r0; r < c0 + r1; r += block) {
                panels.multiply_add(lhs.data() + r * lhs.outerStride(), lhs.outerStride(), std::min(block, c0 + r1 - r),
                                    dst.data() + r * dst.outerStride(), dst.outerStride(), 0, false, start, scratch);
            }
        });
    });
}

// The same, laying out W for this one product.
template <class T, class Dst, class Lhs>
void weight_rows_product(Dst&& dst, const Lhs& lhs, const ConstMatrixRef<T>& w, bool transposed, bool add,
                         const T* bias = nullptr, double chunk_work = kChunkWork) {
    PanelWeights<T> panels;
    pack_weight(panels, w, transposed);
    weight_rows_product<T>(std::forward<Dst>(dst), lhs, panels, add, bias, chunk_work);
}

// Multiply-adds of one step from which a split by bands beats one by items: each thread then streams only its
// band of W_hh (a quarter of a large LSTM's in each of four gates at two threads, instead of all of it) and
// multiplies it by every item, and the barrier of each step is a small part of the step.
constexpr double kMinBandStepWork = 1 << 25;

// How the recurrence is split across threads. Items are independent of each other, so when every thread gets
// at least kMinItemRows items, each runs its own items through all the steps and the threads never wait for
// one another -- unless the step is large (kMinBandStepWork). Otherwise each thread owns a band of the state
// units and all meet at every step.
struct RecurrenceSplit {
    bool by_items = false;
    std::vector<Index> item_bounds;  // by_items: thread k's item rows are [item_bounds[k], item_bounds[k + 1])

    // `step_work`: multiply-adds of the recurrent product of a whole step; 0 forces items where they fit.
    RecurrenceSplit(const StepLayout& steps, int threads, double step_work = 0) {
        const Index items = steps.size_or_zero(0);
        by_items = threads > 1 && items >= threads * kMinItemRows && step_work < kMinBandStepWork;
        if (!by_items) return;
        // Rows are the items sorted by decreasing length (a step holds a prefix of them): split the rows of all
        // steps evenly, an item's rows being its length.
        const Index T_ = steps.seq_len(), total = steps.rows();
        item_bounds.assign(static_cast<size_t>(threads) + 1, items);
        item_bounds[0] = 0;
        Index running = 0, live = T_;  // live: the steps item j runs (those with more than j rows)
        int part = 1;
        for (Index j = 0; j < items && part < threads; ++j) {
            while (live > 0 && steps.size(live - 1) <= j) --live;
            running += live;
            while (part < threads && running * threads >= total * part) item_bounds[static_cast<size_t>(part++)] = j + 1;
        }
    }

    // Whether a job that got `parts` threads runs split by items (a busy pool's single part takes everything).
    bool items_split(int parts) const { return by_items && parts + 1 == static_cast<int>(item_bounds.size()); }

    // Thread k's item rows [first, last) and state units [c0, c0 + width). `parts` is what the job got: the
    // threads asked for, or 1 when the pool was busy (the one part then takes everything).
    void tile(const StepLayout& steps, Index H, int k, int parts, Index& first, Index& last, Index& c0,
              Index& width) const {
        if (items_split(parts)) {
            first = item_bounds[static_cast<size_t>(k)];
            last = item_bounds[static_cast<size_t>(k) + 1];
            c0 = 0;
            width = H;
        } else {
            first = 0;
            last = steps.size_or_zero(0);
            c0 = by_items ? 0 : split(H, k, parts);
            width = by_items ? H : split(H, k + 1, parts) - c0;
        }
    }
};

// One direction's weights: w_ih [G*H, I], w_hh [G*H, P], biases [G*H] (size 0: none), w_hr [P, H] (0 rows: none;
// then P = H).
template <class T>
struct LayerWeights {
    ConstMatrixRef<T> w_ih, w_hh;
    ConstVectorRef<T> b_ih, b_hh;
    ConstMatrixRef<T> w_hr;
};

// One direction's parameter gradients, laid out like LayerWeights; accumulated (+=).
template <class T>
struct LayerGrads {
    MatrixRef<T> w_ih, w_hh;
    VectorRef<T> b_ih, b_hh;
    MatrixRef<T> w_hr;
};

// The rows a thread's block of step t starts from: [a, cont) continue from the step processed before (rows
// `prev_offset + j`), [cont, b) start from the initial state (rows j of h0 / c0).
struct StepRows {
    Index t, n, offset, prev, prev_offset, a, b, cont;
    StepRows(const StepLayout& steps, Index s, bool reverse, Index first, Index last) {
        const Index T_ = steps.seq_len();
        t = reverse ? T_ - 1 - s : s;
        n = steps.size(t);
        offset = steps.offset(t);
        prev = reverse ? t + 1 : t - 1;
        const Index prev_n = steps.size_or_zero(prev);
        prev_offset = prev_n > 0 ? steps.offset(prev) : 0;
        a = std::min(first, n);
        b = std::min(last, n);
        cont = std::max(a, std::min(b, prev_n));
    }
};

// Multiply-adds of an input projection up to which a forward computes it whole with the per-step kernel, in one
// stretch without an interruption point (as a chunk of interruptible_rows_product). The kernel starts each row from
// the bias, where Eigen's GEMM needs the bias copied in first and packs both operands: the per-step kernel measured
// faster at every size tried (LSTM T50 B16 H128 inference 0.78 -> 0.73 ms, float64 2.29 -> 2.04 ms; training
// steps level), so Eigen's GEMM is left the projections of long calls that keep their gates (those of calls without
// a cache run in such chunks anyway), and those that the recurrence's threads would share among fewer threads than
// the GEMM's (one item of a wide input: a projection on one thread took 1.3-2x as long).
constexpr double kMaxWholeStepProjection = kChunkWork;

// Multiply-adds of one row's input projection up to which a recurrence on one thread projects its rows itself even
// where Eigen's GEMM could split the projection across threads: that thread then reads every row of the projection,
// and rows another core computed come from that core's cache, which for a narrow input costs more than the split
// saves (T500 B1, interleaved, GRU and LSTM with H 32-128: I 32 and 128 up to 1.7x faster in one thread, I 512 up
// to 1.4x slower; GRU stream_T1000_B1 0.61 -> 0.51 ms).
constexpr double kMaxOwnRowProjection = 1 << 15;

// A forward whose recurrence runs on one thread and projects its own inputs has them projected ahead by a second
// thread when it has at least kMinAheadSteps steps (I 32, H 64, interleaved: GRU T 64 1.03x, LSTM T 100 1.03-1.15x,
// both T 1000 1.26-1.39x; shorter calls would wake the thread for little), in blocks of kAheadRows rows (at least
// one step); the recurrence prefetches the rows kAheadPrefetch steps ahead of the one it runs.
constexpr Index kMinAheadSteps = 64, kAheadRows = 8, kAheadPrefetch = 2;

// The blocks of whole steps of a chunk that a projection ahead hands over. Either thread claims the next block,
// in order, and publishes it when projected: the recurrence, too, when it needs a block that no one has claimed
// (waking a pool thread can take as long as dozens of steps, 5-7% of LSTM stream_T1000_B1 spent waiting).
class AheadBlocks {
public:
    AheadBlocks(const StepLayout& steps, Index s_begin, Index s_end, bool reverse) {
        const Index T_ = steps.seq_len();
        for (Index s = s_begin; s < s_end;) {
            starts_.push_back(s);
            Index n = 0;
            for (; s < s_end && n < kAheadRows; ++s) n += steps.size(reverse ? T_ - 1 - s : s);
            // The block's steps hold contiguous rows, from its earliest time step on.
            first_rows_.push_back(steps.offset(reverse ? T_ - s : starts_.back()));
            rows_.push_back(n);
        }
        starts_.push_back(s_end);
        ready_.reset(new std::atomic<bool>[static_cast<size_t>(count())]);
        for (Index b = 0; b < count(); ++b) ready_[static_cast<size_t>(b)].store(false, std::memory_order_relaxed);
    }

    Index count() const { return static_cast<Index>(starts_.size()) - 1; }
    // The processing step that ends block b (the next block's first).
    Index end(Index b) const { return starts_[static_cast<size_t>(b) + 1]; }
    // Block b's rows of the layout: [first_row(b), first_row(b) + rows(b)).
    Index first_row(Index b) const { return first_rows_[static_cast<size_t>(b)]; }
    Index rows(Index b) const { return rows_[static_cast<size_t>(b)]; }
    // The block of step s, searching from block `from` on.
    Index block_of(Index s, Index from) const {
        while (end(from) <= s) ++from;
        return from;
    }
    // The next unclaimed block, count() when none is left.
    Index claim() { return std::min(claimed_.fetch_add(1, std::memory_order_relaxed), count()); }
    void publish(Index b) { ready_[static_cast<size_t>(b)].store(true, std::memory_order_release); }
    bool ready(Index b) const { return ready_[static_cast<size_t>(b)].load(std::memory_order_acquire); }

private:
    std::vector<Index> starts_, first_rows_, rows_;
    std::unique_ptr<std::atomic<bool>[]> ready_;
    alignas(64) std::atomic<Index> claimed_{0};  // on a line of its own: the recurrence reads the members above
};

// Prefetches the pre-activation rows of processing step s into this core's cache.
template <class T>
inline void prefetch_step(const StepLayout& steps, Index s, bool reverse, Index base, const MatrixRef<T>& z) {
    const Index t = reverse ? steps.seq_len() - 1 - s : s;
    const char* p = reinterpret_cast<const char*>(z.data() + (steps.offset(t) - base) * z.outerStride());
    const Index bytes = steps.size(t) * z.outerStride() * static_cast<Index>(sizeof(T));
#if defined(__GNUC__)
    for (Index b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 3);
#else
    (void)p;
    (void)bytes;
#endif
}

// Threads a split of `work` could use on this machine whatever set_num_threads says, so that a choice between two
// ways of computing that compares them gives the same bits at every setting.
inline double useful_threads(double work, double min_work) {
    return std::min<double>(usable_threads(), std::max(1.0, work / min_work));
}

// Rows of the gate buffer a forward without a cache needs (recurrent_forward's `gates` as a workspace): the
// projections of as many whole steps as fit in about kForwardChunkBytes, at least one step. A forward that keeps
// every step's gates for backward needs them all; one that does not would otherwise fault in tens of megabytes per
// call for a large layer.
constexpr double kForwardChunkBytes = 4 << 20;

// Bytes of pre-activations a chunk holds when the recurrence is not split by bands (split by items, or on one
// thread): each thread's steps then read rows projected moments before, and a chunk that fits in a core's L2
// keeps them there, where a larger one streams them through L3 (interleaved, chunks of 1 MB against 4 MB: LSTM
// big_T100_B64_H256 inference 0.87-0.97x the time, GRU 0.86-0.92x, bidir2_T50_B32_H128 0.84-1.0x). Split by
// bands, every chunk costs a barrier and its projection is a shared product: those keep kForwardChunkBytes (1 MB
// was 1.04-1.09x the time of LSTM big_T100_B64_H512).
constexpr double kItemsChunkBytes = 1 << 20;

// (`bytes`: the budget; recurrent_forward sizes its chunks within the workspace with kItemsChunkBytes.)
inline Index forward_workspace_rows(const StepLayout& steps, Index gate_cols, Index input_size, Index elem_size,
                                    double bytes = kForwardChunkBytes) {
    const double per_row = static_cast<double>(std::max<Index>(gate_cols, 1));
    // Bounded by work too, as interruptible_rows_product's chunks: a chunk's projection is not interruptible.
    const double rows = std::min(bytes / (per_row * static_cast<double>(elem_size)),
                                 kChunkWork / (per_row * static_cast<double>(std::max<Index>(input_size, 1))));
    return std::min(steps.rows(), std::max(steps.size_or_zero(0), static_cast<Index>(rows)));
}

// Forward of one direction of one layer.
//   x      [R, I]     layer input, laid out by `steps`
//   h0     [B, P]     initial state, 0 rows for zeros;  c0 [B, H] (LSTM), 0 rows for zeros
//   hs     [R, P]     out: the state after every step (may be a column block of a wider matrix)
//   gates  [R, G*H]   out: the activated gates (unused by cells that work in place in hs); or, with gates_kept
//                     false, a workspace of at least the largest step's rows: the steps then run in chunks that fit
//                     it (and kItemsChunkBytes, see below), each after its own input projection
//   aux    [R, H]     out: what the cell keeps beside them (LSTM c, GRU W_hn h + b_hn)
template <class Cell, class T>
void recurrent_forward(const LayerWeights<T>& wt, const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h0,
                       const ConstMatrixRef<T>& c0, Activation act, bool reverse, const StepLayout& steps,
                       MatrixRef<T> hs, MatrixRef<T> gates, MatrixRef<T> aux, bool gates_kept = true) {
    constexpr int G = Cell::kGates;
    const Index T_ = steps.seq_len(), P = wt.w_hh.cols(), H = wt.w_hh.rows() / G;
    const bool proj = wt.w_hr.rows() != 0;
    MatrixRef<T> z = Cell::kInPlace ? hs : gates;  // the pre-activations [R or fewer, G*H]
    // The input projection inside the step loop, with the per-step kernel: chunks of it, or one whole.
    const double projection_work = static_cast<double>(steps.rows()) * z.cols() * x.cols();
    const double recurrence_work = static_cast<double>(steps.batch()) * G * H * P;
    const double recurrence_threads = useful_threads(recurrence_work, kMinStepWork);
    const bool steps_project =
        !Cell::kInPlace && projection_work <= kMaxWholeStepProjection &&
        (recurrence_threads >= useful_threads(projection_work, kMinProductWork) ||
         (recurrence_threads < 2 && static_cast<double>(z.cols()) * x.cols() <= kMaxOwnRowProjection));
    const bool workspace = !Cell::kInPlace && !gates_kept;
    const bool small_workspace = workspace && gates.rows() < steps.rows();
    const bool project_in_steps = small_workspace || steps_project;
    if (small_workspace && gates.rows() < steps.size_or_zero(0)) {
        throw std::invalid_argument("gates: expected a workspace of at least " + std::to_string(steps.size(0)) +
                                    " rows, got " + std::to_string(gates.rows()));
    }
    if (!Cell::kInPlace && gates_kept && gates.rows() < steps.rows()) {
        throw std::invalid_argument("gates: expected " + std::to_string(steps.rows()) + " rows to keep, got " +
                                    std::to_string(gates.rows()));
    }
    // Where the input projection starts: b_ih, plus b_hh for cells that add the recurrent part to it (zeros without
    // biases); the GRU's recurrent part starts from b_hh (zeros without).
    RowVector<T> bias = RowVector<T>::Zero(G * H);
    if (wt.b_ih.size() != 0) {
        bias = wt.b_ih;
        if (!Cell::kSeparateHidden) bias += wt.b_hh;
    }
    const RowVector<T> hidden_start =
        Cell::kSeparateHidden ? (wt.b_hh.size() != 0 ? RowVector<T>(wt.b_hh) : RowVector<T>(RowVector<T>::Zero(G * H)))
                              : RowVector<T>();
    if (!project_in_steps) {
        // The input projection of every step at once; the recurrence then only adds h_{t-1} W_hh^T.
        if constexpr (kTiledWeightProducts<T>) {
            weight_rows_product<T>(z, x, wt.w_ih, true, false, bias.data());
        } else {
            interruptible_rows_product(z, x, wt.w_ih.transpose(), false, bias.data());
        }
    }
    if (T_ == 0 || steps.rows() == 0) return;
    const Index B = steps.batch();
    int threads = threads_for(static_cast<double>(B) * G * H * P, kMinStepWork);
    // (A projected LSTM mixes the units after the cell: items only.)
    RecurrenceSplit split(steps, threads, proj ? 0.0 : static_cast<double>(B) * G * H * P);
    if (proj && !split.by_items && threads > 1) split = RecurrenceSplit(steps, threads = 1);
    // A workspace that holds every step still runs in chunks when each thread's share of the pre-activations
    // outgrows kItemsChunkBytes and the steps project their own inputs anyway (so the bits of a forward that keeps
    // its gates): a recurrence split by items, or on one thread, then reads rows projected moments before rather
    // than from L3 (T50 I=H=128, interleaved: LSTM B32 0.84x the time on one thread, B16 0.94x, T200 B8 I64 0.88x;
    // B32 at two threads, 1.6 MB each, 0.86-0.93x; the GRU, whose recurrent part goes to a scratch of one step,
    // 0.89-0.97x on one thread, level at two; T50 B16 at two, 0.8 MB each, was 1.0-1.03x chunked).
    const bool unbanded = split.by_items || threads == 1;
    const double share = static_cast<double>(steps.rows()) * z.cols() * static_cast<double>(sizeof(T)) /
                         (split.by_items ? threads : 1);
    const bool chunked =
        small_workspace || (workspace && steps_project && unbanded && share > kItemsChunkBytes);
    // The rows of a chunk (chunked: the workspace's, or fewer, see kItemsChunkBytes).
    const Index capacity =
        chunked && unbanded
            ? std::min(z.rows(), forward_workspace_rows(steps, z.cols(), x.cols(), sizeof(T), kItemsChunkBytes))
            : z.rows();
    // Per-step scratch, rows = items: the recurrent part of cells that keep it apart, and the projected LSTM's
    // o * tanh(c) before projection. Each thread touches only its rows and units.
    RowMatrix<T> hidden(Cell::kSeparateHidden ? B : 0, G * H), unprojected(proj ? B : 0, H);
    const double step_work = static_cast<double>(B) * G * H * P;
    // A recurrence on one thread that projects its own inputs hands the projection to a second thread, which runs
    // ahead of it a block of steps at a time: the recurrence then only adds h W_hh^T (the rows reach it from the
    // other core's cache, fetched a few steps before it reads them).
    const bool ahead = project_in_steps && threads == 1 && T_ >= kMinAheadSteps &&
                       threads_for(projection_work, kMinProductWork) >= 2;
    const int workers = ahead ? 2 : threads;
    Barrier step_done;
    FirstError error;
    // Each thread's rows of W_hh, packed in the first chunk and kept for the others; project_in_steps: W_ih too, each
    // thread projecting a share of every chunk's rows (ahead: thread 1 all of them).
    std::vector<StepWeights<T>> w_bands(static_cast<size_t>(threads));
    std::vector<StepWeights<T>> w_inputs(static_cast<size_t>(project_in_steps ? workers : 0));
    std::vector<StepWeights<T>> w_projs(static_cast<size_t>(proj ? threads : 0));  // W_hr, for each thread
    // Processing order: s = 0 .. T_-1, step t = s (forward) or T_-1-s (reverse).
    for (Index s_begin = 0, s_end = 0; s_begin < T_; s_begin = s_end) {
        // The chunk: processing positions [s_begin, s_end), their rows starting at `base`.
        Index rows = 0;
        s_end = s_begin;
        while (s_end < T_) {
            const Index n = steps.size(reverse ? T_ - 1 - s_end : s_end);
            if (chunked && rows + n > capacity) break;
            rows += n;
            ++s_end;
        }
        const Index base = chunked ? steps.offset(reverse ? T_ - s_end : s_begin) : 0;
        if (rows == 0) break;  // the remaining steps are empty
        StepStop stop;
        const std::unique_ptr<AheadBlocks> blocks(ahead ? new AheadBlocks(steps, s_begin, s_end, reverse) : nullptr);
        parallel(workers, [&](int k, int parts) {
            // W_ih packed once per call, by each thread that projects.
            const auto pack_input = [&](StepWeights<T>& w_in) {
                return error.run([&] {
                    if (!w_in.holds(wt.w_ih.data(), G * H)) {
                        w_in.template pack<Eigen::RowMajor>(wt.w_ih.data(), wt.w_ih.outerStride(), G * H, wt.w_ih.cols(),
                                                            z.rows(), rows);
                    }
                });
            };
            const auto project = [&](StepWeights<T>& w_in, Index row, Index n) {  // chunk rows [row, row + n)
                w_in.multiply_add(x.data() + (base + row) * x.outerStride(), x.outerStride(), n,
                                  z.data() + row * z.outerStride(), z.outerStride(), 0, false, bias.data());
            };
            // Ahead, with both threads: thread 1 projects the blocks it claims and publishes each (also on failure,
            // so that the recurrence never waits for rows that will not come).
            const bool projector = ahead && parts == 2;
            const auto project_block = [&](StepWeights<T>& w_in, bool packed_in, Index b) {
                if (packed_in && blocks->rows(b) > 0) project(w_in, blocks->first_row(b) - base, blocks->rows(b));
                blocks->publish(b);
            };
            if (projector && k == 1) {
                StepWeights<T>& w_in = w_inputs[1];
                const bool packed_in = pack_input(w_in);
                for (Index b = blocks->claim(); b < blocks->count(); b = blocks->claim()) project_block(w_in, packed_in, b);
                return;
            }
            const int rparts = projector ? 1 : parts;  // the recurrence's threads
            Index first = 0, last = 0, c0_ = 0, width = 0;
            split.tile(steps, H, k, rparts, first, last, c0_, width);
            if (project_in_steps && !projector) {
                // This thread's share of the chunk's input projection. Split by items, the rows of its own items,
                // step by step: rows another core projected would reach it from that core's cache (T50 B16 H128
                // inference 6-7% faster this way). By bands, every thread's steps read every row: a share of the
                // chunk's rows each, then a barrier.
                const bool own_rows = split.items_split(parts);
                StepWeights<T>& w_in = w_inputs[static_cast<size_t>(k)];
                const bool packed_in = pack_input(w_in);
                if (packed_in && own_rows) {
                    for (Index s = s_begin; s < s_end; ++s) {
                        const StepRows st(steps, s, reverse, first, last);
                        if (st.b > st.a) project(w_in, st.offset - base + st.a, st.b - st.a);
                    }
                } else if (packed_in) {
                    const Index p0 = detail::split(rows, k, parts, 1), p1 = detail::split(rows, k + 1, parts, 1);
                    if (p1 > p0) project(w_in, p0, p1 - p0);
                }
                if (!own_rows) step_done.wait(parts);
            }
            // The rows of W_hh for this thread's units: all of W_hh, or the band's rows of each gate as segments of
            // one product. (A job that ran as one part, the pool being busy, has other units than the chunk
            // before.) On failure (packing allocates) the thread still meets its partners at every step, doing
            // nothing.
            StepWeights<T>& w_band = w_bands[static_cast<size_t>(k)];
            const bool ready = error.run([&] {
                if (last <= first || width <= 0) return;
                const Index stride = wt.w_hh.outerStride();
                const T* data = wt.w_hh.data() + c0_ * stride;
                const Index rows_per_segment = width == H ? G * H : width, segments = width == H ? 1 : G;
                if (!w_band.holds(data, rows_per_segment, segments)) {
                    w_band.template pack<Eigen::RowMajor>(data, stride, rows_per_segment, P, B, T_, segments, H, G * H);
                }
                StepWeights<T>* w_proj = proj ? &w_projs[static_cast<size_t>(k)] : nullptr;
                if (w_proj != nullptr && !w_proj->holds(wt.w_hr.data(), P)) {
                    w_proj->template pack<Eigen::RowMajor>(wt.w_hr.data(), wt.w_hr.outerStride(), P, H, B, T_);
                }
            });
            const Index ld = hs.outerStride(), zld = z.outerStride();
            Index block = 0, known = 0;
            int packed_here = -1;  // projector: whether this thread packed W_ih to claim blocks itself (-1: not yet)
            for (Index s = s_begin; s < s_end; ++s) {
                if (stop.before(s - s_begin, k, step_work)) break;
                const StepRows st(steps, s, reverse, first, last);
                if (projector) {
                    // Blocks [0, known) are known to be ready: the flags, which the other thread writes, are read
                    // only past them (each read after a write is a transfer between cores).
                    block = blocks->block_of(s, block);
                    if (block >= known) {
                        if (!blocks->ready(block)) {  // claim blocks up to this one, then wait for any claimed before
                            if (packed_here < 0) packed_here = pack_input(w_inputs[0]) ? 1 : 0;
                            for (Index b = blocks->claim(); b < blocks->count(); b = blocks->claim()) {
                                project_block(w_inputs[0], packed_here == 1, b);
                                if (b >= block) break;
                            }
                            spin_until([&] { return blocks->ready(block); });
                        }
                        for (known = block + 1; known < blocks->count() && blocks->ready(known);) ++known;
                    }
                    const Index next = s + kAheadPrefetch;
                    if (next < s_end && blocks->block_of(next, block) < known) prefetch_step(steps, next, reverse, base, z);
                }
                if (ready && st.b > st.a && width > 0) {
                    for (int part = 0; part < 2; ++part) {
                        const Index r0 = part == 0 ? st.a : st.cont, r1 = part == 0 ? st.cont : st.b;
                        if (r1 <= r0) continue;
                        const Index m = r1 - r0;
                        // The state and cell state this block starts from (null: zeros).
                        const T* h_src = part == 0 ? hs.data() + (st.prev_offset + r0) * ld
                                                   : (h0.rows() != 0 ? h0.data() + r0 * h0.outerStride() : nullptr);
                        const Index h_src_ld = part == 0 ? ld : h0.outerStride();
                        const T* c_src = nullptr;
                        Index c_src_ld = 0;
                        if (Cell::kAux && !Cell::kSeparateHidden) {  // LSTM's c
                            c_src = part == 0 ? aux.data() + (st.prev_offset + r0) * aux.outerStride() + c0_
                                              : (c0.rows() != 0 ? c0.data() + r0 * c0.outerStride() + c0_ : nullptr);
                            c_src_ld = part == 0 ? aux.outerStride() : c0.outerStride();
                        }
                        T* zrow = z.data() + (st.offset - base + r0) * zld + c0_;
                        T* hid = Cell::kSeparateHidden ? hidden.data() + r0 * hidden.outerStride() + c0_ : nullptr;
                        if (Cell::kSeparateHidden && h_src == nullptr) {  // the recurrent part is b_hh alone
                            for (Index r = 0; r < m; ++r) {
                                T* row = hid + r * hidden.outerStride();
                                for (int g = 0; g < G; ++g) {
                                    const T* from = hidden_start.data() + g * H + c0_;
                                    std::copy(from, from + width, row + g * H);
                                }
                            }
                        }
                        if (h_src != nullptr) {
                            if (Cell::kSeparateHidden) {  // b_hh + h_{t-1} W_hh^T
                                w_band.multiply_add(h_src, h_src_ld, m, hid, hidden.outerStride(), H, (s & 1) != 0,
                                                    hidden_start.data() + c0_);
                            } else {
                                w_band.multiply_add(h_src, h_src_ld, m, zrow, zld, H, (s & 1) != 0);
                            }
                        }
                        ForwardBlock<T> fb;
                        fb.m = m;
                        fb.w = width;
                        fb.H = H;
                        fb.act = act;
                        fb.gates = zrow;
                        fb.gates_ld = zld;
                        fb.hidden = hid;
                        fb.hidden_ld = hidden.outerStride();
                        fb.h_prev = h_src != nullptr ? h_src + c0_ : nullptr;
                        fb.h_prev_ld = h_src_ld;
                        fb.c_prev = c_src;
                        fb.c_prev_ld = c_src_ld;
                        if (proj) {
                            fb.h = unprojected.data() + r0 * unprojected.outerStride() + c0_;
                            fb.h_ld = unprojected.outerStride();
                        } else {
                            fb.h = hs.data() + (st.offset + r0) * ld + c0_;
                            fb.h_ld = ld;
                        }
                        if (Cell::kAux) {
                            fb.aux = aux.data() + (st.offset + r0) * aux.outerStride() + c0_;
                            fb.aux_ld = aux.outerStride();
                        }
                        Cell::template forward<T>(fb);
                        if (proj) {  // by items: this thread has every unit of its rows
                            hs.middleRows(st.offset + r0, m).setZero();
                            w_projs[static_cast<size_t>(k)].multiply_add(
                                unprojected.data() + r0 * unprojected.outerStride(), unprojected.outerStride(), m,
                                hs.data() + (st.offset + r0) * ld, ld, 0, (s & 1) != 0);
                        }
                    }
                }
                if (!split.by_items) step_done.wait(rparts);  // the next step reads every band of these rows
            }
        });
        error.rethrow();
        stop.rethrow();
    }
}

// The sum of m's rows [rows, cols], a row at a time (Eigen's colwise().sum() of a row-major matrix walks each packet
// of columns down all the rows: 6% of an LSTM T50 B16 H128 backward, for two such sums).
template <class T, class M>
RowVector<T> row_sum(const M& m) {
    RowVector<T> sum = RowVector<T>::Zero(m.cols());
    for (Index r = 0; r < m.rows(); ++r) sum.noalias() += m.row(r);
    return sum;
}

// Bytes of a chunk's dz (and of its inputs, and of its states) up to which its weight gradients are made with
// PanelWeights' transposed product rather than Eigen's GEMM, as a multiple of L2: a share of dz that stays in L2
// (T50 B16 H128, per thread at two threads: dW_hh 1.14x, dW_ih 1.26x, bench_kernels' weight_gradient); over several
// L2-sized blocks of rows Eigen's was level or faster with 16 vector registers. With 32 (kTiledWeightProducts) the
// tiles win at every size (Zen 4, weight_gradient: 85-94 GFLOP/s against Eigen's 64-71, M1024 N512 K1600
// included; train steps of the big and bidir2 LSTMs 1.15-1.19x, GRUs 1.06-1.15x, Elman level), so every chunk
// takes them there. A property of the call and the build (never of the thread count), so that every setting
// computes the same bits.
constexpr double kPanelGradientL2s = 2;

// (Internal linkage, as gemm.hpp's packing buffers: each module keeps its own.)
namespace {
// This thread's layout of a weight gradient's right-hand side, kept for the next call: a few times L2 at most, as
// the chunks that use it are bounded (kPanelGradientL2s), or with kTiledWeightProducts a chunk's inputs or states
// (stack.cpp: chunks of up to kBackwardChunkRows rows).
template <class T>
PanelWeights<T>& gradient_panels() {
    thread_local PanelWeights<T> panels;
    return panels;
}
}  // namespace

// One of a chunk's weight gradients: dst [M, N] += dz^T [M, R] * A [R, N], dz row-major with row stride dz_stride,
// A's row r at a_rows[r].
template <class T>
struct ChunkGradient {
    MatrixRef<T>* dst;
    const T* dz;
    Index dz_stride;
    const T* const* a_rows;
};

// A chunk's weight gradients in one job, each thread taking the same rows of every dst (and laying out each A
// itself: a copy of a few hundred kilobytes, where sharing one would cost a barrier).
template <class T>
void chunk_gradients(std::initializer_list<ChunkGradient<T>> products, Index rows) {
    // Threads as for the largest product alone (as rows_product would choose for it): tiny products stay on the
    // calling thread.
    double work = 0;
    Index m = 0;
    for (const ChunkGradient<T>& p : products) {
        work = std::max(work, static_cast<double>(p.dst->rows()) * p.dst->cols() * rows);
        m = std::max(m, p.dst->rows());
    }
    parallel_rows(m, work, [&](Index r0, Index r1) {
        for (const ChunkGradient<T>& p : products) {
            const Index end = std::min(r1, p.dst->rows());
            if (end <= r0) continue;
            PanelWeights<T>& panels = gradient_panels<T>();
            panels.pack_rows(p.a_rows, p.dst->cols(), rows);
            panels.multiply_add_transposed(p.dz + r0, p.dz_stride, end - r0, p.dst->data() + r0 * p.dst->outerStride(),
                                           p.dst->outerStride());
        }
    });
}

// Multiply-adds per thread up to which a product after a chunk of BPTT steps stays whole (some tens of ms): each
// piece of a split one packs its right-hand side again, and the largest case of the benchmark grid (LSTM H512,
// 2048-row chunks: 2^30 per thread at two threads) would pay that.
constexpr double kBackwardProductWork = 1 << 30;

// Gradients behind: a backward whose recurrence runs on one thread whatever the setting (a step under kMinStepWork)
// makes its chunks' weight, bias and input gradients in blocks of whole steps of at least kBehindRows rows, in
// processing order, and with a second thread free that thread makes each block's as soon as the recurrence has
// passed it, instead of the recurrence's thread after the chunk (LSTM stream_T1000_B1: those products were a sixth of
// the training step). A property of the call (of its step's size and length), so every thread count sums the same
// blocks in the same order: the same bits with or without the second thread.
constexpr Index kBehindRows = 64, kMinBehindSteps = 2 * kBehindRows;

// A block of a chunk's steps whose weight, bias and input gradients are made together: complete once the recurrence
// has run processing position `last_s` (its lowest); its rows are the chunk's rows [r0, r1).
struct StepBlock {
    Index last_s, r0, r1;
};

// BPTT of one direction of one layer. Only the recurrence is sequential; the weight, bias and input gradients are
// products over many rows. The recurrence runs in chunks of whole steps that fit in dz, each followed by its
// chunk's products: dz bounds the memory, and a chunk of a few thousand rows keeps the products as fast as one over
// all rows.
//   x, h0, c0, hs, gates, aux   as in recurrent_forward (what it made)
//   dhs    [R, P]     gradient flowing into hs from above; 0 rows means none
//   dh_n   [B, P]     gradient of each item's final state, 0 rows for none;  dc_n [B, H] (LSTM) likewise
//   dx     [R, I]     accumulated (+=), so the two directions of a layer can share it; 0 rows: not computed
//   dh0    [B, P]     out (=): gradient of the initial state;  dc0 [B, H] (LSTM) likewise
//   grads  accumulated (+=)
//   dz     [C, G*H]   workspace for a chunk's pre-activation gradients, C >= the largest step's rows; cells that
//                     keep the recurrent part apart need dzh [C, G*H] too
template <class Cell, class T>
void recurrent_backward(const LayerWeights<T>& wt, const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h0,
                        const ConstMatrixRef<T>& c0, const ConstMatrixRef<T>& hs, const ConstMatrixRef<T>& gates,
                        const ConstMatrixRef<T>& aux, const ConstMatrixRef<T>& dhs, const ConstMatrixRef<T>& dh_n,
                        const ConstMatrixRef<T>& dc_n, Activation act, bool reverse, const StepLayout& steps,
                        MatrixRef<T> dx, MatrixRef<T> dh0, MatrixRef<T> dc0, LayerGrads<T> grads,
                        MatrixRef<T> dz, MatrixRef<T> dzh) {
    constexpr int G = Cell::kGates;
    constexpr bool kCellState = Cell::kAux && !Cell::kSeparateHidden;  // LSTM
    const Index T_ = steps.seq_len(), P = wt.w_hh.cols(), H = wt.w_hh.rows() / G;
    const bool proj = wt.w_hr.rows() != 0;
    // dh0 carries dL/dh_{t-1} backwards through time (dc0 dL/dc_{t-1}). An item's row is written for the last
    // time at its first processed step, so it ends as dL/dh0; rows of items that have not started yet still hold
    // their dh_n.
    if (dh_n.rows() != 0) {
        dh0 = dh_n;
    } else {
        dh0.setZero();
    }
    if (kCellState) {
        if (dc_n.rows() != 0) {
            dc0 = dc_n;
        } else {
            dc0.setZero();
        }
    }
    if (T_ == 0 || steps.rows() == 0) return;
    if (dz.rows() < steps.size(0) || dz.cols() != G * H) {
        throw std::invalid_argument("dz: expected a workspace of at least " + std::to_string(steps.size(0)) +
                                    " rows and " + std::to_string(G * H) + " columns, got [" +
                                    std::to_string(dz.rows()) + ", " + std::to_string(dz.cols()) + "]");
    }
    const ConstMatrixRef<T>& saved = Cell::kInPlace ? hs : gates;  // the activated gates
    MatrixRef<T>& dz_hidden = Cell::kSeparateHidden ? dzh : dz;
    const Index B = steps.batch();
    // Previous states of a packed chunk, gathered so that its dW_hh is one Eigen product (made when first needed);
    // the projected LSTM's dL/dh of a chunk's rows and o * tanh(c) (for dW_hr), and dL/d(o * tanh c) of a step.
    RowMatrix<T> h_prev;
    std::vector<const T*> x_rows, h_rows;  // pointers to a chunk's rows of x and to their previous states
    const RowVector<T> zero_state = RowVector<T>::Zero(P);
    RowMatrix<T> dh_chunk(proj ? dz.rows() : 0, P), unprojected(proj ? dz.rows() : 0, H), d_unprojected(proj ? B : 0, H);
    // W_ih laid out once for every chunk's dX (kTiledWeightProducts).
    PanelWeights<T> w_ih_panels;
    if (kTiledWeightProducts<T> && dx.rows() != 0) pack_weight<T>(w_ih_panels, wt.w_ih, false);
    int threads = threads_for(static_cast<double>(B) * G * H * P, kMinStepWork);
    // (A projected LSTM mixes the units after the cell: items only.)
    RecurrenceSplit split(steps, threads, proj ? 0.0 : static_cast<double>(B) * G * H * P);
    if (proj && !split.by_items && threads > 1) split = RecurrenceSplit(steps, threads = 1);
    const double step_work = static_cast<double>(B) * G * H * P;
    const bool behind = !proj && step_work < kMinStepWork && T_ >= kMinBehindSteps;
    Barrier bands_done;
    FirstError error;
    // Each thread's columns of W_hh, packed in the first chunk and kept for the others.
    std::vector<StepWeights<T>> w_bands(static_cast<size_t>(threads));
    std::vector<StepWeights<T>> w_projs(static_cast<size_t>(proj ? threads : 0));  // W_hr^T, for each thread
    // Processing order: s = T_-1 down to 0, step t = s (forward) or T_-1-s (reverse).
    Index s_next = T_ - 1;
    while (s_next >= 0) {
        // The chunk: processing positions [s_end, s_begin], as many as fit in dz; its steps [t_lo, t_hi].
        const Index s_begin = s_next;
        Index s_end = s_begin, chunk_rows = 0;
        for (Index s = s_begin; s >= 0; --s) {
            const Index n = steps.size(reverse ? T_ - 1 - s : s);
            if (chunk_rows + n > dz.rows()) break;
            chunk_rows += n;
            s_end = s;
        }
        s_next = s_end - 1;
        const Index t_lo = reverse ? T_ - 1 - s_begin : s_end, t_hi = reverse ? T_ - 1 - s_end : s_begin;
        const Index base = steps.offset(t_lo);
        if (chunk_rows == 0) continue;
        MatrixMap<T> dzc(dz.data(), chunk_rows, G * H, Eigen::OuterStride<>(dz.outerStride()));
        MatrixMap<T> dzhc(dz_hidden.data(), chunk_rows, G * H, Eigen::OuterStride<>(dz_hidden.outerStride()));
        StepStop stop;
        // (The chunk's inputs and states are laid out too, in a block each thread keeps: as bounded as dz.)
        const double panel_bytes = kPanelGradientL2s * static_cast<double>(Eigen::l2CacheSize());
        const bool own_gradients =
            kTiledWeightProducts<T> ||
            (static_cast<double>(chunk_rows) * static_cast<double>(sizeof(T)) * G * H <= panel_bytes &&
             static_cast<double>(chunk_rows) * static_cast<double>(sizeof(T)) * std::max(x.cols(), P) <= panel_bytes);
        // The state before each row's step (dW_hh pairs it with the row's dz): h0, or zeros, where an item starts,
        // hs elsewhere. Full batches on Eigen's path take hs's rows as they lie instead.
        if (own_gradients || !steps.is_uniform()) {
            h_rows.resize(static_cast<size_t>(chunk_rows));
            for (Index t = t_lo; t <= t_hi; ++t) {
                const Index n = steps.size(t), oc = steps.offset(t) - base;
                const Index prev = reverse ? t + 1 : t - 1;
                const Index cont = std::min(n, steps.size_or_zero(prev));
                for (Index i = 0; i < n; ++i) {
                    h_rows[static_cast<size_t>(oc + i)] =
                        i < cont ? hs.data() + (steps.offset(prev) + i) * hs.outerStride()
                                 : (h0.rows() != 0 ? h0.data() + i * h0.outerStride() : zero_state.data());
                }
            }
        }
        if (own_gradients) {
            x_rows.resize(static_cast<size_t>(chunk_rows));
            for (Index r = 0; r < chunk_rows; ++r) x_rows[static_cast<size_t>(r)] = x.data() + (base + r) * x.outerStride();
        }
        // The chunk's weight, bias and input gradients on the tiled path, in blocks of its rows: one block covering
        // the chunk, or with gradients behind (kBehindRows) blocks of whole steps in processing order.
        std::vector<StepBlock> blocks;
        if (own_gradients && behind) {
            for (Index s_hi = s_begin; s_hi >= s_end;) {
                Index n = 0, s = s_hi;
                for (; s >= s_end && n < kBehindRows; --s) n += steps.size(reverse ? T_ - 1 - s : s);
                const Index s_lo = s + 1, t_a = reverse ? T_ - 1 - s_hi : s_lo, t_b = reverse ? T_ - 1 - s_lo : s_hi;
                blocks.push_back(StepBlock{s_lo, steps.offset(t_a) - base, steps.offset(t_b) + steps.size(t_b) - base});
                s_hi = s_lo - 1;
            }
        } else if (own_gradients) {
            blocks.push_back(StepBlock{s_end, 0, chunk_rows});
        }
        // The input and bias gradients of the chunk's rows [r0, r0 + n).
        const auto rows_dx_bias = [&](Index r0, Index n) {
            if (dx.rows() != 0) {
                if constexpr (kTiledWeightProducts<T>) {
                    weight_rows_product<T>(dx.middleRows(base + r0, n), dzc.middleRows(r0, n), w_ih_panels, true,
                                           nullptr, kBackwardProductWork);
                } else {
                    interruptible_rows_product(dx.middleRows(base + r0, n), dzc.middleRows(r0, n), wt.w_ih, true,
                                               nullptr, kBackwardProductWork);
                }
            }
            if (grads.b_ih.size() != 0) {
                // One sum for cells whose recurrent part shares dz (b_ih's and b_hh's gradients are equal).
                const RowVector<T> sums = row_sum<T>(dzc.middleRows(r0, n));
                grads.b_ih += sums;
                grads.b_hh += Cell::kSeparateHidden ? row_sum<T>(dzhc.middleRows(r0, n)) : sums;
            }
        };
        // A block's gradients: dW_ih and dW_hh in one job, from pointers to each row's input and previous state.
        const auto block_products = [&](const StepBlock& b) {
            const Index n = b.r1 - b.r0;
            if (n <= 0) return;
            MatrixRef<T> dw_ih = grads.w_ih, dw_hh = grads.w_hh;
            chunk_gradients<T>({{&dw_ih, dzc.data() + b.r0 * dzc.outerStride(), dzc.outerStride(), x_rows.data() + b.r0},
                                {&dw_hh, dzhc.data() + b.r0 * dzhc.outerStride(), dzhc.outerStride(),
                                 h_rows.data() + b.r0}},
                               n);
            rows_dx_bias(b.r0, n);
        };
        // A second thread for the blocks where one is free (the products' own threads, as chunk_gradients would
        // split them).
        const bool helper = behind && own_gradients && threads == 1 &&
                            threads_for(static_cast<double>(chunk_rows) * G * H * static_cast<double>(x.cols() + P),
                                        kMinProductWork) >= 2;
        std::atomic<Index> passed{0};        // blocks the recurrence has passed
        std::atomic<bool> abandoned{false};  // the recurrence stopped early: no more blocks will come
        std::atomic<Index> helped{0};        // blocks the second thread made
        // Split as in recurrent_forward. With bands a thread computes its units of dz, then (after all bands are
        // done) its units of dz W_hh; the next step reads only the thread's own units of dh0, so one barrier per
        // step suffices. With items split, a thread has all of its rows' dz and needs no barrier.
        parallel(helper ? 2 : threads, [&](int k, int parts) {
            if (helper && parts == 2 && k == 1) {
                for (size_t j = 0; j < blocks.size(); ++j) {
                    const Index need = static_cast<Index>(j) + 1;
                    spin_until([&] {
                        return passed.load(std::memory_order_acquire) >= need || abandoned.load(std::memory_order_acquire);
                    });
                    if (passed.load(std::memory_order_acquire) < need) return;
                    if (!error.run([&] { block_products(blocks[j]); })) return;
                    helped.store(need, std::memory_order_release);
                }
                return;
            }
            const int rparts = helper ? 1 : parts;  // the recurrence's threads
            Index first = 0, last = 0, c0_ = 0, width = 0;
            split.tile(steps, H, k, rparts, first, last, c0_, width);
            StepWeights<T>& w_band = w_bands[static_cast<size_t>(k)];  // W_hh's columns for this thread's dh
            // (A job that ran as one part, the pool being busy, has other columns and rows than the chunk before.)
            // The units of dh this thread owns: its band, or every column of the projection.
            const Index p0 = proj ? 0 : c0_, pw = proj ? P : width;
            const bool ready = error.run([&] {
                if (last <= first || width <= 0) return;
                const T* data = wt.w_hh.data() + p0;
                if (!w_band.holds(data, pw)) {
                    w_band.template pack<Eigen::ColMajor>(data, wt.w_hh.outerStride(), pw, G * H, B, T_, 1, 0, P);
                }
                StepWeights<T>* w_proj = proj ? &w_projs[static_cast<size_t>(k)] : nullptr;
                if (w_proj != nullptr && !w_proj->holds(wt.w_hr.data(), H)) {
                    w_proj->template pack<Eigen::ColMajor>(wt.w_hr.data(), wt.w_hr.outerStride(), H, P, B, T_);
                }
            });
            size_t next_block = 0;
            for (Index s = s_begin; s >= s_end; --s) {
                if (stop.before(s_begin - s, k, step_work)) {
                    abandoned.store(true, std::memory_order_release);
                    break;
                }
                const StepRows st(steps, s, reverse, first, last);
                const Index oc = st.offset - base;
                if (ready && st.b > st.a && width > 0) {
                    const Index m_all = st.b - st.a;
                    // dL/dh of the step: what the next step carried back plus what came from above.
                    MatrixMap<T> carry(dh0.data() + st.a * dh0.outerStride() + p0, m_all, pw,
                                       Eigen::OuterStride<>(dh0.outerStride()));
                    if (dhs.rows() != 0) carry += dhs.block(st.offset + st.a, p0, m_all, pw);
                    if (proj) {  // by items: this thread has every unit of its rows
                        dh_chunk.middleRows(oc + st.a, m_all) = carry;
                        d_unprojected.middleRows(st.a, m_all).setZero();
                        w_projs[static_cast<size_t>(k)].multiply_add(carry.data(), carry.outerStride(), m_all,
                                                                     d_unprojected.data() + st.a * d_unprojected.outerStride(),
                                                                     d_unprojected.outerStride(), 0, (s & 1) != 0);
                    }
                    for (int part = 0; part < 2; ++part) {
                        const Index r0 = part == 0 ? st.a : st.cont, r1 = part == 0 ? st.cont : st.b;
                        if (r1 <= r0) continue;
                        const Index m = r1 - r0;
                        BackwardBlock<T> bb;
                        bb.m = m;
                        bb.w = width;
                        bb.H = H;
                        bb.act = act;
                        bb.gates = saved.data() + (st.offset + r0) * saved.outerStride() + c0_;
                        bb.gates_ld = saved.outerStride();
                        if (Cell::kAux) {
                            bb.aux = aux.data() + (st.offset + r0) * aux.outerStride() + c0_;
                            bb.aux_ld = aux.outerStride();
                        }
                        bb.h = hs.data() + (st.offset + r0) * hs.outerStride() + c0_;
                        bb.h_ld = hs.outerStride();
                        if (part == 0) {
                            bb.h_prev = hs.data() + (st.prev_offset + r0) * hs.outerStride() + c0_;
                            bb.h_prev_ld = hs.outerStride();
                            if (kCellState) {
                                bb.c_prev = aux.data() + (st.prev_offset + r0) * aux.outerStride() + c0_;
                                bb.c_prev_ld = aux.outerStride();
                            }
                        } else {
                            bb.h_prev = h0.rows() != 0 ? h0.data() + r0 * h0.outerStride() + c0_ : nullptr;
                            bb.h_prev_ld = h0.outerStride();
                            if (kCellState && c0.rows() != 0) {
                                bb.c_prev = c0.data() + r0 * c0.outerStride() + c0_;
                                bb.c_prev_ld = c0.outerStride();
                            }
                        }
                        if (proj) {
                            bb.dh = d_unprojected.data() + r0 * d_unprojected.outerStride();
                            bb.dh_ld = d_unprojected.outerStride();
                        } else {
                            bb.dh = dh0.data() + r0 * dh0.outerStride() + c0_;
                            bb.dh_ld = dh0.outerStride();
                        }
                        if (kCellState) {
                            bb.dc = dc0.data() + r0 * dc0.outerStride() + c0_;
                            bb.dc_ld = dc0.outerStride();
                        }
                        bb.dz = dzc.data() + (oc + r0) * dzc.outerStride() + c0_;
                        bb.dz_ld = dzc.outerStride();
                        bb.dzh = dzhc.data() + (oc + r0) * dzhc.outerStride() + c0_;
                        bb.dzh_ld = dzhc.outerStride();
                        Cell::template backward<T>(bb);
                    }
                    if (proj) carry.setZero();  // the projection has no path to h_prev but through W_hh
                }
                if (!split.by_items) bands_done.wait(rparts);
                if (ready && st.b > st.a && width > 0) {
                    w_band.multiply_add(dzhc.data() + (oc + st.a) * dzhc.outerStride(), dzhc.outerStride(),
                                        st.b - st.a, dh0.data() + st.a * dh0.outerStride() + p0, dh0.outerStride(), 0,
                                        (s & 1) != 0);
                }
                if (helper && next_block < blocks.size() && s == blocks[next_block].last_s) {
                    passed.store(static_cast<Index>(++next_block), std::memory_order_release);
                }
            }
        });
        error.rethrow();
        stop.rethrow();
        // The blocks the second thread did not make (all of them without one), in the same order.
        for (size_t j = static_cast<size_t>(helped.load(std::memory_order_acquire)); j < blocks.size(); ++j) {
            block_products(blocks[j]);
            interruption_point(static_cast<double>(blocks[j].r1 - blocks[j].r0) * G * H *
                               static_cast<double>(x.cols() + P));
        }
        // Products of Eigen's path and dW_hr, polled between them and split when larger than kBackwardProductWork
        // per thread.
        const auto chunk_product = [](auto&& dst, const auto& lhs, const auto& rhs, bool add) {
            interruptible_rows_product(dst, lhs, rhs, add, nullptr, kBackwardProductWork);
        };
        if (!own_gradients) {
            // Eigen's path: the chunk's weight gradients.
            chunk_product(grads.w_ih, dzc.transpose(), x.middleRows(base, chunk_rows), true);
            if (steps.is_uniform()) {
                // The sequence's first processed step (t = 0 forward, T_-1 reverse) starts from h0.
                const Index first = reverse ? T_ - 1 : 0;
                const bool has_first = t_lo <= first && first <= t_hi;
                const Index rest = chunk_rows - (has_first ? B : 0);
                if (has_first && h0.rows() != 0) {
                    chunk_product(grads.w_hh, dzhc.middleRows(steps.offset(first) - base, B).transpose(), h0, true);
                }
                if (rest > 0) {
                    // Rows of the steps other than `first`, and the states one step earlier in processing order.
                    const Index dz_row = reverse ? 0 : (has_first ? B : 0);
                    const Index h_row = reverse ? base + B : base + dz_row - B;
                    chunk_product(grads.w_hh, dzhc.middleRows(dz_row, rest).transpose(), hs.middleRows(h_row, rest),
                                 true);
                }
            } else {
                // Gathered, so that dW_hh is one product.
                h_prev.resize(dz.rows(), P);
                for (Index r = 0; r < chunk_rows; ++r) {
                    h_prev.row(r) = Eigen::Map<const RowVector<T>>(h_rows[static_cast<size_t>(r)], P);
                }
                chunk_product(grads.w_hh, dzhc.transpose(), h_prev.topRows(chunk_rows), true);
            }
            rows_dx_bias(0, chunk_rows);
        }
        if (proj) {
            // dW_hr pairs each step's dL/dh with o * tanh(c), recomputed from the saved gates and c.
            for (Index r = 0; r < chunk_rows; ++r) {
                unprojected.row(r) = (saved.row(base + r).segment(3 * H, H).array() *
                                      aux.row(base + r).array().unaryExpr(TanhOp<T>())).matrix();
            }
            chunk_product(grads.w_hr, dh_chunk.topRows(chunk_rows).transpose(), unprojected.topRows(chunk_rows), true);
        }
    }
}

// Each cell kind's driver is compiled in its own file (elman.cpp, lstm.cpp, gru.cpp), in parallel.
#define RNNFAST_RECURRENT(prefix, Cell, T)                                                                          \
    prefix template void recurrent_forward<Cell, T>(                                                               \
        const LayerWeights<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&,     \
        Activation, bool, const StepLayout&, MatrixRef<T>, MatrixRef<T>, MatrixRef<T>, bool);                    \
    prefix template void recurrent_backward<Cell, T>(                                                              \
        const LayerWeights<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&,     \
        const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&,   \
        const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, Activation, bool, const StepLayout&, MatrixRef<T>,    \
        MatrixRef<T>, MatrixRef<T>, LayerGrads<T>, MatrixRef<T>, MatrixRef<T>);
#define RNNFAST_RECURRENT_CELL(prefix, Cell) \
    RNNFAST_RECURRENT(prefix, Cell, float)   \
    RNNFAST_RECURRENT(prefix, Cell, double)

RNNFAST_RECURRENT_CELL(extern, ElmanCell)
RNNFAST_RECURRENT_CELL(extern, LstmCell)
RNNFAST_RECURRENT_CELL(extern, GruCell)

}  // namespace rnnfast::detail
