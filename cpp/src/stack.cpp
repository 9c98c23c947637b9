#include "rnnfast/stack.hpp"

#include <limits>
#include <stdexcept>

#include "rnnfast/elman.hpp"

namespace rnnfast {
namespace {

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
    const long double count = static_cast<long double>(num_layers) * directions() * hidden_size *
                              (static_cast<long double>(input_size) + output_size() + hidden_size + 2);
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
    Index offset = 0;
    for (Index l = 0; l < cfg.num_layers; ++l) {
        for (Index d = 0; d < cfg.directions(); ++d) offset = direction_layout(cfg, offset, l).end;
    }
    return offset;
}

template <class T>
void stack_forward(const StackConfig& cfg, const T* params, const ConstMatrixRef<T>& x, Index seq_len,
                   const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& masks, MatrixRef<T> output,
                   MatrixRef<T> h_n, StackCache<T>* cache) {
    if (seq_len <= 0) throw std::invalid_argument("seq_len: expected a positive integer, got " + std::to_string(seq_len));
    const Index L = cfg.num_layers, D = cfg.directions(), H = cfg.hidden_size, DH = cfg.output_size();
    const Index TB = x.rows(), B = TB / seq_len;
    expect_shape("x", x.rows(), x.cols(), seq_len * B, cfg.input_size);
    if (h0.rows() != 0) expect_shape("h0", h0.rows(), h0.cols(), L * D * B, H);
    if (masks.rows() != 0) expect_shape("masks", masks.rows(), masks.cols(), (L - 1) * TB, DH);
    expect_shape("output", output.rows(), output.cols(), TB, DH);
    expect_shape("h_n", h_n.rows(), h_n.cols(), L * D * B, H);

    const RowMatrix<T> no_state(0, H);
    if (cache != nullptr) {
        cache->seq_len = seq_len;
        cache->batch = B;
        cache->x = x;
        if (h0.rows() != 0) {
            cache->h0 = h0;
        } else {
            cache->h0.setZero(L * D * B, H);
        }
        cache->ys.resize(static_cast<size_t>(L));
        cache->masks = masks;
    }
    // Workspaces, allocated once: two layer outputs to alternate between (inference) and the masked input.
    RowMatrix<T> ping, pong, dropped;
    if (cache == nullptr && L > 1) ping.resize(TB, DH);
    if (cache == nullptr && L > 2) pong.resize(TB, DH);
    if (masks.rows() != 0) dropped.resize(TB, DH);

    const T* input = x.data();
    Index input_stride = x.outerStride();
    Index offset = 0;
    for (Index l = 0; l < L; ++l) {
        T* y = nullptr;
        Index y_stride = DH;
        if (cache != nullptr) {
            cache->ys[static_cast<size_t>(l)].resize(TB, DH);
            y = cache->ys[static_cast<size_t>(l)].data();
        } else if (l == L - 1) {
            y = output.data();
            y_stride = output.outerStride();
        } else {
            y = (l % 2 == 0 ? ping : pong).data();
        }
        const ConstMatrixMap<T> in(input, TB, cfg.layer_input_size(l), Eigen::OuterStride<>(input_stride));
        MatrixMap<T> ys(y, TB, DH, Eigen::OuterStride<>(y_stride));
        for (Index d = 0; d < D; ++d) {
            const DirectionLayout p = direction_layout(cfg, offset, l);
            offset = p.end;
            const Index ld = l * D + d;
            const Index bias_size = cfg.bias ? H : 0;
            layer_forward<T>(in, h0.rows() != 0 ? ConstMatrixRef<T>(h0.middleRows(ld * B, B)) : ConstMatrixRef<T>(no_state),
                             const_matrix(params, p.w_ih, H, p.in), const_matrix(params, p.w_hh, H, H),
                             Eigen::Map<const RowVector<T>>(params + p.b_ih, bias_size),
                             Eigen::Map<const RowVector<T>>(params + p.b_hh, bias_size), cfg.activation, d == 1,
                             seq_len, ys.middleCols(d * H, H));
            const Index last = d == 1 ? 0 : seq_len - 1;
            h_n.middleRows(ld * B, B) = ys.block(last * B, d * H, B, H);
        }
        input = y;
        input_stride = y_stride;
        if (l < L - 1 && masks.rows() != 0) {
            dropped = ys.cwiseProduct(masks.middleRows(l * TB, TB));
            input = dropped.data();
            input_stride = DH;
        }
    }
    if (cache != nullptr) output = cache->ys.back();
}

template <class T>
void stack_backward(const StackConfig& cfg, const T* params, const StackCache<T>& cache,
                    const ConstMatrixRef<T>& d_output, const ConstMatrixRef<T>& d_h_n, MatrixRef<T> dx,
                    MatrixRef<T> dh0, T* grads) {
    const Index L = cfg.num_layers, D = cfg.directions(), H = cfg.hidden_size, DH = cfg.output_size();
    const Index seq_len = cache.seq_len, B = cache.batch, TB = seq_len * B;
    if (static_cast<Index>(cache.ys.size()) != L || seq_len <= 0) {
        throw std::invalid_argument("cache: it does not come from a forward of this configuration");
    }
    expect_shape("cache.x", cache.x.rows(), cache.x.cols(), TB, cfg.input_size);
    if (d_output.rows() != 0) expect_shape("grad_output", d_output.rows(), d_output.cols(), TB, DH);
    if (d_h_n.rows() != 0) expect_shape("grad_h_n", d_h_n.rows(), d_h_n.cols(), L * D * B, H);
    expect_shape("grad_input", dx.rows(), dx.cols(), TB, cfg.input_size);
    expect_shape("grad_h0", dh0.rows(), dh0.cols(), L * D * B, H);

    // Offsets of each layer's first direction, so layers can be visited top-down.
    std::vector<Index> layer_offset(static_cast<size_t>(L));
    Index offset = 0;
    for (Index l = 0; l < L; ++l) {
        layer_offset[static_cast<size_t>(l)] = offset;
        for (Index d = 0; d < D; ++d) offset = direction_layout(cfg, offset, l).end;
    }

    // Workspaces, allocated once per call.
    const bool dropout = cache.masks.rows() != 0;
    const RowMatrix<T> none(0, H);
    RowMatrix<T> dz(TB, H);
    RowMatrix<T> d_y, d_x, dropped;  // gradient into a layer's output, into its input, masked input
    if (L > 1) {
        d_y.resize(TB, DH);
        d_x.resize(TB, DH);
    }
    if (dropout) dropped.resize(TB, DH);

    for (Index l = L - 1; l >= 0; --l) {
        const size_t ul = static_cast<size_t>(l);
        const T* input = cache.x.data();
        if (l > 0) {
            input = cache.ys[ul - 1].data();
            if (dropout) {
                dropped = cache.ys[ul - 1].cwiseProduct(cache.masks.middleRows((l - 1) * TB, TB));
                input = dropped.data();
            }
        }
        const Index in_size = cfg.layer_input_size(l);
        const ConstMatrixMap<T> in(input, TB, in_size, Eigen::OuterStride<>(in_size));
        MatrixMap<T> d_in = l == 0 ? MatrixMap<T>(dx.data(), TB, in_size, Eigen::OuterStride<>(dx.outerStride()))
                                   : matrix(d_x.data(), 0, TB, DH);
        d_in.setZero();
        Index off = layer_offset[ul];
        for (Index d = 0; d < D; ++d) {
            const DirectionLayout p = direction_layout(cfg, off, l);
            off = p.end;
            const Index ld = l * D + d;
            const Index bias_size = cfg.bias ? H : 0;
            // Gradient flowing into this direction's states from above: the next layer, the output, or none.
            const ConstMatrixRef<T> d_hs = l < L - 1               ? ConstMatrixRef<T>(d_y.middleCols(d * H, H))
                                           : d_output.rows() != 0 ? ConstMatrixRef<T>(d_output.middleCols(d * H, H))
                                                                  : ConstMatrixRef<T>(none);
            layer_backward<T>(in, cache.h0.middleRows(ld * B, B), const_matrix(params, p.w_ih, H, p.in),
                              const_matrix(params, p.w_hh, H, H), cache.ys[ul].middleCols(d * H, H), d_hs,
                              d_h_n.rows() != 0 ? ConstMatrixRef<T>(d_h_n.middleRows(ld * B, B)) : ConstMatrixRef<T>(none),
                              cfg.activation, d == 1, seq_len, d_in, dh0.middleRows(ld * B, B),
                              matrix(grads, p.w_ih, H, p.in), matrix(grads, p.w_hh, H, H),
                              Eigen::Map<RowVector<T>>(grads + p.b_ih, bias_size),
                              Eigen::Map<RowVector<T>>(grads + p.b_hh, bias_size), dz);
        }
        if (l > 0) {
            if (dropout) {
                d_y = d_x.cwiseProduct(cache.masks.middleRows((l - 1) * TB, TB));
            } else {
                d_y.swap(d_x);
            }
        }
    }
}

template void stack_forward<float>(const StackConfig&, const float*, const ConstMatrixRef<float>&, Index,
                                   const ConstMatrixRef<float>&, const ConstMatrixRef<float>&, MatrixRef<float>,
                                   MatrixRef<float>, StackCache<float>*);
template void stack_forward<double>(const StackConfig&, const double*, const ConstMatrixRef<double>&, Index,
                                    const ConstMatrixRef<double>&, const ConstMatrixRef<double>&, MatrixRef<double>,
                                    MatrixRef<double>, StackCache<double>*);
template void stack_backward<float>(const StackConfig&, const float*, const StackCache<float>&,
                                    const ConstMatrixRef<float>&, const ConstMatrixRef<float>&, MatrixRef<float>,
                                    MatrixRef<float>, float*);
template void stack_backward<double>(const StackConfig&, const double*, const StackCache<double>&,
                                     const ConstMatrixRef<double>&, const ConstMatrixRef<double>&, MatrixRef<double>,
                                     MatrixRef<double>, double*);

}  // namespace rnnfast
