#include "rnnfast/stack.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>

#include "rnnfast/elman.hpp"
#include "parallel.hpp"

namespace rnnfast {
namespace {

// Rows of the backward's pre-activation gradient workspace (per direction): whole steps up to this many.
constexpr Index kBackwardChunkRows = 2048;

// Parameters of one direction of one layer, in the flat buffer. Another cell kind (LSTM, GRU) would change the
// row count of the weight blocks (gates * H) and supply its own layer kernel pair; the driver stays the same.
struct DirectionLayout {
    Index w_ih, w_hh, b_ih, b_hh;  // offsets
    Index in;                      // input size of the layer
    Index end;                     // offset just past this block
};

DirectionLayout direction_layout(const StackConfig& cfg, Index offset, Index layer) {
    const Index H = cfg.hidden_size;
    DirectionLayout p{};
    p.in = cfg.layer_input_size(layer);
    p.w_ih = offset;
    p.w_hh = p.w_ih + H * p.in;
    p.b_ih = p.w_hh + H * H;
    p.b_hh = p.b_ih + (cfg.bias ? H : 0);
    p.end = p.b_hh + (cfg.bias ? H : 0);
    return p;
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

void StackConfig::validate() const {
    if (input_size <= 0) throw std::invalid_argument("input_size: expected a positive integer, got " + std::to_string(input_size));
    if (hidden_size <= 0) throw std::invalid_argument("hidden_size: expected a positive integer, got " + std::to_string(hidden_size));
    if (num_layers <= 0) throw std::invalid_argument("num_layers: expected a positive integer, got " + std::to_string(num_layers));
    // The parameter count must fit in an Index: check every factor against the limit before multiplying.
    const long double h = static_cast<long double>(hidden_size), d = static_cast<long double>(directions());
    const long double count = static_cast<long double>(num_layers) * d * h *
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
    const Index H = cfg.hidden_size;
    Index offset = 0;
    for (Index l = 0; l < cfg.num_layers; ++l) {
        for (Index d = 0; d < cfg.directions(); ++d) {
            const std::string sfx = "_l" + std::to_string(l) + (d == 1 ? "_reverse" : "");
            const DirectionLayout p = direction_layout(cfg, offset, l);
            specs.push_back({"weight_ih" + sfx, p.w_ih, H, p.in});
            specs.push_back({"weight_hh" + sfx, p.w_hh, H, H});
            if (cfg.bias) {
                specs.push_back({"bias_ih" + sfx, p.b_ih, H, 0});
                specs.push_back({"bias_hh" + sfx, p.b_hh, H, 0});
            }
            offset = p.end;
        }
    }
    return specs;
}

Index param_count(const StackConfig& cfg) {
    cfg.validate();
    // Closed form (validate() bounds it): a loop over the layers would take minutes for absurd layer counts.
    const Index H = cfg.hidden_size, D = cfg.directions(), bias = cfg.bias ? 2 * H : 0;
    const Index first = D * (H * cfg.input_size + H * H + bias);
    const Index rest = D * (H * cfg.output_size() + H * H + bias);
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

template <class T>
void stack_forward(const StackConfig& cfg, const T* params, const ConstMatrixRef<T>& x, Index seq_len,
                   const std::vector<Index>& lengths, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& masks,
                   MatrixRef<T> output, MatrixRef<T> h_n, StackCache<T>* cache) {
    if (seq_len <= 0) throw std::invalid_argument("seq_len: expected a positive integer, got " + std::to_string(seq_len));
    const Index L = cfg.num_layers, D = cfg.directions(), H = cfg.hidden_size, DH = cfg.output_size();
    const Index TB = x.rows(), B = TB / seq_len;
    expect_shape("x", x.rows(), x.cols(), seq_len * B, cfg.input_size);
    if (h0.rows() != 0) expect_shape("h0", h0.rows(), h0.cols(), L * D * B, H);
    if (masks.rows() != 0) expect_shape("masks", masks.rows(), masks.cols(), (L - 1) * TB, DH);
    expect_shape("output", output.rows(), output.cols(), TB, DH);
    expect_shape("h_n", h_n.rows(), h_n.cols(), L * D * B, H);

    Packing pk = make_packing(seq_len, B, lengths);
    const bool packed = pk.is_packed();
    const StepLayout& steps = pk.steps;
    const Index R = steps.rows();

    // Inputs in the packed domain: the caller's own arrays when the batch is not packed.
    RowMatrix<T> x_packed, h0_sorted, masks_packed;
    if (packed) {
        pack_rows<T>(pk, x, x_packed);
        if (h0.rows() != 0) {
            h0_sorted.resize(h0.rows(), H);
            permute_states(pk, h0, h0_sorted, true);
        }
        if (masks.rows() != 0) {
            masks_packed.resize((L - 1) * R, DH);
            for (Index l = 0; l + 1 < L; ++l) {
                RowMatrix<T> block;
                pack_rows<T>(pk, masks.middleRows(l * TB, TB), block);
                masks_packed.middleRows(l * R, R) = block;
            }
        }
    }
    const ConstMatrixRef<T> x_in = packed ? ConstMatrixRef<T>(x_packed) : x;
    const ConstMatrixRef<T> h0_in = packed && h0.rows() != 0 ? ConstMatrixRef<T>(h0_sorted) : h0;
    const ConstMatrixRef<T> masks_in = packed && masks.rows() != 0 ? ConstMatrixRef<T>(masks_packed) : masks;

    const RowMatrix<T> no_state(0, H);
    const bool borrow = cache != nullptr && cache->borrow && !packed;
    if (cache != nullptr) {
        cache->input_size = cfg.input_size;
        cache->output_size = DH;
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
            cache->h0.setZero(L * D * B, H);
        }
        cache->ys.resize(static_cast<size_t>(L));
        cache->masks = masks_in;
    }
    // Workspaces, allocated once: layer outputs to alternate between (inference), the masked input.
    RowMatrix<T> ping, pong, dropped;
    if (cache == nullptr && (L > 1 || packed)) ping.resize(R, DH);
    if (cache == nullptr && L > 1) pong.resize(R, DH);
    if (masks_in.rows() != 0) dropped.resize(R, DH);

    const T* input = x_in.data();
    Index input_stride = x_in.outerStride();
    Index offset = 0;
    for (Index l = 0; l < L; ++l) {
        T* y = nullptr;
        Index y_stride = DH;
        if (cache != nullptr && !(borrow && l == L - 1)) {
            cache->ys[static_cast<size_t>(l)].resize(R, DH);
            y = cache->ys[static_cast<size_t>(l)].data();
        } else if (l == L - 1 && !packed) {
            y = output.data();
            y_stride = output.outerStride();
        } else {
            y = (l % 2 == 0 ? ping : pong).data();
        }
        const ConstMatrixMap<T> in(input, R, cfg.layer_input_size(l), Eigen::OuterStride<>(input_stride));
        MatrixMap<T> ys(y, R, DH, Eigen::OuterStride<>(y_stride));
        // The directions are independent: side by side on two threads when there are two.
        const Index layer_params = offset;
        detail::parallel(D == 2 ? detail::threads_for(2, 1) : 1, [&](int k, int parts) {
            for (Index d = k; d < D; d += parts) {
                Index off = layer_params;
                for (Index e = 0; e < d; ++e) off = direction_layout(cfg, off, l).end;
                const DirectionLayout p = direction_layout(cfg, off, l);
                const Index ld = l * D + d;
                const Index bias_size = cfg.bias ? H : 0;
                layer_forward<T>(in, h0_in.rows() != 0 ? ConstMatrixRef<T>(h0_in.middleRows(ld * B, B)) : ConstMatrixRef<T>(no_state),
                                 const_matrix(params, p.w_ih, H, p.in), const_matrix(params, p.w_hh, H, H),
                                 Eigen::Map<const RowVector<T>>(params + p.b_ih, bias_size),
                                 Eigen::Map<const RowVector<T>>(params + p.b_hh, bias_size), cfg.activation, d == 1,
                                 steps, ys.middleCols(d * H, H));
                // Each item's final state: its last valid step forward, step 0 in reverse.
                if (!packed) {
                    const Index last = d == 1 ? 0 : seq_len - 1;
                    h_n.middleRows(ld * B, B) = ys.block(last * B, d * H, B, H);
                } else {
                    for (Index j = 0; j < B; ++j) {
                        const Index t = d == 1 ? 0 : pk.lengths[static_cast<size_t>(j)] - 1;
                        h_n.row(ld * B + pk.order[static_cast<size_t>(j)]) = ys.block(steps.offset(t) + j, d * H, 1, H);
                    }
                }
            }
        });
        for (Index d = 0; d < D; ++d) offset = direction_layout(cfg, offset, l).end;
        input = y;
        input_stride = y_stride;
        if (l < L - 1 && masks_in.rows() != 0) {
            dropped = ys.cwiseProduct(masks_in.middleRows(l * R, R));
            input = dropped.data();
            input_stride = DH;
        }
        if (l == L - 1 && packed) unpack_rows<T>(pk, ys, output);
    }
    if (cache != nullptr) {
        if (borrow) {
            cache->ys.back().resize(0, DH);
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
                    const ConstMatrixRef<T>& d_output, const ConstMatrixRef<T>& d_h_n, MatrixRef<T> dx,
                    MatrixRef<T> dh0, T* grads) {
    const Index L = cfg.num_layers, D = cfg.directions(), H = cfg.hidden_size, DH = cfg.output_size();
    const Packing& pk = cache.packing;
    const Index seq_len = pk.seq_len, B = pk.batch, TB = seq_len * B, R = pk.steps.rows();
    if (static_cast<Index>(cache.ys.size()) != L || seq_len <= 0) {
        throw std::invalid_argument("cache: it does not come from a forward of this configuration");
    }
    const ConstMatrixMap<T> x_cached = cache.input();
    expect_shape("cache.x", x_cached.rows(), x_cached.cols(), R, cfg.input_size);
    const bool want_dx = dx.rows() != 0;
    if (d_output.rows() != 0) expect_shape("grad_output", d_output.rows(), d_output.cols(), TB, DH);
    if (d_h_n.rows() != 0) expect_shape("grad_h_n", d_h_n.rows(), d_h_n.cols(), L * D * B, H);
    if (want_dx) expect_shape("grad_input", dx.rows(), dx.cols(), TB, cfg.input_size);
    expect_shape("grad_h0", dh0.rows(), dh0.cols(), L * D * B, H);
    const bool packed = pk.is_packed();

    // Offsets of each layer's first direction, so layers can be visited top-down.
    std::vector<Index> layer_offset(static_cast<size_t>(L));
    Index offset = 0;
    for (Index l = 0; l < L; ++l) {
        layer_offset[static_cast<size_t>(l)] = offset;
        for (Index d = 0; d < D; ++d) offset = direction_layout(cfg, offset, l).end;
    }

    // Gradients in the packed domain, and workspaces, allocated once per call.
    RowMatrix<T> d_output_packed, d_h_n_sorted, dx_packed, dh0_sorted;
    if (packed) {
        if (d_output.rows() != 0) pack_rows<T>(pk, d_output, d_output_packed);
        if (d_h_n.rows() != 0) {
            d_h_n_sorted.resize(d_h_n.rows(), H);
            permute_states(pk, d_h_n, d_h_n_sorted, true);
        }
        if (want_dx) dx_packed.resize(R, cfg.input_size);
        dh0_sorted.resize(L * D * B, H);
    }
    const ConstMatrixRef<T> d_out_in = packed && d_output.rows() != 0 ? ConstMatrixRef<T>(d_output_packed) : d_output;
    const ConstMatrixRef<T> d_h_n_in = packed && d_h_n.rows() != 0 ? ConstMatrixRef<T>(d_h_n_sorted) : d_h_n;
    MatrixRef<T> dx_out = packed ? MatrixRef<T>(dx_packed) : dx;
    MatrixRef<T> dh0_out = packed ? MatrixRef<T>(dh0_sorted) : dh0;

    const bool dropout = cache.masks.rows() != 0;
    const RowMatrix<T> none(0, H);
    // The directions run side by side when there are two threads; each then needs its own dz and input
    // gradient (the second direction's is added in afterwards). dz holds a chunk of steps (see layer_backward).
    const int dir_threads = D == 2 ? detail::threads_for(2, 1) : 1;
    const Index chunk_rows = std::min(R, std::max(pk.steps.size_or_zero(0), kBackwardChunkRows));
    std::vector<RowMatrix<T>> dz(static_cast<size_t>(dir_threads), RowMatrix<T>(chunk_rows, H));
    RowMatrix<T> d_y, d_x, d_in_second, dropped;  // gradient into a layer's output, into its input, ...
    if (L > 1) {
        d_y.resize(R, DH);
        d_x.resize(R, DH);
    }
    if (dropout) dropped.resize(R, DH);

    for (Index l = L - 1; l >= 0; --l) {
        const size_t ul = static_cast<size_t>(l);
        const T* input = x_cached.data();
        Index input_stride = x_cached.outerStride();
        if (l > 0) {
            input = cache.ys[ul - 1].data();
            input_stride = DH;
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
                                   : matrix(d_x.data(), 0, R, DH);
        d_in.setZero();
        if (dir_threads > 1) d_in_second.setZero(d_in_rows, in_size);
        detail::parallel(dir_threads, [&](int k, int parts) {
            for (Index d = k; d < D; d += parts) {
                Index off = layer_offset[ul];
                for (Index e = 0; e < d; ++e) off = direction_layout(cfg, off, l).end;
                const DirectionLayout p = direction_layout(cfg, off, l);
                const Index ld = l * D + d;
                const Index bias_size = cfg.bias ? H : 0;
                // Gradient flowing into this direction's states from above: the next layer, the output, or none.
                const ConstMatrixRef<T> d_hs = l < L - 1               ? ConstMatrixRef<T>(d_y.middleCols(d * H, H))
                                               : d_out_in.rows() != 0 ? ConstMatrixRef<T>(d_out_in.middleCols(d * H, H))
                                                                      : ConstMatrixRef<T>(none);
                MatrixRef<T> d_in_dir = k == 1 ? MatrixRef<T>(d_in_second) : MatrixRef<T>(d_in);
                layer_backward<T>(in, cache.h0.middleRows(ld * B, B), const_matrix(params, p.w_ih, H, p.in),
                                  const_matrix(params, p.w_hh, H, H), cache.states(l).middleCols(d * H, H), d_hs,
                                  d_h_n_in.rows() != 0 ? ConstMatrixRef<T>(d_h_n_in.middleRows(ld * B, B)) : ConstMatrixRef<T>(none),
                                  cfg.activation, d == 1, pk.steps, d_in_dir, dh0_out.middleRows(ld * B, B),
                                  matrix(grads, p.w_ih, H, p.in), matrix(grads, p.w_hh, H, H),
                                  Eigen::Map<RowVector<T>>(grads + p.b_ih, bias_size),
                                  Eigen::Map<RowVector<T>>(grads + p.b_hh, bias_size), dz[static_cast<size_t>(k)]);
            }
        });
        if (dir_threads > 1 && d_in_rows != 0) d_in += d_in_second;
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
    }
}

template void stack_forward<float>(const StackConfig&, const float*, const ConstMatrixRef<float>&, Index,
                                   const std::vector<Index>&, const ConstMatrixRef<float>&, const ConstMatrixRef<float>&, MatrixRef<float>,
                                   MatrixRef<float>, StackCache<float>*);
template void stack_forward<double>(const StackConfig&, const double*, const ConstMatrixRef<double>&, Index,
                                    const std::vector<Index>&, const ConstMatrixRef<double>&, const ConstMatrixRef<double>&, MatrixRef<double>,
                                    MatrixRef<double>, StackCache<double>*);
template void stack_backward<float>(const StackConfig&, const float*, const StackCache<float>&,
                                    const ConstMatrixRef<float>&, const ConstMatrixRef<float>&, MatrixRef<float>,
                                    MatrixRef<float>, float*);
template void stack_backward<double>(const StackConfig&, const double*, const StackCache<double>&,
                                     const ConstMatrixRef<double>&, const ConstMatrixRef<double>&, MatrixRef<double>,
                                     MatrixRef<double>, double*);

}  // namespace rnnfast
