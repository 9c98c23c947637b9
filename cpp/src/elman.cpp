#include "rnnfast/elman.hpp"

#include "packed_product.hpp"
#include "parallel.hpp"

#include <algorithm>
#include <vector>
#include <stdexcept>

namespace rnnfast {
namespace {

// v <- tanh(v) over n contiguous values. Eigen finishes a span with scalar tanh, which costs several times a
// packet's; for a few rows of a small layer (20 states: one 16-wide packet and 4 scalars) the scalars would
// dominate, so the tail goes through one packet-sized buffer instead.
template <class T>
void tanh_span(T* v, Index n) {
    constexpr Index P = Eigen::internal::packet_traits<T>::size;
    const Index head = n / P * P;
    Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> body(v, head);
    body = body.tanh();
    if (head < n) {
        Eigen::Array<T, P, 1> tail = Eigen::Array<T, P, 1>::Zero();
        std::copy(v + head, v + n, tail.data());
        tail = tail.tanh();
        std::copy(tail.data(), tail.data() + (n - head), v + head);
    }
}

// z <- act(z), in place.
template <class T, class Z>
void activate(Z&& z, Activation act) {
    if (act == Activation::tanh) {
        if (z.outerStride() == z.cols()) {  // whole rows: one span
            tanh_span<T>(z.data(), z.rows() * z.cols());
        } else {
            for (Index r = 0; r < z.rows(); ++r) tanh_span<T>(&z.coeffRef(r, 0), z.cols());
        }
    } else {
        // PropagateNaN: relu(NaN) stays NaN, as in PyTorch.
#if EIGEN_VERSION_AT_LEAST(3, 4, 90)
        z = z.array().template max<Eigen::PropagateNaN>(T(0)).matrix();
#else
        // Eigen 3.4.0's public max() has no NaN-propagation parameter; its functor has.
        z = z.binaryExpr(RowMatrix<T>::Zero(z.rows(), z.cols()), Eigen::internal::scalar_max_op<T, T, Eigen::PropagateNaN>());
#endif
    }
}

// dz <- dz * act'(h), where h = act(z) is the saved output (tanh' = 1 - h^2, relu' = [h > 0]). relu's is a
// select on h <= 0, as PyTorch's: a NaN state passes the gradient, a NaN gradient at an inactive unit stops.
template <class T, class Z, class H>
void multiply_by_derivative(Z&& dz, const H& h, Activation act) {
    if (act == Activation::tanh) {
        dz.array() *= T(1) - h.array().square();
    } else {
        dz = (h.array() <= T(0)).select(T(0), dz.array()).matrix();
    }
}

}  // namespace

template <class T>
void cell_forward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h, const ConstMatrixRef<T>& w_ih,
                  const ConstMatrixRef<T>& w_hh, const ConstVectorRef<T>& b_ih, const ConstVectorRef<T>& b_hh,
                  Activation act, MatrixRef<T> h_new) {
    h_new.noalias() = x * w_ih.transpose();
    if (h.rows() != 0) h_new.noalias() += h * w_hh.transpose();
    if (b_ih.size() != 0) h_new.rowwise() += b_ih + b_hh;
    activate<T>(h_new, act);
}

template <class T>
void cell_backward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h, const ConstMatrixRef<T>& w_ih,
                   const ConstMatrixRef<T>& w_hh, const ConstMatrixRef<T>& h_new, const ConstMatrixRef<T>& dh_new,
                   Activation act, MatrixRef<T> dx, MatrixRef<T> dh, MatrixRef<T> dw_ih, MatrixRef<T> dw_hh,
                   VectorRef<T> db_ih, VectorRef<T> db_hh) {
    RowMatrix<T> dz = dh_new;  // [B, H]
    multiply_by_derivative<T>(dz, h_new, act);
    dx.noalias() = dz * w_ih;
    if (dh.rows() != 0) dh.noalias() = dz * w_hh;
    dw_ih.noalias() += dz.transpose() * x;
    if (h.rows() != 0) dw_hh.noalias() += dz.transpose() * h;
    if (db_ih.size() != 0) {
        RowVector<T> db = dz.colwise().sum();
        db_ih += db;
        db_hh += db;
    }
}

namespace {

// Multiply-adds below which splitting across threads costs more than it saves: a whole product, and one
// step of the recurrence (whose threads meet at a barrier every step).
constexpr double kMinProductWork = 1 << 18;
constexpr double kMinStepWork = 1 << 16;

// A thread's steps of at least this many rows multiply by W_hh packed for Eigen's GEMM kernel (StepWeights).
constexpr Index kMinPackedRows = detail::StepWeights<float>::kMinPackedRows;

// dst = lhs * rhs (or += with `add`), the rows of dst split across threads.
template <class Dst, class Lhs, class Rhs>
void rows_product(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool add) {
    const int threads = detail::threads_for(static_cast<double>(dst.rows()) * dst.cols() * lhs.cols(), kMinProductWork);
    detail::parallel(threads, [&](int k, int parts) {
        const Index r0 = detail::split(dst.rows(), k, parts, 8), r1 = detail::split(dst.rows(), k + 1, parts, 8);
        if (r1 <= r0) return;
        if (add) {
            dst.middleRows(r0, r1 - r0).noalias() += lhs.middleRows(r0, r1 - r0) * rhs;
        } else {
            dst.middleRows(r0, r1 - r0).noalias() = lhs.middleRows(r0, r1 - r0) * rhs;
        }
    });
}

// dst = lhs * rhs as rows_product, in chunks of rows between which a call can be interrupted: at most about
// kChunkWork multiply-adds per thread or kChunkElements results (what bounds a product with a short inner
// dimension), some milliseconds each. Each chunk repacks rhs, so products within those bounds stay whole.
constexpr double kChunkWork = 1 << 29, kChunkElements = 1 << 24;

template <class Dst, class Lhs, class Rhs>
void interruptible_rows_product(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool add) {
    const double cols = static_cast<double>(std::max<Index>(dst.cols(), 1));
    const double per_row = cols * static_cast<double>(std::max<Index>(lhs.cols(), 1));
    const double by_work = kChunkWork * std::max(1, detail::thread_limit()) / per_row;
    const double rows_per_chunk = std::min(by_work, kChunkElements / cols);
    const Index rows = dst.rows();
    if (rows_per_chunk >= static_cast<double>(rows)) {
        rows_product(dst, lhs, rhs, add);
        return;
    }
    const Index chunk = std::max<Index>(64, static_cast<Index>(rows_per_chunk) / 8 * 8);
    for (Index r0 = 0; r0 < rows; r0 += chunk) {
        const Index n = std::min(chunk, rows - r0);
        rows_product(dst.middleRows(r0, n), lhs.middleRows(r0, n), rhs, add);
        interruption_point(static_cast<double>(n) * per_row);
    }
}

// How the recurrence is split across threads. Items are independent of each other, so when every thread gets
// at least kMinPackedRows items, each runs its own items through all the steps and the threads never wait for
// one another. Otherwise each thread owns a band of the state's columns and all meet at every step.
struct RecurrenceSplit {
    bool by_items = false;
    std::vector<Index> item_bounds;  // by_items: thread k's item rows are [item_bounds[k], item_bounds[k + 1])

    RecurrenceSplit(const StepLayout& steps, int threads) {
        const Index items = steps.size_or_zero(0);
        by_items = threads > 1 && items >= threads * kMinPackedRows;
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

    // Thread k's item rows [first, last) and state columns [c0, c0 + width). `parts` is what the job got: the
    // threads asked for, or 1 when the pool was busy (the one part then takes everything).
    void tile(const StepLayout& steps, Index H, int k, int parts, Index& first, Index& last, Index& c0,
              Index& width) const {
        if (by_items && parts + 1 == static_cast<int>(item_bounds.size())) {
            first = item_bounds[static_cast<size_t>(k)];
            last = item_bounds[static_cast<size_t>(k) + 1];
            c0 = 0;
            width = H;
        } else {
            first = 0;
            last = steps.size_or_zero(0);
            c0 = by_items ? 0 : detail::split(H, k, parts);
            width = by_items ? H : detail::split(H, k + 1, parts) - c0;
        }
    }
};

// Thread k's band of W_hh for steps of its rows: the rows [c0, c0 + width) of W_hh for the forward's h W_hh^T
// (`columns` false), its columns for the backward's dz W_hh. Kept when it already holds them.
template <class T>
void pack_band(detail::StepWeights<T>& band, const ConstMatrixRef<T>& w_hh, bool columns, Index steps, Index first,
               Index last, Index c0, Index width) {
    if (last <= first || width <= 0) return;
    const Index H = w_hh.cols(), stride = w_hh.outerStride();
    const T* data = columns ? w_hh.data() + c0 : w_hh.data() + c0 * stride;
    if (band.holds(data, width, last - first)) return;
    if (columns) {
        band.template pack<Eigen::ColMajor>(data, stride, width, H, last - first, steps);
    } else {
        band.template pack<Eigen::RowMajor>(data, stride, width, H, last - first, steps);
    }
}

}  // namespace

template <class T>
void layer_forward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& w_ih,
                   const ConstMatrixRef<T>& w_hh, const ConstVectorRef<T>& b_ih, const ConstVectorRef<T>& b_hh,
                   Activation act, bool reverse, const StepLayout& steps, MatrixRef<T> hs) {
    const Index T_ = steps.seq_len(), H = hs.cols();
    // Input projection of every step at once; the recurrence then only adds h_{t-1} W_hh^T.
    interruptible_rows_product(hs, x, w_ih.transpose(), false);
    if (b_ih.size() != 0) hs.rowwise() += b_ih + b_hh;
    const int threads = detail::threads_for(static_cast<double>(steps.batch()) * H * H, kMinStepWork);
    const RecurrenceSplit split(steps, threads);
    const double step_work = static_cast<double>(steps.batch()) * H * H;
    detail::Barrier step_done;
    detail::FirstError error;
    detail::StepStop stop;
    detail::parallel(threads, [&](int k, int parts) {
        Index first = 0, last = 0, c0 = 0, width = 0;
        split.tile(steps, H, k, parts, first, last, c0, width);
        detail::StepWeights<T> w_band;  // the rows of W_hh for this thread's columns
        // On failure (packing allocates) the thread still meets its partners at every step, doing nothing.
        const bool ready = error.run([&] { pack_band(w_band, w_hh, false, T_, first, last, c0, width); });
        const Index ld = hs.outerStride();
        // hs rows [dst, dst + m), this thread's columns, += m states [m, H] at `src` (row stride src_ld) W_hh^T.
        auto add_recurrent = [&](const T* src, Index src_ld, Index m, Index dst) {
            w_band.multiply_add(src, src_ld, m, hs.data() + dst * ld + c0, ld);
        };
        for (Index s = 0; s < T_; ++s) {
            if (stop.before(s, k, step_work)) break;
            const Index t = reverse ? T_ - 1 - s : s;
            const Index n = steps.size(t), o = steps.offset(t);
            // This thread's rows of the step [a, b): rows [a, cont) continue from the step processed before,
            // rows [cont, b) start here from h0.
            const Index a = std::min(first, n), b = std::min(last, n);
            const Index prev = reverse ? t + 1 : t - 1;
            const Index cont = std::max(a, std::min(b, steps.size_or_zero(prev)));
            if (ready && b > a && width > 0) {
                if (cont > a) add_recurrent(hs.data() + (steps.offset(prev) + a) * ld, ld, cont - a, o + a);
                if (b > cont && h0.rows() != 0) {
                    add_recurrent(h0.data() + cont * h0.outerStride(), h0.outerStride(), b - cont, o + cont);
                }
                activate<T>(hs.block(o + a, c0, b - a, width), act);
            }
            if (!split.by_items) step_done.wait(parts);  // the next step reads every band of these rows
        }
    });
    error.rethrow();
    stop.rethrow();
}

template <class T>
void layer_backward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& h0, const ConstMatrixRef<T>& w_ih,
                    const ConstMatrixRef<T>& w_hh, const ConstMatrixRef<T>& hs, const ConstMatrixRef<T>& dhs,
                    const ConstMatrixRef<T>& dh_n, Activation act, bool reverse, const StepLayout& steps,
                    MatrixRef<T> dx, MatrixRef<T> dh0, MatrixRef<T> dw_ih, MatrixRef<T> dw_hh, VectorRef<T> db_ih,
                    VectorRef<T> db_hh, MatrixRef<T> dz) {
    const Index T_ = steps.seq_len(), H = hs.cols();
    // dh0 carries dL/dh_{t-1} backwards through time. An item's row is written for the last time at its first
    // processed step, so it ends as dL/dh0; rows of items that have not started yet still hold their dh_n.
    if (dh_n.rows() != 0) {
        dh0 = dh_n;
    } else {
        dh0.setZero();
    }
    if (T_ == 0 || steps.rows() == 0) return;
    if (dz.rows() < steps.size(0) || dz.cols() != H) {
        throw std::invalid_argument("dz: expected a workspace of at least " + std::to_string(steps.size(0)) +
                                    " rows and " + std::to_string(H) + " columns, got [" + std::to_string(dz.rows()) +
                                    ", " + std::to_string(dz.cols()) + "]");
    }
    // Previous states of a packed chunk, gathered so that its dW_hh is one product.
    RowMatrix<T> h_prev(steps.is_uniform() ? 0 : dz.rows(), H);
    const int threads = detail::threads_for(static_cast<double>(steps.batch()) * H * H, kMinStepWork);
    const RecurrenceSplit split(steps, threads);
    const double step_work = static_cast<double>(steps.batch()) * H * H;
    detail::Barrier bands_done;
    detail::FirstError error;
    // Each thread's columns of W_hh, packed in the first chunk and kept for the others.
    std::vector<detail::StepWeights<T>> w_bands(static_cast<size_t>(threads));
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
        MatrixMap<T> dzc(dz.data(), chunk_rows, H, Eigen::OuterStride<>(dz.outerStride()));
        detail::StepStop stop;
        // Split as in layer_forward. With column bands a thread computes its band of dz, then (after all bands are
        // done) its band of dz W_hh; the next step reads only the thread's own band of dh0, so one barrier per step
        // suffices. With items split, a thread has all of its rows' dz and needs no barrier.
        detail::parallel(threads, [&](int k, int parts) {
            Index first = 0, last = 0, c0 = 0, width = 0;
            split.tile(steps, H, k, parts, first, last, c0, width);
            detail::StepWeights<T>& w_band = w_bands[static_cast<size_t>(k)];  // W_hh's columns for this thread's dh
            // (A job that ran as one part, the pool being busy, has other columns and rows than the chunk before.)
            const bool ready = error.run([&] { pack_band(w_band, w_hh, true, T_, first, last, c0, width); });
            for (Index s = s_begin; s >= s_end; --s) {
                if (stop.before(s_begin - s, k, step_work)) break;
                const Index t = reverse ? T_ - 1 - s : s;
                const Index n = steps.size(t), o = steps.offset(t), oc = o - base;
                const Index a = std::min(first, n), m = std::min(last, n) - a;  // this thread's rows [a, a + m)
                if (ready && m > 0 && width > 0) {
                    if (dhs.rows() != 0) {
                        dzc.block(oc + a, c0, m, width) = dh0.block(a, c0, m, width) + dhs.block(o + a, c0, m, width);
                    } else {
                        dzc.block(oc + a, c0, m, width) = dh0.block(a, c0, m, width);
                    }
                    multiply_by_derivative<T>(dzc.block(oc + a, c0, m, width), hs.block(o + a, c0, m, width), act);
                }
                if (!split.by_items) bands_done.wait(parts);
                if (ready && m > 0 && width > 0) {
                    dh0.block(a, c0, m, width).setZero();
                    w_band.multiply_add(dzc.data() + (oc + a) * dzc.outerStride(), dzc.outerStride(), m,
                                        dh0.data() + a * dh0.outerStride() + c0, dh0.outerStride());
                }
            }
        });
        error.rethrow();
        stop.rethrow();

        rows_product(dw_ih, dzc.transpose(), x.middleRows(base, chunk_rows), true);
        if (dx.rows() != 0) rows_product(dx.middleRows(base, chunk_rows), dzc, w_ih, true);
        if (db_ih.size() != 0) {
            RowVector<T> db = dzc.colwise().sum();
            db_ih += db;
            db_hh += db;
        }
        // dW_hh pairs each step's dz with the state before it: h0 where an item starts, hs elsewhere.
        if (steps.is_uniform()) {
            const Index B = steps.batch();
            // The sequence's first processed step (t = 0 forward, T_-1 reverse) starts from h0.
            const Index first = reverse ? T_ - 1 : 0;
            const bool has_first = t_lo <= first && first <= t_hi;
            const Index rest = chunk_rows - (has_first ? B : 0);
            if (has_first && h0.rows() != 0) {
                dw_hh.noalias() += dzc.middleRows(steps.offset(first) - base, B).transpose() * h0;
            }
            if (rest > 0) {
                // Rows of the steps other than `first`, and the states one step earlier in processing order.
                const Index dz_row = reverse ? 0 : (has_first ? B : 0);
                const Index h_row = reverse ? base + B : base + dz_row - B;
                rows_product(dw_hh, dzc.middleRows(dz_row, rest).transpose(), hs.middleRows(h_row, rest), true);
            }
        } else {
            for (Index t = t_lo; t <= t_hi; ++t) {
                const Index n = steps.size(t), oc = steps.offset(t) - base;
                const Index prev = reverse ? t + 1 : t - 1;
                const Index cont = std::min(n, steps.size_or_zero(prev));
                if (cont > 0) h_prev.middleRows(oc, cont) = hs.middleRows(steps.offset(prev), cont);
                if (cont < n) {
                    if (h0.rows() != 0) {
                        h_prev.middleRows(oc + cont, n - cont) = h0.middleRows(cont, n - cont);
                    } else {
                        h_prev.middleRows(oc + cont, n - cont).setZero();
                    }
                }
            }
            rows_product(dw_hh, dzc.transpose(), h_prev.topRows(chunk_rows), true);
        }
    }
}

#define RNNFAST_INSTANTIATE(T)                                                                                  \
    template void cell_forward<T>(const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&,   \
                                  const ConstMatrixRef<T>&, const ConstVectorRef<T>&, const ConstVectorRef<T>&,   \
                                  Activation, MatrixRef<T>);                                                     \
    template void cell_backward<T>(const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&,  \
                                   const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&,  \
                                   Activation, MatrixRef<T>, MatrixRef<T>, MatrixRef<T>, MatrixRef<T>,            \
                                   VectorRef<T>, VectorRef<T>);                                                  \
    template void layer_forward<T>(const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&,  \
                                   const ConstMatrixRef<T>&, const ConstVectorRef<T>&, const ConstVectorRef<T>&,  \
                                   Activation, bool, const StepLayout&, MatrixRef<T>);                           \
    template void layer_backward<T>(const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, \
                                    const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, const ConstMatrixRef<T>&, \
                                    const ConstMatrixRef<T>&, Activation, bool, const StepLayout&, MatrixRef<T>,  \
                                    MatrixRef<T>, MatrixRef<T>, MatrixRef<T>, VectorRef<T>, VectorRef<T>,         \
                                    MatrixRef<T>);

RNNFAST_INSTANTIATE(float)
RNNFAST_INSTANTIATE(double)
#undef RNNFAST_INSTANTIATE

}  // namespace rnnfast

namespace rnnfast {

StepLayout StepLayout::uniform(Index seq_len, Index batch) {
    if (seq_len < 0 || batch < 0) throw std::invalid_argument("StepLayout: negative size");
    return packed(std::vector<Index>(static_cast<size_t>(seq_len), batch));
}

StepLayout StepLayout::packed(std::vector<Index> sizes) {
    StepLayout layout;
    layout.offsets_.resize(sizes.size());
    Index offset = 0;
    for (size_t t = 0; t < sizes.size(); ++t) {
        if (sizes[t] < 0 || (t > 0 && sizes[t] > sizes[t - 1])) {
            throw std::invalid_argument("StepLayout: step sizes must be non-negative and non-increasing");
        }
        layout.uniform_ = layout.uniform_ && sizes[t] == sizes[0];
        layout.offsets_[t] = offset;
        offset += sizes[t];
    }
    layout.rows_ = offset;
    layout.sizes_ = std::move(sizes);
    return layout;
}

}  // namespace rnnfast
