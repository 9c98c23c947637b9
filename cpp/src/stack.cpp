#include "rnnfast/stack.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>

#include "recurrent.hpp"
#include "workspace.hpp"

namespace rnnfast {
namespace {

// Rows of the backward's pre-activation gradient workspace (per direction): whole steps up to this many.
constexpr Index kBackwardChunkRows = 2048;

// Parameters of one direction of one layer, in the flat buffer.
struct DirectionLayout {
    Index w_ih, w_hh, b_ih, b_hh, w_hr;  // offsets
    Index in;                            // input size of the layer
    Index end;                           // offset just past this block
};

DirectionLayout direction_layout(const StackConfig& cfg, Index offset, Index layer) {
    const Index GH = cfg.gates() * cfg.hidden_size, P = cfg.state_size();
    DirectionLayout p{};
    p.in = cfg.layer_input_size(layer);
    p.w_ih = offset;
    p.w_hh = p.w_ih + GH * p.in;
    p.b_ih = p.w_hh + GH * P;
    p.b_hh = p.b_ih + (cfg.bias ? GH : 0);
    p.w_hr = p.b_hh + (cfg.bias ? GH : 0);
    p.end = p.w_hr + (cfg.proj_size > 0 ? P * cfg.hidden_size : 0);
    return p;
}

// Offset of direction d of layer l.
Index direction_offset(const StackConfig& cfg, Index l, Index d) {
    Index offset = 0;
    for (Index k = 0; k < l; ++k) {
        for (Index e = 0; e < cfg.directions(); ++e) offset = direction_layout(cfg, offset, k).end;
    }
    for (Index e = 0; e < d; ++e) offset = direction_layout(cfg, offset, l).end;
    return offset;
}

template <class T>
ConstMatrixMap<T> const_matrix(const T* base, Index offset, Index rows, Index cols) {
    return ConstMatrixMap<T>(base + offset, rows, cols, Eigen::OuterStride<>(cols));
}
template <class T>
MatrixMap<T> matrix(T* base, Index offset, Index rows, Index cols) {
    return MatrixMap<T>(base + offset, rows, cols, Eigen::OuterStride<>(cols));
}

void expect_shape(const char* what, Index rows, Index cols, Index want_rows, Index want_cols) {
    if (rows != want_rows || cols != want_cols) {
        throw std::invalid_argument(std::string(what) + ": expected a [" + std::to_string(want_rows) + ", " +
                                    std::to_string(want_cols) + "] matrix, got [" + std::to_string(rows) + ", " +
                                    std::to_string(cols) + "]");
    }
}

}  // namespace

CellKind parse_cell(const std::string& name) {
    if (name == "rnn") return CellKind::rnn;
    if (name == "lstm") return CellKind::lstm;
    if (name == "gru") return CellKind::gru;
    throw std::invalid_argument("cell: expected 'rnn', 'lstm' or 'gru', got '" + name + "'");
}

void StackConfig::validate() const {
    if (input_size <= 0) throw std::invalid_argument("input_size: expected a positive integer, got " + std::to_string(input_size));
    if (hidden_size <= 0) throw std::invalid_argument("hidden_size: expected a positive integer, got " + std::to_string(hidden_size));
    if (num_layers <= 0) throw std::invalid_argument("num_layers: expected a positive integer, got " + std::to_string(num_layers));
    if (proj_size < 0 || (proj_size > 0 && (cell != CellKind::lstm || proj_size >= hidden_size))) {
        throw std::invalid_argument("proj_size: expected 0, or (LSTM only) an integer in [1, hidden_size=" +
                                    std::to_string(hidden_size) + "), got " + std::to_string(proj_size));
    }
    // The parameter count must fit in an Index: check every factor against the limit before multiplying.
    const long double h = static_cast<long double>(hidden_size), d = static_cast<long double>(directions());
    const long double g = static_cast<long double>(gates());
    const long double count = static_cast<long double>(num_layers) * d * (g * h + h) *
                              (static_cast<long double>(input_size) + d * h + h + 2);
    if (count > static_cast<long double>(std::numeric_limits<Index>::max() / 8)) {
        throw std::invalid_argument("sizes: the parameter count overflows (input_size=" + std::to_string(input_size) +
                                    ", hidden_size=" + std::to_string(hidden_size) +
                                    ", num_layers=" + std::to_string(num_layers) + ")");
    }
}

std::vector<ParamSpec> param_layout(const StackConfig& cfg) {
    cfg.validate();
    std::vector<ParamSpec> specs;
    const Index GH = cfg.gates() * cfg.hidden_size, P = cfg.state_size();
    Index offset = 0;
    for (Index l = 0; l < cfg.num_layers; ++l) {
        for (Index d = 0; d < cfg.directions(); ++d) {
            const std::string sfx = "_l" + std::to_string(l) + (d == 1 ? "_reverse" : "");
            const DirectionLayout p = direction_layout(cfg, offset, l);
            specs.push_back({"weight_ih" + sfx, p.w_ih, GH, p.in});
            specs.push_back({"weight_hh" + sfx, p.w_hh, GH, P});
            if (cfg.bias) {
                specs.push_back({"bias_ih" + sfx, p.b_ih, GH, 0});
                specs.push_back({"bias_hh" + sfx, p.b_hh, GH, 0});
            }
            if (cfg.proj_size > 0) specs.push_back({"weight_hr" + sfx, p.w_hr, P, cfg.hidden_size});
            offset = p.end;
        }
    }
    return specs;
}

Index param_count(const StackConfig& cfg) {
    cfg.validate();
    // Closed form (validate() bounds it): a loop over the layers would take minutes for absurd layer counts.
    const Index H = cfg.hidden_size, D = cfg.directions(), GH = cfg.gates() * H, P = cfg.state_size();
    const Index bias = cfg.bias ? 2 * GH : 0, proj = cfg.proj_size > 0 ? P * H : 0;
    const Index first = D * (GH * cfg.input_size + GH * P + bias + proj);
    const Index rest = D * (GH * cfg.output_size() + GH * P + bias + proj);
    return first + (cfg.num_layers - 1) * rest;
}

Packing make_packing(Index seq_len, Index batch, const std::vector<Index>& lengths) {
    Packing pk;
    pk.seq_len = seq_len;
    pk.batch = batch;
    bool full = true;
    if (!lengths.empty()) {
        if (static_cast<Index>(lengths.size()) != batch) {
            throw std::invalid_argument("lengths: expected " + std::to_string(batch) + " entries, got " +
                                        std::to_string(lengths.size()));
        }
        for (size_t b = 0; b < lengths.size(); ++b) {
            if (lengths[b] < 1 || lengths[b] > seq_len) {
                throw std::invalid_argument("lengths[" + std::to_string(b) + "]: expected an integer in [1, " +
                                            std::to_string(seq_len) + "], got " + std::to_string(lengths[b]));
            }
            full = full && lengths[b] == seq_len;
        }
    }
    if (full) {
        pk.steps = StepLayout::uniform(seq_len, batch);
        pk.lengths.assign(static_cast<size_t>(batch), seq_len);
        return pk;
    }
    pk.order.resize(static_cast<size_t>(batch));
    for (Index b = 0; b < batch; ++b) pk.order[static_cast<size_t>(b)] = b;
    std::stable_sort(pk.order.begin(), pk.order.end(),
                     [&](Index a, Index b) { return lengths[static_cast<size_t>(a)] > lengths[static_cast<size_t>(b)]; });
    pk.lengths.resize(static_cast<size_t>(batch));
    std::vector<Index> sizes(static_cast<size_t>(seq_len), 0);
    for (Index j = 0; j < batch; ++j) {
        const Index len = lengths[static_cast<size_t>(pk.order[static_cast<size_t>(j)])];
        pk.lengths[static_cast<size_t>(j)] = len;
        for (Index t = 0; t < len; ++t) ++sizes[static_cast<size_t>(t)];
    }
    pk.steps = StepLayout::packed(std::move(sizes));
    return pk;
}

namespace {

// Padded time-major rows [T*B, F] -> packed rows [R, F] (valid steps only, items in sorted order).
template <class T, class Src>
void pack_rows(const Packing& pk, const Src& src, RowMatrix<T>& dst) {
    dst.resize(pk.steps.rows(), src.cols());
    for (Index t = 0; t < pk.seq_len; ++t) {
        for (Index j = 0; j < pk.steps.size(t); ++j) {
            dst.row(pk.steps.offset(t) + j) = src.row(t * pk.batch + pk.order[static_cast<size_t>(j)]);
        }
    }
}

// Packed rows -> padded time-major rows, zeros at padded steps.
template <class T, class Src, class Dst>
void unpack_rows(const Packing& pk, const Src& src, Dst&& dst) {
    dst.setZero();
    for (Index t = 0; t < pk.seq_len; ++t) {
        for (Index j = 0; j < pk.steps.size(t); ++j) {
            dst.row(t * pk.batch + pk.order[static_cast<size_t>(j)]) = src.row(pk.steps.offset(t) + j);
        }
    }
}

// States [S*B, H] between item order and sorted order (forward: sorted[j] = items[order[j]]).
template <class Src, class Dst>
void permute_states(const Packing& pk, const Src& src, Dst&& dst, bool to_sorted) {
    const Index B = pk.batch;
    for (Index s = 0; s < src.rows() / std::max<Index>(B, 1); ++s) {
        for (Index j = 0; j < B; ++j) {
            const Index item = s * B + pk.order[static_cast<size_t>(j)], sorted = s * B + j;
            if (to_sorted) {
                dst.row(sorted) = src.row(item);
            } else {
                dst.row(item) = src.row(sorted);
            }
        }
    }
}

}  // namespace

namespace {

// One direction of one layer on the driver, with the cell policy of cfg.cell.
template <class T>
void direction_forward(const StackConfig& cfg, const detail::LayerWeights<T>& wt, const ConstMatrixRef<T>& x,
                       const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& c0, bool reverse, const StepLayout& steps,
                       MatrixRef<T> hs, MatrixRef<T> gates, MatrixRef<T> aux, bool gates_kept) {
    switch (cfg.cell) {
        case CellKind::rnn:
            detail::recurrent_forward<detail::ElmanCell, T>(wt, x, h0, c0, cfg.activation, reverse, steps, hs, gates, aux,
                                                            gates_kept);
            break;
        case CellKind::lstm:
            detail::recurrent_forward<detail::LstmCell, T>(wt, x, h0, c0, cfg.activation, reverse, steps, hs, gates, aux,
                                                           gates_kept);
            break;
        case CellKind::gru:
            detail::recurrent_forward<detail::GruCell, T>(wt, x, h0, c0, cfg.activation, reverse, steps, hs, gates, aux,
                                                          gates_kept);
            break;
    }
}

template <class T>
void direction_backward(const StackConfig& cfg, const detail::LayerWeights<T>& wt, const ConstMatrixRef<T>& x,
                        const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& c0, const ConstMatrixRef<T>& hs,
                        const ConstMatrixRef<T>& gates, const ConstMatrixRef<T>& aux, const ConstMatrixRef<T>& dhs,
                        const ConstMatrixRef<T>& dh_n, const ConstMatrixRef<T>& dc_n, bool reverse,
                        const StepLayout& steps, MatrixRef<T> dx, MatrixRef<T> dh0, MatrixRef<T> dc0,
                        const detail::LayerGrads<T>& grads, MatrixRef<T> dz, MatrixRef<T> dzh) {
    switch (cfg.cell) {
        case CellKind::rnn:
            detail::recurrent_backward<detail::ElmanCell, T>(wt, x, h0, c0, hs, gates, aux, dhs, dh_n, dc_n,
                                                             cfg.activation, reverse, steps, dx, dh0, dc0, grads, dz, dzh);
            break;
        case CellKind::lstm:
            detail::recurrent_backward<detail::LstmCell, T>(wt, x, h0, c0, hs, gates, aux, dhs, dh_n, dc_n,
                                                            cfg.activation, reverse, steps, dx, dh0, dc0, grads, dz, dzh);
            break;
        case CellKind::gru:
            detail::recurrent_backward<detail::GruCell, T>(wt, x, h0, c0, hs, gates, aux, dhs, dh_n, dc_n,
                                                           cfg.activation, reverse, steps, dx, dh0, dc0, grads, dz, dzh);
            break;
    }
}

template <class T>
detail::LayerWeights<T> weights_of(const StackConfig& cfg, const T* params, const DirectionLayout& p) {
    const Index H = cfg.hidden_size, GH = cfg.gates() * H, P = cfg.state_size(), bias = cfg.bias ? GH : 0;
    return detail::LayerWeights<T>{const_matrix(params, p.w_ih, GH, p.in), const_matrix(params, p.w_hh, GH, P),
                                   Eigen::Map<const RowVector<T>>(params + p.b_ih, bias),
                                   Eigen::Map<const RowVector<T>>(params + p.b_hh, bias),
                                   const_matrix(params, p.w_hr, cfg.proj_size > 0 ? P : 0, H)};
}

}  // namespace

template <class T>
void stack_forward(const StackConfig& cfg, const T* params, const ConstMatrixRef<T>& x, Index seq_len,
                   const std::vector<Index>& lengths, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& c0,
                   const ConstMatrixRef<T>& masks, MatrixRef<T> output, MatrixRef<T> h_n, MatrixRef<T> c_n,
                   StackCache<T>* cache) {
    if (seq_len <= 0) throw std::invalid_argument("seq_len: expected a positive integer, got " + std::to_string(seq_len));
    const Index L = cfg.num_layers, D = cfg.directions(), H = cfg.hidden_size, P = cfg.state_size();
    const Index DP = cfg.output_size(), GH = cfg.gates() * H;
    const bool cell_state = cfg.has_cell_state();
    const Index TB = x.rows(), B = TB / seq_len;
    expect_shape("x", x.rows(), x.cols(), seq_len * B, cfg.input_size);
    if (h0.rows() != 0) expect_shape("h0", h0.rows(), h0.cols(), L * D * B, P);
    if (c0.rows() != 0) expect_shape("c0", c0.rows(), c0.cols(), L * D * B, H);
    if (masks.rows() != 0) expect_shape("masks", masks.rows(), masks.cols(), (L - 1) * TB, DP);
    expect_shape("output", output.rows(), output.cols(), TB, DP);
    expect_shape("h_n", h_n.rows(), h_n.cols(), L * D * B, P);
    if (cell_state) expect_shape("c_n", c_n.rows(), c_n.cols(), L * D * B, H);

    Packing pk = make_packing(seq_len, B, lengths);
    const bool packed = pk.is_packed();
    const StepLayout& steps = pk.steps;
    const Index R = steps.rows();

    // Inputs in the packed domain: the caller's own arrays when the batch is not packed.
    RowMatrix<T> x_packed, h0_sorted, c0_sorted, masks_packed;
    if (packed) {
        pack_rows<T>(pk, x, x_packed);
        if (h0.rows() != 0) {
            h0_sorted.resize(h0.rows(), P);
            permute_states(pk, h0, h0_sorted, true);
        }
        if (c0.rows() != 0) {
            c0_sorted.resize(c0.rows(), H);
            permute_states(pk, c0, c0_sorted, true);
        }
        if (masks.rows() != 0) {
            masks_packed.resize((L - 1) * R, DP);
            for (Index l = 0; l + 1 < L; ++l) {
                RowMatrix<T> block;
                pack_rows<T>(pk, masks.middleRows(l * TB, TB), block);
                masks_packed.middleRows(l * R, R) = block;
            }
        }
    }
    const ConstMatrixRef<T> x_in = packed ? ConstMatrixRef<T>(x_packed) : x;
    const ConstMatrixRef<T> h0_in = packed && h0.rows() != 0 ? ConstMatrixRef<T>(h0_sorted) : h0;
    const ConstMatrixRef<T> c0_in = packed && c0.rows() != 0 ? ConstMatrixRef<T>(c0_sorted) : c0;
    const ConstMatrixRef<T> masks_in = packed && masks.rows() != 0 ? ConstMatrixRef<T>(masks_packed) : masks;

    const RowMatrix<T> no_state(0, P), no_cell(0, H);
    const bool borrow = cache != nullptr && cache->borrow && !packed;
    if (cache != nullptr) {
        cache->input_size = cfg.input_size;
        cache->output_size = DP;
        cache->x_data = cache->top_data = nullptr;
        if (borrow) {
            cache->x.resize(0, cfg.input_size);
            cache->x_data = x_in.data();
            cache->x_stride = x_in.outerStride();
        } else {
            cache->x = x_in;
        }
        if (h0_in.rows() != 0) {
            cache->h0 = h0_in;
        } else {
            cache->h0.setZero(L * D * B, P);
        }
        if (cell_state && c0_in.rows() != 0) {
            cache->c0 = c0_in;
        } else {
            cache->c0.setZero(cell_state ? L * D * B : 0, H);
        }
        // A cache passed again keeps its matrices where the sizes match (Eigen reallocates only on a change): a
        // training step's cache is tens of megabytes, and fresh memory faults in a page at a time on first touch.
        cache->ys.resize(static_cast<size_t>(L));
        cache->gates.resize(static_cast<size_t>(L));
        cache->aux.resize(static_cast<size_t>(L));
        cache->masks = masks_in;
    }
    // Workspaces, allocated once: layer outputs to alternate between (inference), the masked input, and the gates
    // (a chunk of steps' worth) and aux of a layer when no cache keeps them.
    const bool gated = cfg.cell != CellKind::rnn;
    // (Kept per thread for the next call: workspace.hpp.)
    using detail::WorkspaceSlot;
    RowMatrix<T> dropped;
    detail::Workspace<T> ping(WorkspaceSlot::forward_ping, cache == nullptr && (L > 1 || packed) ? R : 0, DP);
    detail::Workspace<T> pong(WorkspaceSlot::forward_pong, cache == nullptr && L > 1 ? R : 0, DP);
    if (masks_in.rows() != 0) dropped.resize(R, DP);
    const bool work_gates = cache == nullptr && gated;
    detail::Workspace<T> gate_work(
        WorkspaceSlot::forward_gates,
        work_gates ? detail::forward_workspace_rows(steps, D * GH, std::max(cfg.input_size, DP), sizeof(T)) : 0, D * GH);
    detail::Workspace<T> aux_work(WorkspaceSlot::forward_aux, work_gates ? R : 0, D * H);

    const T* input = x_in.data();
    Index input_stride = x_in.outerStride();
    for (Index l = 0; l < L; ++l) {
        const size_t ul = static_cast<size_t>(l);
        T* y = nullptr;
        Index y_stride = DP;
        if (cache != nullptr && !(borrow && l == L - 1)) {
            cache->ys[ul].resize(R, DP);
            y = cache->ys[ul].data();
        } else if (l == L - 1 && !packed) {
            y = output.data();
            y_stride = output.outerStride();
        } else {
            y = (l % 2 == 0 ? ping : pong).matrix().data();
        }
        if (cache != nullptr) {
            cache->gates[ul].resize(gated ? R : 0, gated ? D * GH : 0);
            cache->aux[ul].resize(gated ? R : 0, gated ? D * H : 0);
        }
        const bool cached_gates = cache != nullptr && gated;
        MatrixRef<T> gates = cached_gates ? MatrixRef<T>(cache->gates[ul]) : MatrixRef<T>(gate_work.matrix());
        MatrixRef<T> aux = cached_gates ? MatrixRef<T>(cache->aux[ul]) : MatrixRef<T>(aux_work.matrix());
        const ConstMatrixMap<T> in(input, R, cfg.layer_input_size(l), Eigen::OuterStride<>(input_stride));
        MatrixMap<T> ys(y, R, DP, Eigen::OuterStride<>(y_stride));
        // The directions are independent: side by side on two threads when there are two.
        detail::parallel(D == 2 ? detail::threads_for(2, 1) : 1, [&](int k, int parts) {
            for (Index d = k; d < D; d += parts) {
                const DirectionLayout p = direction_layout(cfg, direction_offset(cfg, l, d), l);
                const Index ld = l * D + d;
                MatrixRef<T> g = gated ? MatrixRef<T>(gates.middleCols(d * GH, GH)) : gates;
                MatrixRef<T> a = gated ? MatrixRef<T>(aux.middleCols(d * H, H)) : aux;
                direction_forward<T>(cfg, weights_of(cfg, params, p), in,
                                     h0_in.rows() != 0 ? ConstMatrixRef<T>(h0_in.middleRows(ld * B, B)) : ConstMatrixRef<T>(no_state),
                                     c0_in.rows() != 0 ? ConstMatrixRef<T>(c0_in.middleRows(ld * B, B)) : ConstMatrixRef<T>(no_cell),
                                     d == 1, steps, ys.middleCols(d * P, P), g, a, cached_gates);
                // Each item's final state: its last valid step forward, step 0 in reverse.
                if (!packed) {
                    const Index last = d == 1 ? 0 : seq_len - 1;
                    h_n.middleRows(ld * B, B) = ys.block(last * B, d * P, B, P);
                    if (cell_state) c_n.middleRows(ld * B, B) = a.middleRows(last * B, B);
                } else {
                    for (Index j = 0; j < B; ++j) {
                        const Index t = d == 1 ? 0 : pk.lengths[static_cast<size_t>(j)] - 1;
                        const Index item = ld * B + pk.order[static_cast<size_t>(j)];
                        h_n.row(item) = ys.block(steps.offset(t) + j, d * P, 1, P);
                        if (cell_state) c_n.row(item) = a.row(steps.offset(t) + j);
                    }
                }
            }
        });
        input = y;
        input_stride = y_stride;
        if (l < L - 1 && masks_in.rows() != 0) {
            dropped = ys.cwiseProduct(masks_in.middleRows(l * R, R));
            input = dropped.data();
            input_stride = DP;
        }
        if (l == L - 1 && packed) unpack_rows<T>(pk, ys, output);
    }
    if (cache != nullptr) {
        if (borrow) {
            cache->ys.back().resize(0, DP);
            cache->top_data = output.data();
            cache->top_stride = output.outerStride();
        } else if (!packed) {
            output = cache->ys.back();
        }
        cache->packing = std::move(pk);
    }
}

template <class T>
void stack_backward(const StackConfig& cfg, const T* params, const StackCache<T>& cache,
                    const ConstMatrixRef<T>& d_output, const ConstMatrixRef<T>& d_h_n, const ConstMatrixRef<T>& d_c_n,
                    MatrixRef<T> dx, MatrixRef<T> dh0, MatrixRef<T> dc0, T* grads) {
    const Index L = cfg.num_layers, D = cfg.directions(), H = cfg.hidden_size, P = cfg.state_size();
    const Index DP = cfg.output_size(), GH = cfg.gates() * H;
    const bool cell_state = cfg.has_cell_state(), gated = cfg.cell != CellKind::rnn;
    const Packing& pk = cache.packing;
    const Index seq_len = pk.seq_len, B = pk.batch, TB = seq_len * B, R = pk.steps.rows();
    if (static_cast<Index>(cache.ys.size()) != L || seq_len <= 0 ||
        (gated && static_cast<Index>(cache.gates.size()) != L)) {
        throw std::invalid_argument("cache: it does not come from a forward of this configuration");
    }
    const ConstMatrixMap<T> x_cached = cache.input();
    expect_shape("cache.x", x_cached.rows(), x_cached.cols(), R, cfg.input_size);
    const bool want_dx = dx.rows() != 0;
    if (d_output.rows() != 0) expect_shape("grad_output", d_output.rows(), d_output.cols(), TB, DP);
    if (d_h_n.rows() != 0) expect_shape("grad_h_n", d_h_n.rows(), d_h_n.cols(), L * D * B, P);
    if (d_c_n.rows() != 0) expect_shape("grad_c_n", d_c_n.rows(), d_c_n.cols(), L * D * B, H);
    if (want_dx) expect_shape("grad_input", dx.rows(), dx.cols(), TB, cfg.input_size);
    expect_shape("grad_h0", dh0.rows(), dh0.cols(), L * D * B, P);
    if (cell_state) expect_shape("grad_c0", dc0.rows(), dc0.cols(), L * D * B, H);
    const bool packed = pk.is_packed();

    // Gradients in the packed domain, and workspaces, allocated once per call.
    RowMatrix<T> d_output_packed, d_h_n_sorted, d_c_n_sorted, dx_packed, dh0_sorted, dc0_sorted;
    if (packed) {
        if (d_output.rows() != 0) pack_rows<T>(pk, d_output, d_output_packed);
        if (d_h_n.rows() != 0) {
            d_h_n_sorted.resize(d_h_n.rows(), P);
            permute_states(pk, d_h_n, d_h_n_sorted, true);
        }
        if (d_c_n.rows() != 0) {
            d_c_n_sorted.resize(d_c_n.rows(), H);
            permute_states(pk, d_c_n, d_c_n_sorted, true);
        }
        if (want_dx) dx_packed.resize(R, cfg.input_size);
        dh0_sorted.resize(L * D * B, P);
        if (cell_state) dc0_sorted.resize(L * D * B, H);
    }
    const ConstMatrixRef<T> d_out_in = packed && d_output.rows() != 0 ? ConstMatrixRef<T>(d_output_packed) : d_output;
    const ConstMatrixRef<T> d_h_n_in = packed && d_h_n.rows() != 0 ? ConstMatrixRef<T>(d_h_n_sorted) : d_h_n;
    const ConstMatrixRef<T> d_c_n_in = packed && d_c_n.rows() != 0 ? ConstMatrixRef<T>(d_c_n_sorted) : d_c_n;
    MatrixRef<T> dx_out = packed ? MatrixRef<T>(dx_packed) : dx;
    MatrixRef<T> dh0_out = packed ? MatrixRef<T>(dh0_sorted) : dh0;
    MatrixRef<T> dc0_out = packed && cell_state ? MatrixRef<T>(dc0_sorted) : dc0;

    const bool dropout = cache.masks.rows() != 0;
    const RowMatrix<T> none(0, P), no_cell(0, H), no_aux(0, 0);
    // The directions run side by side when there are two threads; each then needs its own dz. The second
    // direction's input gradient is made apart and added in afterwards, whatever the threads: the sums of every
    // element in the same order. dz holds a chunk of steps (see recurrent_backward).
    const int dir_threads = D == 2 ? detail::threads_for(2, 1) : 1;
    const Index chunk_rows = std::min(R, std::max(pk.steps.size_or_zero(0), kBackwardChunkRows));
    // dz (and the GRU's dzh) of each direction thread, kept per thread for the next call (workspace.hpp).
    const Index dzh_rows = cfg.cell == CellKind::gru ? chunk_rows : 0;
    detail::Workspace<T> dz(detail::WorkspaceSlot::backward_dz, dir_threads * chunk_rows, GH, true);
    detail::Workspace<T> dzh(detail::WorkspaceSlot::backward_dzh, dir_threads * dzh_rows, GH, true);
    RowMatrix<T> d_y, d_x, d_in_second, dropped, dc_unused(0, 0);  // gradient into a layer's output, its input, ...
    if (L > 1) {
        d_y.resize(R, DP);
        d_x.resize(R, DP);
    }
    if (dropout) dropped.resize(R, DP);

    for (Index l = L - 1; l >= 0; --l) {
        const size_t ul = static_cast<size_t>(l);
        const T* input = x_cached.data();
        Index input_stride = x_cached.outerStride();
        if (l > 0) {
            input = cache.ys[ul - 1].data();
            input_stride = DP;
            if (dropout) {
                dropped = cache.ys[ul - 1].cwiseProduct(cache.masks.middleRows((l - 1) * R, R));
                input = dropped.data();
            }
        }
        const Index in_size = cfg.layer_input_size(l);
        const ConstMatrixMap<T> in(input, R, in_size, Eigen::OuterStride<>(input_stride));
        // Layer 0's input gradient only when asked for.
        const Index d_in_rows = l > 0 || want_dx ? R : 0;
        MatrixMap<T> d_in = l == 0 ? MatrixMap<T>(dx_out.data(), d_in_rows, in_size, Eigen::OuterStride<>(std::max<Index>(dx_out.outerStride(), 1)))
                                   : matrix(d_x.data(), 0, R, DP);
        d_in.setZero();
        if (D == 2) d_in_second.setZero(d_in_rows, in_size);
        detail::parallel(dir_threads, [&](int k, int parts) {
            for (Index d = k; d < D; d += parts) {
                const DirectionLayout p = direction_layout(cfg, direction_offset(cfg, l, d), l);
                const Index ld = l * D + d;
                const Index bias_size = cfg.bias ? GH : 0;
                // Gradient flowing into this direction's states from above: the next layer, the output, or none.
                const ConstMatrixRef<T> d_hs = l < L - 1               ? ConstMatrixRef<T>(d_y.middleCols(d * P, P))
                                               : d_out_in.rows() != 0 ? ConstMatrixRef<T>(d_out_in.middleCols(d * P, P))
                                                                      : ConstMatrixRef<T>(none);
                MatrixRef<T> d_in_dir = d == 1 ? MatrixRef<T>(d_in_second) : MatrixRef<T>(d_in);
                RowMatrix<T> no_grad(0, 0);
                const detail::LayerGrads<T> g{matrix(grads, p.w_ih, GH, p.in), matrix(grads, p.w_hh, GH, P),
                                              Eigen::Map<RowVector<T>>(grads + p.b_ih, bias_size),
                                              Eigen::Map<RowVector<T>>(grads + p.b_hh, bias_size),
                                              cfg.proj_size > 0 ? MatrixRef<T>(matrix(grads, p.w_hr, P, H)) : MatrixRef<T>(no_grad)};
                const ConstMatrixRef<T> gates = gated ? ConstMatrixRef<T>(cache.gates[ul].middleCols(d * GH, GH)) : ConstMatrixRef<T>(no_aux);
                const ConstMatrixRef<T> aux = gated ? ConstMatrixRef<T>(cache.aux[ul].middleCols(d * H, H)) : ConstMatrixRef<T>(no_aux);
                direction_backward<T>(
                    cfg, weights_of(cfg, params, p), in, cache.h0.middleRows(ld * B, B),
                    cell_state ? ConstMatrixRef<T>(cache.c0.middleRows(ld * B, B)) : ConstMatrixRef<T>(no_cell),
                    cache.states(l).middleCols(d * P, P), gates, aux, d_hs,
                    d_h_n_in.rows() != 0 ? ConstMatrixRef<T>(d_h_n_in.middleRows(ld * B, B)) : ConstMatrixRef<T>(none),
                    cell_state && d_c_n_in.rows() != 0 ? ConstMatrixRef<T>(d_c_n_in.middleRows(ld * B, B)) : ConstMatrixRef<T>(no_cell),
                    d == 1, pk.steps, d_in_dir, dh0_out.middleRows(ld * B, B),
                    cell_state ? MatrixRef<T>(dc0_out.middleRows(ld * B, B)) : MatrixRef<T>(dc_unused), g,
                    dz.rows(k * chunk_rows, chunk_rows), dzh.rows(k * dzh_rows, dzh_rows));
            }
        });
        if (D == 2 && d_in_rows != 0) d_in += d_in_second;
        if (l > 0) {
            if (dropout) {
                d_y = d_x.cwiseProduct(cache.masks.middleRows((l - 1) * R, R));
            } else {
                d_y.swap(d_x);
            }
        }
    }
    if (packed) {
        if (want_dx) unpack_rows<T>(pk, dx_packed, dx);
        permute_states(pk, dh0_sorted, dh0, false);
        if (cell_state) permute_states(pk, dc0_sorted, dc0, false);
    }
}

#define RNNFAST_INSTANTIATE(T)                                                                                     \
    template void stack_forward<T>(const StackConfig&, const T*, const ConstMatrixRef<T>&, Index,                 \
                                   const std::vector<Index>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&,  \
                                   const ConstMatrixRef<T>&, MatrixRef<T>, MatrixRef<T>, MatrixRef<T>,            \
                                   StackCache<T>*);                                                              \
    template void stack_backward<T>(const StackConfig&, const T*, const StackCache<T>&, const ConstMatrixRef<T>&, \
                                    const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, MatrixRef<T>,             \
                                    MatrixRef<T>, MatrixRef<T>, T*);

RNNFAST_INSTANTIATE(float)
RNNFAST_INSTANTIATE(double)
#undef RNNFAST_INSTANTIATE

}  // namespace rnnfast
