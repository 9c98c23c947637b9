// Bindings of the single-step kernels: CellF32 / CellF64.
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>

#include "arrays.hpp"
#include "rnnfast/elman.hpp"
#include "rnnfast/stack.hpp"

namespace rnnfast::bindings {
namespace {

// What cell backward needs from one forward: copies, so callers may reuse their arrays.
template <class T>
struct CellCache {
    RowMatrix<T> x;      // [B, I]
    RowMatrix<T> h;      // [B, H], or 0 rows when the state was zeros
    RowMatrix<T> h_new;  // [B, H]
};

template <class T>
class CellKernel {
public:
    CellKernel(Index input_size, Index hidden_size, bool bias, const std::string& nonlinearity) {
        cfg_.input_size = input_size;
        cfg_.hidden_size = hidden_size;
        cfg_.bias = bias;
        cfg_.activation = parse_activation(nonlinearity);
        // A cell's parameters are those of a one-layer stack, named without the "_l0" suffix.
        for (ParamSpec& p : param_layout(cfg_)) {
            p.name.erase(p.name.size() - 3);
            layout_.push_back(p);
        }
        param_count_ = param_count(cfg_);
    }

    py::list layout() const { return layout_list(layout_); }

    Index param_count_value() const { return param_count_; }

    // params [P], x [B, I], h [B, H] or None -> (h_new [B, H], cache or None)
    py::tuple forward(const Array<T>& params, const Array<T>& x, const std::optional<Array<T>>& h,
                      bool want_cache) const {
        const Index I = cfg_.input_size, H = cfg_.hidden_size;
        expect_shape("params", params, {param_count_});
        if (x.ndim() != 2 || x.shape(1) != I) {
            throw std::invalid_argument("x: expected shape (B, " + std::to_string(I) + "), got " + shape_string(x));
        }
        const Index B = x.shape(0);
        if (h) expect_shape("h", *h, {B, H});
        Array<T> h_new = aligned_array<T>("h_new", {B, H});
        std::unique_ptr<CellCache<T>> cache = want_cache ? std::make_unique<CellCache<T>>() : nullptr;
        const Weights w = weights(params.data());
        const ConstMatrixMap<T> x_m = as_matrix<T>(x, I);
        const ConstMatrixMap<T> h_m = as_matrix_or_empty<T>(h, H);
        MatrixMap<T> h_new_m = as_mutable_matrix<T>(h_new, H);
        without_gil([&] {
            cell_forward<T>(x_m, h_m, w.w_ih, w.w_hh, w.b_ih, w.b_hh, cfg_.activation, h_new_m);
            if (cache) {
                cache->x = x_m;
                cache->h = h_m;
                cache->h_new = h_new_m;
            }
        });
        if (!cache) return py::make_tuple(std::move(h_new), py::none());
        return py::make_tuple(std::move(h_new), py::cast(std::move(cache)));
    }

    // params [P], x [B, I] (B >= 1), h [B, H] or None -> h_new [B, H], or None when x or h is not an array the
    // kernel takes as it is (plain_array): the caller then takes its general path. forward without a cache, for
    // callers stepping a cell in a Python loop, its checks in C++.
    py::object step(const Array<T>& params, py::handle x, py::handle h) const {
        const Index I = cfg_.input_size, H = cfg_.hidden_size;
        expect_shape("params", params, {param_count_});
        const Index B = ndarray_dim(x, 2, 0);
        if (B < 1) return py::none();
        const std::optional<Array<T>> x_a = plain_array<T>(x, {B, I});
        std::optional<Array<T>> h_a;
        if (!h.is_none()) h_a = plain_array<T>(h, {B, H});
        if (!x_a || (!h.is_none() && !h_a)) return py::none();
        return forward(params, *x_a, h_a, false)[0];
    }

    // dh_new [B, H]; grads [P] or None -> (grad_x [B, I], grad_h [B, H], this call's parameter gradients [P] or
    // None when they were added into grads). As the stack's backward: grads changes only once all succeeded.
    py::tuple backward(const Array<T>& params, const CellCache<T>& cache, const Array<T>& dh_new,
                       std::optional<Array<T>> grads) {
        const Index I = cfg_.input_size, H = cfg_.hidden_size;
        expect_shape("params", params, {param_count_});
        if (grads) {
            expect_shape("grads", *grads, {param_count_});
            grads->mutable_data();  // throws here, with the GIL, if grads is read-only
        }
        if (cache.x.cols() != I || cache.h_new.cols() != H) {
            throw std::invalid_argument("cache: it was made by a cell of another configuration");
        }
        const Index B = cache.x.rows();
        expect_shape("grad_h_new", dh_new, {B, H});

        Array<T> d_x = aligned_array<T>("grad_x", {B, I});
        Array<T> d_h = aligned_array<T>("grad_h", {B, H});
        Array<T> own = aligned_array<T>("grads", {param_count_});
        T* g = own.mutable_data();
        const Index count = param_count_;
        const Weights w = weights(params.data());
        const ConstMatrixMap<T> dh_new_m = as_matrix<T>(dh_new, H);
        MatrixMap<T> d_x_m = as_mutable_matrix<T>(d_x, I);
        MatrixMap<T> d_h_m = as_mutable_matrix<T>(d_h, H);
        without_gil([&] {
            std::fill(g, g + count, T(0));
            const Index bias_size = cfg_.bias ? H : 0;
            const Index b_ih = layout_[1].offset + H * H;
            cell_backward<T>(cache.x, cache.h, w.w_ih, w.w_hh, cache.h_new, dh_new_m, cfg_.activation, d_x_m, d_h_m,
                             MatrixMap<T>(g + layout_[0].offset, H, I, Eigen::OuterStride<>(I)),
                             MatrixMap<T>(g + layout_[1].offset, H, H, Eigen::OuterStride<>(H)),
                             Eigen::Map<RowVector<T>>(g + b_ih, bias_size),
                             Eigen::Map<RowVector<T>>(g + b_ih + bias_size, bias_size));
        });
        if (!grads) return py::make_tuple(std::move(d_x), std::move(d_h), std::move(own));
        T* into = grads->mutable_data();
        for (Index i = 0; i < count; ++i) into[i] += g[i];
        return py::make_tuple(std::move(d_x), std::move(d_h), py::none());
    }

private:
    struct Weights {
        ConstMatrixMap<T> w_ih, w_hh;
        Eigen::Map<const RowVector<T>> b_ih, b_hh;
    };
    Weights weights(const T* params) const {
        const Index I = cfg_.input_size, H = cfg_.hidden_size, bias_size = cfg_.bias ? H : 0;
        const T* w_hh = params + layout_[1].offset;
        return Weights{ConstMatrixMap<T>(params + layout_[0].offset, H, I, Eigen::OuterStride<>(I)),
                       ConstMatrixMap<T>(w_hh, H, H, Eigen::OuterStride<>(H)),
                       Eigen::Map<const RowVector<T>>(w_hh + H * H, bias_size),
                       Eigen::Map<const RowVector<T>>(w_hh + H * H + bias_size, bias_size)};
    }

    StackConfig cfg_;
    std::vector<ParamSpec> layout_;
    Index param_count_ = 0;
};

template <class T>
void register_cell_for(py::module_& m) {
    py::class_<CellCache<T>>(m, (std::string("CellCache") + dtype_suffix<T>()).c_str(), py::module_local(),
                             "What backward needs from one cell step (opaque).");
    py::class_<CellKernel<T>>(m, (std::string("Cell") + dtype_suffix<T>()).c_str(), py::module_local(), "Elman RNN cell kernels.")
        .def(py::init<Index, Index, bool, const std::string&>(), py::arg("input_size"), py::arg("hidden_size"),
             py::arg("bias"), py::arg("nonlinearity"))
        .def("param_layout", &CellKernel<T>::layout, "List of (name, offset, shape) in PyTorch's order.")
        .def_property_readonly("param_count", &CellKernel<T>::param_count_value)
        .def("forward", &CellKernel<T>::forward, py::arg("params").noconvert(), py::arg("x").noconvert(),
             py::arg("h").noconvert().none(true), py::arg("want_cache"))
        .def("step", &CellKernel<T>::step, py::arg("params").noconvert(), py::arg("x"), py::arg("h").none(true))
        .def("backward", &CellKernel<T>::backward, py::arg("params").noconvert(), py::arg("cache"),
             py::arg("grad_h_new").noconvert(), py::arg("grads").noconvert().none(true));
}

}  // namespace

void register_cell(py::module_& m) {
    register_cell_for<float>(m);
    register_cell_for<double>(m);
}

}  // namespace rnnfast::bindings
