// Aligned scratch vectors whose new elements are left uninitialized: what they hold is always written before it is
// read (packed weights, packing buffers, workspaces), and zeroing megabytes first cost a memset per call.
#pragma once

#include <Eigen/Core>

#include <new>
#include <utility>
#include <vector>

namespace rnnfast::detail {

template <class T>
struct UninitializedAllocator : Eigen::aligned_allocator<T> {
    using value_type = T;
    template <class U>
    struct rebind {
        using other = UninitializedAllocator<U>;
    };
    UninitializedAllocator() = default;
    template <class U>
    UninitializedAllocator(const UninitializedAllocator<U>&) noexcept {}

    template <class U>
    void construct(U* p) noexcept(noexcept(::new (static_cast<void*>(p)) U)) {
        ::new (static_cast<void*>(p)) U;  // default-initialized: indeterminate for arithmetic types
    }
    template <class U, class... Args>
    void construct(U* p, Args&&... args) {
        ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
    }
};

template <class T, class U>
bool operator==(const UninitializedAllocator<T>&, const UninitializedAllocator<U>&) noexcept {
    return true;
}
template <class T, class U>
bool operator!=(const UninitializedAllocator<T>&, const UninitializedAllocator<U>&) noexcept {
    return false;
}

template <class T>
using Buffer = std::vector<T, UninitializedAllocator<T>>;

}  // namespace rnnfast::detail
