// Bindings of the stacked RNN driver: StackF32 / StackF64 and their caches.
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>

#include "arrays.hpp"
#include "rnnfast/checksum.hpp"
#include "rnnfast/stack.hpp"

namespace rnnfast::bindings {
namespace {

// An array a borrowing cache refers to: kept alive, and checked unchanged before backward reads it. The checksum
// covers every byte, so any in-place change is noticed (PyTorch's version counter does the same for tensors).
template <class T>
class BorrowedArray {
public:
    // With the GIL: keep a reference.
    void keep(const Array<T>& array) {
        array_ = array;
        data_ = array.data();
        bytes_ = static_cast<size_t>(array.size()) * sizeof(T);
    }
    // Without the GIL, after the forward filled it.
    void seal() {
        if (data_ != nullptr) sum_ = checksum(data_, bytes_);
    }
    // Without the GIL: throws std::invalid_argument naming the array when it was changed since seal().
    void check_unchanged(const char* name) const {
        if (data_ != nullptr && checksum(data_, bytes_) != sum_) {
            throw std::invalid_argument(std::string(name) + ": it was modified in place after the forward that made "
                                        "this cache, which refers to it; backward needs the values forward saw "
                                        "(modify a copy)");
        }
    }

private:
    py::object array_;
    const T* data_ = nullptr;
    size_t bytes_ = 0;
    std::uint64_t sum_ = 0;
};

// The storage of the last cache a model's kernel let go of, for its next forward that keeps a cache. A training
// step's cache is tens of megabytes; the allocator may return memory that large to the system when it is freed
// (always above 32 MB: glibc maps each such block afresh), and fresh memory faults in 4 KiB at a time on first touch
// (LSTM T100 B64 H512: 14,500 page faults per training step; LSTM T50 B32 H128, 2 layers, bidirectional, caches
// dropped without backward: 5,900 per forward, 13 ms of 33). A forward that keeps no cache frees it: a model that
// has gone on to inference holds no training memory.
template <class T>
class SpareCache {
public:
    // With the GIL (a cache's destructor): keep `core`'s storage, freeing the one kept before (after unlocking).
    void keep(StackCache<T>&& core) {
        std::optional<StackCache<T>> old;
        const std::lock_guard<std::mutex> lock(mutex_);
        old.swap(kept_);
        kept_.emplace(std::move(core));
    }
    // The kept storage moved into `core`, when there is one.
    void take(StackCache<T>& core) {
        std::optional<StackCache<T>> kept = release();
        if (kept) core = std::move(*kept);
    }
    // Frees the kept storage, if any.
    void drop() { release(); }
    size_t bytes() const {
        const std::lock_guard<std::mutex> lock(mutex_);
        return kept_ ? kept_->storage_bytes() : 0;
    }

private:
    std::optional<StackCache<T>> release() {
        std::optional<StackCache<T>> out;
        const std::lock_guard<std::mutex> lock(mutex_);
        out.swap(kept_);
        return out;
    }

    mutable std::mutex mutex_;
    std::optional<StackCache<T>> kept_;
};

// The cache handed to Python: the core's cache and, when it borrows, the arrays it refers to. When Python lets go
// of it (backward released it, or its last reference went), its storage goes to the kernel's spare.
template <class T>
struct StackCacheBox {
    StackCache<T> core;
    BorrowedArray<T> x, output;
    std::weak_ptr<SpareCache<T>> spare;

    StackCacheBox() = default;
    StackCacheBox(const StackCacheBox&) = delete;
    StackCacheBox& operator=(const StackCacheBox&) = delete;
    ~StackCacheBox() {
        if (const std::shared_ptr<SpareCache<T>> to = spare.lock()) {
            try {
                to->keep(std::move(core));
            } catch (...) {  // a failed lock: the storage is freed with the box instead
            }
        }
    }
};

template <class T>
class StackKernel {
public:
    StackKernel(Index input_size, Index hidden_size, Index num_layers, bool bidirectional, bool bias,
                const std::string& nonlinearity, const std::string& cell, Index proj_size) {
        cfg_.input_size = input_size;
        cfg_.hidden_size = hidden_size;
        cfg_.num_layers = num_layers;
        cfg_.bidirectional = bidirectional;
        cfg_.bias = bias;
        cfg_.activation = parse_activation(nonlinearity);
        cfg_.cell = parse_cell(cell);
        cfg_.proj_size = proj_size;
        param_count_ = param_count(cfg_);
    }

    py::list layout() const { return layout_list(param_layout(cfg_)); }

    Index param_count_value() const { return param_count_; }

    // params [N], x [T, B, I], h0 [L*D, B, P] or None, masks [L-1, T, B, D*P] or None, lengths [B] or None,
    // c0 [L*D, B, H] or None (LSTM) -> (output [T, B, D*P], h_n [L*D, B, P], c_n [L*D, B, H] or None, cache or None)
    // With `borrow` (and no lengths) the cache refers to x and the output instead of copying them.
    py::tuple forward(const Array<T>& params, const Array<T>& x, const std::optional<Array<T>>& h0,
                      const std::optional<Array<T>>& masks, const std::optional<Array<int64_t>>& lengths,
                      bool want_cache, const std::optional<Array<T>>& c0, bool borrow_inputs) const {
        const Index L = cfg_.num_layers, LD = L * cfg_.directions(), H = cfg_.hidden_size, P = cfg_.state_size();
        const Index DP = cfg_.output_size();
        const bool cell_state = cfg_.has_cell_state();
        expect_shape("params", params, {param_count_});
        if (x.ndim() != 3 || x.shape(2) != cfg_.input_size || x.shape(0) < 1) {
            throw std::invalid_argument("x: expected shape (T >= 1, B, " + std::to_string(cfg_.input_size) +
                                        "), got " + shape_string(x));
        }
        const Index seq_len = x.shape(0), B = x.shape(1);
        if (h0) expect_shape("h0", *h0, {LD, B, P});
        if (c0 && !cell_state) throw std::invalid_argument("c0: only an LSTM has a cell state");
        if (c0) expect_shape("c0", *c0, {LD, B, H});
        if (masks) expect_shape("masks", *masks, {L - 1, seq_len, B, DP});
        std::vector<Index> lens;
        if (lengths) {
            expect_shape("lengths", *lengths, {B});
            lens.assign(lengths->data(), lengths->data() + B);
        }

        Array<T> output = aligned_array<T>("output", {seq_len, B, DP});
        Array<T> h_n = aligned_array<T>("h_n", {LD, B, P});
        Array<T> c_n = cell_state ? aligned_array<T>("c_n", {LD, B, H}) : Array<T>();
        std::unique_ptr<StackCacheBox<T>> cache = want_cache ? std::make_unique<StackCacheBox<T>>() : nullptr;
        if (cache) {
            spare_->take(cache->core);
            cache->spare = spare_;
        } else {
            spare_->drop();
        }
        // A full-length batch's cache refers to x and the output instead of copying them.
        const bool borrow = want_cache && borrow_inputs && lens.empty();
        if (cache) cache->core.borrow = borrow;
        const ConstMatrixMap<T> x_m = as_matrix<T>(x, cfg_.input_size);
        const ConstMatrixMap<T> h0_m = as_matrix_or_empty<T>(h0, P);
        const ConstMatrixMap<T> c0_m = as_matrix_or_empty<T>(c0, H);
        const ConstMatrixMap<T> masks_m = as_matrix_or_empty<T>(masks, DP);
        MatrixMap<T> output_m = as_mutable_matrix<T>(output, DP);
        MatrixMap<T> h_n_m = as_mutable_matrix<T>(h_n, P);
        MatrixMap<T> c_n_m = cell_state ? as_mutable_matrix<T>(c_n, H) : MatrixMap<T>(nullptr, 0, H, Eigen::OuterStride<>(H));
        if (borrow) {  // a full-length batch's cache refers to both (see StackCache::borrow)
            cache->x.keep(x);
            cache->output.keep(output);
        }
        without_gil([&] {
            stack_forward<T>(cfg_, params.data(), x_m, seq_len, lens, h0_m, c0_m, masks_m, output_m, h_n_m, c_n_m,
                             cache ? &cache->core : nullptr);
            if (borrow) {
                cache->x.seal();
                cache->output.seal();
            }
        });
        py::object c_n_out = cell_state ? py::object(std::move(c_n)) : py::object(py::none());
        py::object cache_out = cache ? py::cast(std::move(cache)) : py::object(py::none());
        return py::make_tuple(std::move(output), std::move(h_n), std::move(c_n_out), std::move(cache_out));
    }

    // A model's common call: forward of x [T, B, I] (T, B >= 1) from zero states, no cache -> (output, h_n, c_n or
    // None), or None when x is not an array the kernel takes as it is (plain_array): the caller then takes its
    // general path, which converts or raises. The check in C++, as step's.
    py::object call(const Array<T>& params, py::handle x) const {
        const Index seq_len = ndarray_dim(x, 3, 0), B = ndarray_dim(x, 3, 1);
        if (seq_len < 1 || B < 1) return py::none();
        const std::optional<Array<T>> x_a = plain_array<T>(x, {seq_len, B, cfg_.input_size});
        if (!x_a) return py::none();
        return forward(params, *x_a, std::nullopt, std::nullopt, std::nullopt, false, std::nullopt, false);
    }

    // One step of a one-layer, one-direction kernel (a cell), no cache, for callers stepping cells in a Python loop:
    // params [N], x [B, I] (B >= 1), h [B, P] or None, c [B, H] or None (LSTM) -> (h_new [B, P], c_new [B, H] or
    // None), or None when any of x, h, c is not an array the kernel takes as it is (plain_array): the caller then
    // takes its general path, which converts or raises. What forward computes for T = 1, without forward's [1, B, ...]
    // views to make on the way in and out, its checks in Python, and one of its arrays (a step's output is its
    // final state).
    py::object step(const Array<T>& params, py::handle x, py::handle h, py::handle c) const {
        if (cfg_.num_layers != 1 || cfg_.directions() != 1) {
            throw std::invalid_argument("step: only a one-layer, one-direction kernel (a cell) steps; this one has " +
                                        std::to_string(cfg_.num_layers) + " layer(s) and " +
                                        std::to_string(cfg_.directions()) + " direction(s)");
        }
        const Index I = cfg_.input_size, H = cfg_.hidden_size, P = cfg_.state_size();
        const bool cell_state = cfg_.has_cell_state();
        expect_shape("params", params, {param_count_});
        const Index B = ndarray_dim(x, 2, 0);
        if (B < 1 || (!c.is_none() && !cell_state)) return py::none();
        const std::optional<Array<T>> x_a = plain_array<T>(x, {B, I});
        std::optional<Array<T>> h_a, c_a;
        if (!h.is_none()) h_a = plain_array<T>(h, {B, P});
        if (!c.is_none()) c_a = plain_array<T>(c, {B, H});
        if (!x_a || (!h.is_none() && !h_a) || (!c.is_none() && !c_a)) return py::none();
        Array<T> h_new = aligned_array<T>("h_new", {B, P});
        Array<T> c_new = cell_state ? aligned_array<T>("c_new", {B, H}) : Array<T>();
        spare_->drop();  // as a forward that keeps no cache
        const ConstMatrixMap<T> x_m = as_matrix<T>(*x_a, I);
        const ConstMatrixMap<T> h_m = as_matrix_or_empty<T>(h_a, P);
        const ConstMatrixMap<T> c_m = as_matrix_or_empty<T>(c_a, H);
        MatrixMap<T> h_new_m = as_mutable_matrix<T>(h_new, P);
        MatrixMap<T> c_new_m = cell_state ? as_mutable_matrix<T>(c_new, H) : MatrixMap<T>(nullptr, 0, H, Eigen::OuterStride<>(H));
        RowMatrix<T> h_n(B, P);  // the stack's final state: h_new again
        const RowMatrix<T> no_masks(0, P);
        without_gil([&] {
            stack_forward<T>(cfg_, params.data(), x_m, 1, {}, h_m, c_m, no_masks, h_new_m, h_n, c_new_m, nullptr);
        });
        py::object c_new_out = cell_state ? py::object(std::move(c_new)) : py::object(py::none());
        return py::make_tuple(std::move(h_new), std::move(c_new_out));
    }

    // d_output [T, B, D*P] or None; d_h_n [L*D, B, P] or None; grads [N] or None; d_c_n [L*D, B, H] or None (LSTM)
    // -> (grad_x [T, B, I] or None when not want_dx, grad_h0 [L*D, B, P], grad_c0 [L*D, B, H] or None, this call's
    //     parameter gradients [N] or None when they were added into grads)
    // The gradients are computed into a buffer of the call's own and added into grads (with the GIL, so
    // concurrent backwards add one after the other) only once everything succeeded: an error or an interrupt
    // leaves grads as it was.
    py::tuple backward(const Array<T>& params, const StackCacheBox<T>& box, const std::optional<Array<T>>& d_output,
                       const std::optional<Array<T>>& d_h_n, std::optional<Array<T>> grads, bool want_dx,
                       const std::optional<Array<T>>& d_c_n) {
        const StackCache<T>& cache = box.core;
        const Index LD = cfg_.num_layers * cfg_.directions(), H = cfg_.hidden_size, P = cfg_.state_size();
        const Index DP = cfg_.output_size();
        const bool cell_state = cfg_.has_cell_state();
        expect_shape("params", params, {param_count_});
        if (grads) {
            expect_shape("grads", *grads, {param_count_});
            grads->mutable_data();  // throws here, with the GIL, if grads is read-only
        }
        const Index seq_len = cache.packing.seq_len, B = cache.packing.batch;
        if (static_cast<Index>(cache.ys.size()) != cfg_.num_layers || cache.input_size != cfg_.input_size ||
            cache.output_size != DP) {
            throw std::invalid_argument("cache: it was made by a model of another configuration");
        }
        if (!d_output && !d_h_n && !d_c_n) {
            throw std::invalid_argument("grad_output, grad_h_n: expected at least one, got None for both");
        }
        if (d_c_n && !cell_state) throw std::invalid_argument("grad_c_n: only an LSTM has a cell state");
        if (d_output) expect_shape("grad_output", *d_output, {seq_len, B, DP});
        if (d_h_n) expect_shape("grad_h_n", *d_h_n, {LD, B, P});
        if (d_c_n) expect_shape("grad_c_n", *d_c_n, {LD, B, H});

        Array<T> d_x = want_dx ? aligned_array<T>("grad_input", {seq_len, B, cfg_.input_size}) : Array<T>();
        Array<T> d_h0 = aligned_array<T>("grad_h0", {LD, B, P});
        Array<T> d_c0 = cell_state ? aligned_array<T>("grad_c0", {LD, B, H}) : Array<T>();
        Array<T> own = aligned_array<T>("grads", {param_count_});
        T* own_data = own.mutable_data();
        const ConstMatrixMap<T> d_output_m = as_matrix_or_empty<T>(d_output, DP);
        const ConstMatrixMap<T> d_h_n_m = as_matrix_or_empty<T>(d_h_n, P);
        const ConstMatrixMap<T> d_c_n_m = as_matrix_or_empty<T>(d_c_n, H);
        MatrixMap<T> d_x_m = want_dx ? as_mutable_matrix<T>(d_x, cfg_.input_size)
                                     : MatrixMap<T>(nullptr, 0, cfg_.input_size, Eigen::OuterStride<>(cfg_.input_size));
        MatrixMap<T> d_h0_m = as_mutable_matrix<T>(d_h0, P);
        MatrixMap<T> d_c0_m = cell_state ? as_mutable_matrix<T>(d_c0, H) : MatrixMap<T>(nullptr, 0, H, Eigen::OuterStride<>(H));
        const Index count = param_count_;
        without_gil([&] {
            box.x.check_unchanged("x");
            box.output.check_unchanged("output");
            std::fill(own_data, own_data + count, T(0));
            stack_backward<T>(cfg_, params.data(), cache, d_output_m, d_h_n_m, d_c_n_m, d_x_m, d_h0_m, d_c0_m, own_data);
        });
        py::object d_x_out = want_dx ? py::object(std::move(d_x)) : py::object(py::none());
        py::object d_c0_out = cell_state ? py::object(std::move(d_c0)) : py::object(py::none());
        if (!grads) return py::make_tuple(std::move(d_x_out), std::move(d_h0), std::move(d_c0_out), std::move(own));
        T* g = grads->mutable_data();
        for (Index i = 0; i < count; ++i) g[i] += own_data[i];
        return py::make_tuple(std::move(d_x_out), std::move(d_h0), std::move(d_c0_out), py::none());
    }

    size_t spare_bytes() const { return spare_->bytes(); }

private:
    StackConfig cfg_;
    Index param_count_ = 0;
    std::shared_ptr<SpareCache<T>> spare_ = std::make_shared<SpareCache<T>>();
};

template <class T>
void register_stack_for(py::module_& m) {
    const std::string suffix = dtype_suffix<T>();
    py::class_<StackCacheBox<T>>(m, ("StackCache" + suffix).c_str(), py::module_local(),
                                 "What backward needs from one forward of a stacked RNN (opaque).")
        .def_property_readonly("seq_len", [](const StackCacheBox<T>& c) { return c.core.packing.seq_len; })
        .def_property_readonly("batch", [](const StackCacheBox<T>& c) { return c.core.packing.batch; })
        .def_property_readonly("borrows", [](const StackCacheBox<T>& c) { return c.core.x_data != nullptr; },
                               "Whether it refers to x and the output instead of holding copies.");

    py::class_<StackKernel<T>>(m, ("Stack" + suffix).c_str(), py::module_local(), "Stacked, optionally bidirectional recurrent kernels (Elman, LSTM, GRU).")
        .def(py::init<Index, Index, Index, bool, bool, const std::string&, const std::string&, Index>(),
             py::arg("input_size"), py::arg("hidden_size"), py::arg("num_layers"), py::arg("bidirectional"),
             py::arg("bias"), py::arg("nonlinearity"), py::arg("cell") = "rnn", py::arg("proj_size") = 0)
        .def("param_layout", &StackKernel<T>::layout, "List of (name, offset, shape) in PyTorch's order.")
        .def_property_readonly("param_count", &StackKernel<T>::param_count_value)
        .def_property_readonly("spare_bytes", &StackKernel<T>::spare_bytes,
                               "Bytes of the storage kept from the last released cache for the next forward that "
                               "keeps one (0 after a forward that keeps none).")
        .def("forward", &StackKernel<T>::forward, py::arg("params").noconvert(), py::arg("x").noconvert(),
             py::arg("h0").noconvert().none(true), py::arg("masks").noconvert().none(true),
             py::arg("lengths").noconvert().none(true), py::arg("want_cache"),
             py::arg("c0").noconvert().none(true) = py::none(), py::arg("borrow") = true)
        .def("call", &StackKernel<T>::call, py::arg("params").noconvert(), py::arg("x"))
        .def("step", &StackKernel<T>::step, py::arg("params").noconvert(), py::arg("x"), py::arg("h").none(true),
             py::arg("c").none(true) = py::none())
        .def("backward", &StackKernel<T>::backward, py::arg("params").noconvert(), py::arg("cache"),
             py::arg("grad_output").noconvert().none(true), py::arg("grad_h_n").noconvert().none(true),
             py::arg("grads").noconvert().none(true), py::arg("want_dx") = true,
             py::arg("grad_c_n").noconvert().none(true) = py::none());
}

}  // namespace

void register_stack(py::module_& m) {
    register_stack_for<float>(m);
    register_stack_for<double>(m);
}

}  // namespace rnnfast::bindings
