// Products with a weight operand that every time step reuses: res [n, rows] += x [n, depth] * A^T, A laid out once
// per call (StepWeights), each step reading only its small state operand. The same panels and register tiles make
// the weight gradients of a backward chunk, dW += dz^T A, with dz read where it lies (multiply_add_transposed).
//
// Every result element of a step is computed the same way wherever it falls -- in which register tile, band of
// units, block of rows or thread: its products are summed in order of k (descending on the `backwards` steps of
// one-row panels, a choice of the step alone) into one accumulator that starts at zero, and the sum is added to res
// last. So the split of the recurrence across threads never changes a bit of the results (a
// general GEMM kernel accumulates an element differently depending on its row and column position within a
// block). Steps of many rows use register tiles of up to kTileRows rows x kTilePackets packets over W^T packed
// into panels; one-row steps of a large W (or of a short call) multiply by A where it lies, one dot product per
// unit.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "buffer.hpp"
#include "partial_packet.hpp"
#include "rnnfast/types.hpp"

// PacketBlock<__m256> and the like: GCC warns that a SIMD type's alignment attribute is dropped in a template
// argument, harmlessly (Eigen silences the same warning inside its own headers).
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

namespace rnnfast::detail {

// A [rows, depth] (or `segments` blocks of it) laid out for many-row steps: A^T cut into panels of up to
// kTilePackets SIMD packets of columns, each panel stored [depth][its width] contiguously, columns past a
// segment's rows zero. A segment's columns are split into panels of nearly equal width (a narrow last panel
// would run the tile with the fewest accumulators).
template <class T>
class PanelWeights {
    using Packet = typename Eigen::internal::packet_traits<T>::type;
    static constexpr Index P = Eigen::internal::unpacket_traits<Packet>::size;

public:
    // Register tiles: kTileRows x kTilePackets accumulators, plus the panel's packets and one broadcast of x.
    // Steps of one row take panels of up to kWidePackets packets instead: a tile of one row has one accumulator
    // per packet, each a chain of dependent multiply-adds, and three chains would leave the FMA units waiting.
    static constexpr int kTilePackets = 3;
    static constexpr int kWidePackets = 8;
    static constexpr int kTileRows = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32 ? 8 : 4;

    // A(i, k) = data[i * stride + k] (RowMajor: rows of a weight matrix) or data[k * stride + i] (ColMajor:
    // columns of one); segment g's row i is A(g * segment_step + i, k). `one_row`: every step has one row.
    template <int Order>
    void pack(const T* data, Index stride, Index rows, Index depth, Index segments = 1, Index segment_step = 0,
              bool one_row = false) {
        layout(rows, depth, segments, one_row);
        for (const Panel& panel : panels_) {
            const T* src = data + panel.segment * segment_step * (Order == Eigen::RowMajor ? stride : 1);
            fill_panel<Order>(panel, src, stride);
        }
    }

    // A(i, k) = a_rows[k][i]: A^T's rows where they lie (a weight gradient's states or inputs, rows of a chunk).
    void pack_rows(const T* const* a_rows, Index rows, Index depth) {
        layout(rows, depth, 1, false);
        for (const Panel& panel : panels_) {
            const Index width = panel.packets * P, valid = std::min(width, rows_ - panel.u0);
            T* out = data_.data() + panel.offset;
            for (Index k = 0; k < depth; ++k, out += width) {
                std::copy(a_rows[k] + panel.u0, a_rows[k] + panel.u0 + valid, out);
                std::fill(out + valid, out + width, T(0));
            }
        }
    }

    // res [n, rows] (row stride res_stride) += x [n, depth] (row stride x_stride) * A^T; segment g's columns
    // start at res + g * res_segment_step. `backwards`: the panels in reverse order, and one-row panels (one pass
    // over the depth) each from its last k to its first (see StepWeights). With
    // `start` (one row laid out as res's), res = start + x A^T instead, whatever res held: the same bits as copying
    // start into every row first, without that pass. Its tiles keep their accumulators between depth blocks in this
    // object's scratch.
    void multiply_add(const T* x, Index x_stride, Index n, T* res, Index res_stride, Index res_segment_step,
                      bool backwards, const T* start = nullptr) {
        multiply_add(x, x_stride, n, res, res_stride, res_segment_step, backwards, start, partial_);
    }

    // The same with the caller's scratch instead: what layouts that several calls share offer (PackedCopies hands
    // them out const), each call passing its own.
    void multiply_add(const T* x, Index x_stride, Index n, T* res, Index res_stride, Index res_segment_step,
                      bool backwards, const T* start, Buffer<T>& partial) const {
        if (rows_ == 0 || n == 0 || (depth_ == 0 && start == nullptr)) return;
        const size_t count = panels_.size();
        for (size_t i = 0; i < count; ++i) {
            const Panel& panel = panels_[backwards ? count - 1 - i : i];
            T* out = res + panel.segment * res_segment_step + panel.u0;
            const T* from = start != nullptr ? start + panel.segment * res_segment_step + panel.u0 : nullptr;
            if (depth_ == 0) {
                const Index valid = std::min(panel.packets * P, rows_ - panel.u0);
                for (Index r = 0; r < n; ++r) std::copy(from, from + valid, out + r * res_stride);
                continue;
            }
            switch (panel.packets) {
                case 1: rows_of<1>(panel, x, x_stride, n, out, res_stride, from, backwards, partial); break;
                case 2: rows_of<2>(panel, x, x_stride, n, out, res_stride, from, backwards, partial); break;
                case 3: rows_of<3>(panel, x, x_stride, n, out, res_stride, from, backwards, partial); break;
                case 4: rows_of<4>(panel, x, x_stride, n, out, res_stride, from, backwards, partial); break;
                case 5: rows_of<5>(panel, x, x_stride, n, out, res_stride, from, backwards, partial); break;
                case 6: rows_of<6>(panel, x, x_stride, n, out, res_stride, from, backwards, partial); break;
                case 7: rows_of<7>(panel, x, x_stride, n, out, res_stride, from, backwards, partial); break;
                default: rows_of<8>(panel, x, x_stride, n, out, res_stride, from, backwards, partial); break;
            }
        }
    }

    // res [n, rows] (row stride res_stride) += xt^T [n, depth] * A^T, where xt is [depth, n] (row stride xt_stride):
    // a weight gradient, dW += dz^T A over a chunk's rows, with dz read where it lies (Eigen's GEMM packs it,
    // walking a few of its columns down hundreds of rows). Each step of k broadcasts kTileRows units of one row of
    // xt. res's rows go in blocks whose columns of xt stay in L2 while every panel reads them (each row of xt is a
    // new page, which the prefetchers do not cross; a wide dz read from L3 once per panel ran at half the speed,
    // M 1024, N 512, K 1600), cut for an L2 of `l2_bytes` (0: this machine's; the bits do not depend on it). As
    // multiply_add, any split of res's rows gives every element the same bits. Not for one-row layouts.
    void multiply_add_transposed(const T* xt, Index xt_stride, Index n, T* res, Index res_stride, Index l2_bytes = 0) {
        if (rows_ == 0 || n == 0 || depth_ == 0) return;
        const Index l2 = l2_bytes > 0 ? l2_bytes : static_cast<Index>(Eigen::l2CacheSize());
        const Index per_row = depth_ * static_cast<Index>(sizeof(T));
        const Index block = std::max<Index>(kTileRows, l2 / 2 / per_row / kTileRows * kTileRows);
        for (Index r0 = 0; r0 < n; r0 += block) {
            const Index rn = std::min(block, n - r0);
            for (const Panel& panel : panels_) {
                T* out = res + r0 * res_stride + panel.u0;
                switch (panel.packets) {
                    case 1:
                        rows_of<1, true>(panel, xt + r0, xt_stride, rn, out, res_stride, nullptr, false, partial_);
                        break;
                    case 2:
                        rows_of<2, true>(panel, xt + r0, xt_stride, rn, out, res_stride, nullptr, false, partial_);
                        break;
                    default:
                        rows_of<3, true>(panel, xt + r0, xt_stride, rn, out, res_stride, nullptr, false, partial_);
                        break;
                }
            }
        }
    }

    // Whether it is laid out for one-row steps, whose `backwards` steps read the depth last to first.
    bool one_row() const { return one_row_; }

private:
    struct Panel {
        Index segment, u0, packets, offset;  // its segment, first unit, width in packets, place in data_
    };
    static_assert(kTilePackets <= kWidePackets && kWidePackets == 8, "multiply_add dispatches widths 1 to 8");

    // Panels of A [rows, depth] in `segments` segments, data_ sized for them.
    void layout(Index rows, Index depth, Index segments, bool one_row) {
        rows_ = rows;
        depth_ = depth;
        one_row_ = one_row;
        depth_block_ = one_row ? std::max<Index>(depth, 1) : kDepthBlock;  // one row: nothing to keep in L1 for
        panels_.clear();
        const Index packets = (rows + P - 1) / P, most = one_row ? kWidePackets : kTilePackets;
        const Index count = (packets + most - 1) / most;
        Index size = 0;
        for (Index g = 0; g < segments; ++g) {
            Index u0 = 0;
            for (Index p = 0; p < count; ++p) {
                const Index np = packets / count + (p < packets % count ? 1 : 0);
                panels_.push_back(Panel{g, u0, np, size});
                size += depth * np * P;
                u0 += np * P;
            }
        }
        data_.resize(static_cast<size_t>(size));
    }

    // Panel columns [0, width) for k in [0, depth) from segment rows [u0, u0 + width) of A, zero past rows_.
    template <int Order>
    void fill_panel(const Panel& panel, const T* src, Index stride) {
        const Index width = panel.packets * P, valid = std::min(width, rows_ - panel.u0), depth = depth_;
        T* out = data_.data() + panel.offset;
        if (Order == Eigen::ColMajor) {  // A^T's rows are rows of the source: copies
            for (Index k = 0; k < depth; ++k) {
                const T* row = src + k * stride + panel.u0;
                std::copy(row, row + valid, out + k * width);
                std::fill(out + k * width + valid, out + (k + 1) * width, T(0));
            }
            return;
        }
        // A transpose: P x P blocks through registers (element by element would stride through one side and cost
        // dozens of matrix-vector products on a large W_hh), rows past `valid` zero; the depth past whole packets
        // element by element.
        using namespace Eigen::internal;
        const Index depth_p = depth / P * P;
        for (Index j0 = 0; j0 < width; j0 += P) {
            const Index jn = std::min(P, std::max<Index>(valid - j0, 0));  // rows of A in this block
            const T* a = src + (panel.u0 + std::min(j0, valid)) * stride;
            for (Index k0 = 0; k0 < depth_p; k0 += P) {
                PacketBlock<Packet, static_cast<int>(P)> block;
                for (Index q = 0; q < P; ++q) {
                    block.packet[q] = q < jn ? ploadu<Packet>(a + q * stride + k0) : pset1<Packet>(T(0));
                }
                ptranspose(block);
                for (Index q = 0; q < P; ++q) pstoreu(out + (k0 + q) * width + j0, block.packet[q]);
            }
            for (Index k = depth_p; k < depth; ++k) {
                for (Index q = 0; q < P; ++q) out[k * width + j0 + q] = q < jn ? a[q * stride + k] : T(0);
            }
        }
    }

    // Depth per pass over a panel's rows: the panel's slice then stays in L1 while every row tile reads it. A tile
    // that takes several passes keeps its accumulators in `partial_` between them, which changes no bit of its
    // sums (each element is still summed in order of k from zero and added to res last).
    static constexpr Index kDepthBlock = std::max<Index>(64, (24 * 1024) / (kTilePackets * P * sizeof(T)));

    // Every row of x against one panel of NP packets: tiles of kTileRows rows, then the rest; depth blocks outside.
    // XT: x given transposed, its row r, element k at x[k * x_stride + r].
    template <int NP, bool XT = false>
    void rows_of(const Panel& panel, const T* x, Index x_stride, Index n, T* out, Index out_stride, const T* start,
                 bool backwards, Buffer<T>& partial) const {
        const Index x_step = XT ? 1 : x_stride;  // from one row of x to the next
        const T* w = data_.data() + panel.offset;
        const Index valid = std::min(panel.packets * P, rows_ - panel.u0);
        const Index tile_size = NP * P;
        const Index block = depth_block_;
        if (depth_ > block && static_cast<Index>(partial.size()) < n * tile_size) {
            partial.resize(static_cast<size_t>(n * tile_size));
        }
        T* const scratch = depth_ > block ? partial.data() : nullptr;  // one pass: none
        if (one_row_ && backwards) {  // one pass, the depth last to first
            const Pass pass{0, depth_, true, true, start};
            for (Index r = 0; r < n; ++r) {
                tile<1, NP, true, XT>(pass, x + r * x_step, x_stride, w, out + r * out_stride, out_stride, valid,
                                      nullptr);
            }
            return;
        }
        for (Index k0 = 0; k0 < depth_; k0 += block) {
            Pass pass{k0, std::min(depth_, k0 + block), k0 == 0, k0 + block >= depth_, start};
            Index r = 0;
            if constexpr (NP > kTilePackets) {  // wide panels: one row at a time
                for (; r < n; ++r) {
                    tile<1, NP, false, XT>(pass, x + r * x_step, x_stride, w, out + r * out_stride, out_stride, valid,
                                           scratch != nullptr ? scratch + r * tile_size : nullptr);
                }
            } else {
                for (; r + kTileRows <= n; r += kTileRows) {
                    tile<kTileRows, NP, false, XT>(pass, x + r * x_step, x_stride, w, out + r * out_stride, out_stride,
                                                   valid, scratch != nullptr ? scratch + r * tile_size : nullptr);
                }
                rest<kTileRows - 1, NP, XT>(n - r, pass, x + r * x_step, x_stride, w, out + r * out_stride,
                                            out_stride, valid, scratch != nullptr ? scratch + r * tile_size : nullptr);
            }
        }
    }

    struct Pass {
        Index k0, k1;     // the depth block
        bool first, last; // accumulators start at zero / are added to res
        const T* start;   // the last pass writes start + sum (null: res + sum)
    };

    template <int R, int NP, bool XT>
    void rest(Index left, const Pass& pass, const T* x, Index x_stride, const T* w, T* out, Index out_stride,
              Index valid, T* partial) const {
        if constexpr (R > 0) {
            if (left == R) {
                tile<R, NP, false, XT>(pass, x, x_stride, w, out, out_stride, valid, partial);
            } else {
                rest<R - 1, NP, XT>(left, pass, x, x_stride, w, out, out_stride, valid, partial);
            }
        }
    }

    // Rows of a transposed x ahead of the one a tile reads that it prefetches: each is a new page to the
    // prefetchers (weight gradients, LSTM T50 B16 H128 training 1.07x with, against without).
    static constexpr Index kPrefetchRows = 16;

    // out rows [0, R), columns [0, valid) += x rows [0, R) * the panel (NP packets wide), over the pass's depth
    // block; `partial` [R, NP packets] keeps the accumulators between passes. XT: x transposed (rows_of).
    template <int R, int NP, bool Descending = false, bool XT = false>
    void tile(const Pass& pass, const T* x, Index x_stride, const T* w, T* out, Index out_stride, Index valid,
              T* partial) const {
        using namespace Eigen::internal;
        Packet acc[R][NP];
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < NP; ++j)
                acc[r][j] = pass.first ? pset1<Packet>(T(0)) : ploadu<Packet>(partial + (r * NP + j) * P);
        const auto step = [&](Index k) {
            const T* wp = w + k * NP * P;
            Packet wk[NP];
            for (int j = 0; j < NP; ++j) wk[j] = pload<Packet>(wp + j * P);
            if constexpr (XT) {
                const T* xk_row = x + k * x_stride;
#if defined(__GNUC__)
                __builtin_prefetch(xk_row + kPrefetchRows * x_stride, 0, 3);
#endif
                for (int r = 0; r < R; ++r) {
                    const Packet xk = pset1<Packet>(xk_row[r]);
                    for (int j = 0; j < NP; ++j) acc[r][j] = pmadd(xk, wk[j], acc[r][j]);
                }
            } else {
                for (int r = 0; r < R; ++r) {
                    const Packet xk = pset1<Packet>(x[r * x_stride + k]);
                    for (int j = 0; j < NP; ++j) acc[r][j] = pmadd(xk, wk[j], acc[r][j]);
                }
            }
        };
        if constexpr (Descending) {
            for (Index k = pass.k1 - 1; k >= pass.k0; --k) step(k);
        } else {
            for (Index k = pass.k0; k < pass.k1; ++k) step(k);
        }
        if (!pass.last) {
            for (int r = 0; r < R; ++r)
                for (int j = 0; j < NP; ++j) pstoreu(partial + (r * NP + j) * P, acc[r][j]);
            return;
        }
        for (int j = 0; j < NP; ++j) {
            const Index col = j * P;
            if (col >= valid) break;
            for (int r = 0; r < R; ++r) {
                T* dst = out + r * out_stride + col;
                const T* from = pass.start != nullptr ? pass.start + col : dst;
                if (col + P <= valid) {
                    pstoreu(dst, padd(ploadu<Packet>(from), acc[r][j]));
                } else {  // the last, partial packet of a segment
                    const Index n = valid - col;
                    partial_store(dst, padd(partial_load(from, n, static_cast<const Packet*>(nullptr)), acc[r][j]), n);
                }
            }
        }
    }

    Index rows_ = 0, depth_ = 0, depth_block_ = kDepthBlock;
    bool one_row_ = false;  // laid out for one-row steps: one pass over the depth, reversed on backwards steps
    std::vector<Panel> panels_;
    Buffer<T> data_;  // written by pack before any read
    Buffer<T> partial_;  // accumulators between depth blocks, kept for the next step (so: one thread's object)
};

// One-row steps multiplying by a row-major A where it lies: each unit a dot product of its row of A with x, over
// whole packets then the rest in order, four units at a time for independent chains.
template <class T>
void dot_multiply_add(const T* a, Index stride, Index rows, Index depth, Index segments, Index segment_step,
                      const T* x, T* res, Index res_segment_step, bool backwards) {
    using namespace Eigen::internal;
    using Packet = typename packet_traits<T>::type;
    constexpr Index P = unpacket_traits<Packet>::size;
    const Index depth_p = depth / P * P;
    // The same code for every unit: a group of four is four of it interleaved.
    const auto finish = [&](const Packet& acc, const T* row) {
        T sum = predux(acc);
        for (Index k = depth_p; k < depth; ++k) {
#if defined(__FMA__)
            sum = std::fma(row[k], x[k], sum);
#else
            sum = sum + row[k] * x[k];
#endif
        }
        return sum;
    };
    const Index groups = rows / 4;
    for (Index gi = 0; gi < segments; ++gi) {
        const Index g = backwards ? segments - 1 - gi : gi;
        const T* ag = a + g * segment_step * stride;
        T* out = res + g * res_segment_step;
        for (Index qi = 0; qi < groups; ++qi) {
            const Index i = 4 * (backwards ? groups - 1 - qi : qi);
            const T* r0 = ag + i * stride;
            Packet c0 = pset1<Packet>(T(0)), c1 = c0, c2 = c0, c3 = c0;
            for (Index k = 0; k < depth_p; k += P) {
                const Packet xk = ploadu<Packet>(x + k);
                c0 = pmadd(ploadu<Packet>(r0 + k), xk, c0);
                c1 = pmadd(ploadu<Packet>(r0 + stride + k), xk, c1);
                c2 = pmadd(ploadu<Packet>(r0 + 2 * stride + k), xk, c2);
                c3 = pmadd(ploadu<Packet>(r0 + 3 * stride + k), xk, c3);
            }
            out[i] += finish(c0, r0);
            out[i + 1] += finish(c1, r0 + stride);
            out[i + 2] += finish(c2, r0 + 2 * stride);
            out[i + 3] += finish(c3, r0 + 3 * stride);
        }
        for (Index i = 4 * groups; i < rows; ++i) {
            const T* r0 = ag + i * stride;
            Packet c0 = pset1<Packet>(T(0));
            for (Index k = 0; k < depth_p; k += P) c0 = pmadd(ploadu<Packet>(r0 + k), ploadu<Packet>(x + k), c0);
            out[i] += finish(c0, r0);
        }
    }
}

// Small weight matrices this thread packed, each with a copy of the elements it was packed from, kept for later
// calls: a call whose weights hold the same bytes takes the packed panels instead of packing them again (packing
// was 18% of an LSTM seed_1layer forward). The elements are compared in full, so no change to the weights, in
// place or not, can reuse a stale packing; a training step, whose weights change between calls, packs as before
// and pays a copy of them. Per thread (thread_local); the panels are only read (each StepWeights keeps the scratch
// of its own products).
template <class T>
class PackedCopies {
public:
    // Bounds: elements of one matrix (64 KB of float), and matrices kept per thread (LRU).
    static constexpr Index kMaxElements = Index(1) << 14;
    static constexpr size_t kEntries = 16;

    struct Key {
        const T* data;
        Index stride, rows, depth, segments, segment_step;
        int order;
        bool one_row;
        bool operator==(const Key& o) const {
            return data == o.data && stride == o.stride && rows == o.rows && depth == o.depth &&
                   segments == o.segments && segment_step == o.segment_step && order == o.order &&
                   one_row == o.one_row;
        }
        // Calls f(first, count) for each contiguous run of the elements that pack reads, in a fixed order; runs
        // that follow each other in memory as one (a whole weight matrix is one run).
        template <class F>
        void for_each_run(F&& f) const {
            const bool row_major = order == Eigen::RowMajor;
            const Index runs = row_major ? rows : depth, length = row_major ? depth : rows;
            const T* first = nullptr;
            Index count = 0;
            for (Index g = 0; g < segments; ++g) {
                const T* base = data + g * segment_step * (row_major ? stride : 1);
                for (Index i = 0; i < runs; ++i) {
                    const T* run = base + i * stride;
                    if (first != nullptr && run == first + count) {
                        count += length;
                        continue;
                    }
                    if (count > 0) f(first, count);
                    first = run;
                    count = length;
                }
            }
            if (count > 0) f(first, count);
        }
        Index elements() const { return segments * rows * depth; }
    };

    static PackedCopies& local() {
        thread_local PackedCopies copies;
        return copies;
    }

    // The panels of what `key` points at: the kept ones when their copy holds the same bytes, else new ones,
    // packed from a copy that is kept beside them (in place of an entry of the same key, or of the oldest). Packed
    // from the copy, the panels are the layout of the bytes they are compared with even if the weights change
    // while they are read (another thread writing them during a call): no later call can take a stale layout.
    template <int Order>
    std::shared_ptr<const PanelWeights<T>> panels(const Key& key) {
        auto same = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.key == key; });
        if (same != entries_.end()) {
            const T* kept = same->source.data();
            bool equal = true;
            key.for_each_run([&](const T* run, Index n) {
                if (equal && n > 0) equal = std::memcmp(run, kept, static_cast<size_t>(n) * sizeof(T)) == 0;
                kept += n;
            });
            if (equal) {
                std::rotate(entries_.begin(), same, same + 1);  // most recent first
                return entries_.front().panels;
            }
            entries_.erase(same);
        } else if (entries_.size() >= kEntries) {
            entries_.pop_back();
        }
        Entry e{key, Buffer<T>(static_cast<size_t>(key.elements())), std::make_shared<PanelWeights<T>>()};
        T* out = e.source.data();
        key.for_each_run([&](const T* run, Index n) { out = std::copy(run, run + n, out); });
        // The copy holds segment after segment, each as contiguous rows of A (RowMajor) or of A^T (ColMajor).
        const bool row_major = Order == Eigen::RowMajor;
        const Index copy_stride = row_major ? key.depth : key.rows;
        const Index copy_segment_step = row_major ? key.rows : key.rows * key.depth;
        e.panels->template pack<Order>(e.source.data(), copy_stride, key.rows, key.depth, key.segments,
                                       copy_segment_step, key.one_row);
        entries_.insert(entries_.begin(), std::move(e));
        return entries_.front().panels;
    }

private:
    struct Entry {
        Key key;
        Buffer<T> source;
        std::shared_ptr<PanelWeights<T>> panels;
    };
    std::vector<Entry> entries_;
};

// W_hh (or a band of it) for one thread's recurrence, laid out once per call for the products its steps make.
// The layout depends only on the call (its batch and steps), never on how the threads split it, so that every
// split computes every element the same way: panels; or, for a batch of one item where W is large (the
// transposing copy then costs as much as several steps) or the call has too few steps to repay the copy, a
// row-major A used in place. Its products keep scratch in it: each thread uses its own.
template <class T>
class StepWeights {
public:
    static constexpr Index kMaxPanelVectorSize = 256 * 64;
    static constexpr Index kMinPanelVectorSteps = 16;

    // A(i, k) and its segments as in PanelWeights::pack; the call has `batch` items and `steps` steps, and A is
    // part (a thread's band) of a weight matrix of `whole_rows` rows (0: A is whole).
    template <int Order>
    void pack(const T* data, Index stride, Index rows, Index depth, Index batch, Index steps, Index segments = 1,
              Index segment_step = 0, Index whole_rows = 0) {
        source_ = data;
        stride_ = stride;
        rows_ = rows;
        depth_ = depth;
        segments_ = segments;
        segment_step_ = segment_step;
        const Index size = (whole_rows > 0 ? whole_rows : segments * rows) * depth;
        if (Order == Eigen::RowMajor && batch == 1 && (size > kMaxPanelVectorSize || steps < kMinPanelVectorSteps)) {
            layout_ = Layout::in_place;
        } else {
            layout_ = Layout::panels;
            using Key = typename PackedCopies<T>::Key;
            const Key key{data, stride, rows, depth, segments, segment_step, Order, batch == 1};
            if (key.elements() <= PackedCopies<T>::kMaxElements) {
                panels_ = PackedCopies<T>::local().template panels<Order>(key);
            } else {
                auto own = std::make_shared<PanelWeights<T>>();
                own->template pack<Order>(data, stride, rows, depth, segments, segment_step, batch == 1);
                panels_ = std::move(own);
            }
        }
    }

    // Whether its `backwards` steps sum each element's products last to first (one-row panels).
    bool reverses_depth() const { return layout_ == Layout::panels && panels_->one_row(); }

    // Whether it holds `segments` segments of `rows` rows starting at `data`.
    bool holds(const T* data, Index rows, Index segments = 1) const {
        return layout_ != Layout::none && source_ == data && rows_ == rows && segments_ == segments;
    }

    // res [n, rows] (row stride res_stride) += x [n, depth] (row stride x_stride) * A^T; segment g's columns
    // start at res + g * res_segment_step. In place: one row at a time.
    //
    // `backwards` visits the units in reverse order, and one-row panels also their depth, W's rows (k) last to
    // first: a one-row step then reads W in exactly the reverse order of the step before. Steps that alternate it
    // begin where the step before ended, on the part of W still in cache: when W is larger than a cache level,
    // about as much of it as that cache holds is read from it instead of the next level (benchmark step_product,
    // one row, W_hh of an LSTM with H 64, 64 KB, L1 48 KB: 1.26x with the units reversed; the depth too, LSTM
    // stream_T1000_B1 inference another 1.05-1.09x). Reversing the units changes no bit (each element is a sum
    // of its own); reversing the depth changes the rounding of a one-row step's sums, the same on every split
    // into threads, as it depends on the step alone.
    //
    // `start`: res = start + x A^T instead (PanelWeights::multiply_add).
    void multiply_add(const T* x, Index x_stride, Index n, T* res, Index res_stride, Index res_segment_step = 0,
                      bool backwards = false, const T* start = nullptr) {
        switch (layout_) {
            case Layout::panels:
                panels_->multiply_add(x, x_stride, n, res, res_stride, res_segment_step, backwards, start, partial_);
                break;
            case Layout::in_place:
                for (Index r = 0; r < n; ++r) {
                    for (Index g = 0; start != nullptr && g < segments_; ++g) {
                        const T* from = start + g * res_segment_step;
                        std::copy(from, from + rows_, res + r * res_stride + g * res_segment_step);
                    }
                    dot_multiply_add(source_, stride_, rows_, depth_, segments_, segment_step_, x + r * x_stride,
                                     res + r * res_stride, res_segment_step, backwards);
                }
                break;
            case Layout::none: break;
        }
    }

private:
    enum class Layout { none, panels, in_place };
    Layout layout_ = Layout::none;
    const T* source_ = nullptr;
    Index stride_ = 0, rows_ = 0, depth_ = 0, segments_ = 1, segment_step_ = 0;
    // This object's, or PackedCopies' (then shared, and only read: the scratch of its products is partial_).
    std::shared_ptr<const PanelWeights<T>> panels_;
    Buffer<T> partial_;  // accumulators between depth blocks, kept for the next step (so: one thread's object)
};

}  // namespace rnnfast::detail

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
