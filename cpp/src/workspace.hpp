// Workspaces that persist per calling thread between calls. A workspace of a megabyte or more, allocated and freed
// on every call, goes back to the system each time (glibc returns such blocks), and the next call faults every
// page of it in again: for a mid-sized layer that was a tenth of a backward's time. Blocks up to
// kMaxKeptWorkspaceBytes are kept, per thread and slot, for the next call; larger ones live for one call only.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <vector>

#include "buffer.hpp"
#include "rnnfast/types.hpp"

namespace rnnfast::detail {

// The slots: each names one use, so that the workspaces a call holds at once never share memory.
enum class WorkspaceSlot : int { forward_gates, forward_aux, forward_ping, forward_pong, backward_dz, backward_dzh };
constexpr int kWorkspaceSlots = 6;
constexpr double kMaxKeptWorkspaceBytes = 32 << 20;

// (Internal linkage, as gemm.hpp's packing buffers: each module keeps its own.)
namespace {

// This thread's kept blocks and whether each slot is in use.
template <class T>
struct KeptWorkspaces {
    Buffer<T> blocks[kWorkspaceSlots];
    bool busy[kWorkspaceSlots] = {};
};

template <class T>
KeptWorkspaces<T>& kept_workspaces() {
    thread_local KeptWorkspaces<T> kept;
    return kept;
}

}  // namespace

// A row stride for `cols` values that does not map every row to the same few L1 sets: rows of a multiple of 512
// bytes get a cache line more. (Eigen packs a row-major right-hand side by walking a few columns down hundreds of
// rows; at a 2 KB stride those rows share 2 of L1's 64 sets. Packing dz for the weight gradients took 14% of an
// LSTM T50 B16 H128 backward at that stride, 10% padded; the training step 1.09x.)
template <class T>
Index padded_stride(Index cols) {
    const Index bytes = cols * static_cast<Index>(sizeof(T));
    return cols > 0 && bytes % 512 == 0 ? cols + 64 / static_cast<Index>(sizeof(T)) : cols;
}

// A [rows, cols] row-major workspace, uninitialized, for the duration of the object; `padded`: rows padded_stride
// apart (else cols).
template <class T>
class Workspace {
public:
    Workspace(WorkspaceSlot slot, Index rows, Index cols, bool padded = false)
        : rows_(rows), cols_(cols), stride_(std::max<Index>(padded ? padded_stride<T>(cols) : cols, 1)) {
        const Index size = rows * stride_;
        KeptWorkspaces<T>& kept = kept_workspaces<T>();
        const int s = static_cast<int>(slot);
        // (A slot already in use on this thread gets a block of its own: the two must not share memory.)
        if (static_cast<double>(size) * sizeof(T) <= kMaxKeptWorkspaceBytes && !kept.busy[s]) {
            Buffer& buffer = kept.blocks[s];
            if (static_cast<Index>(buffer.size()) < size) {
                buffer = Buffer();  // free the old block before the new one is made
                buffer.resize(static_cast<size_t>(size));
            }
            data_ = buffer.data();
            busy_ = &kept.busy[s];
            *busy_ = true;
        } else {
            own_.resize(static_cast<size_t>(size));
            data_ = own_.data();
        }
    }

    ~Workspace() {
        if (busy_ != nullptr) *busy_ = false;
    }

    MatrixMap<T> matrix() { return MatrixMap<T>(data_, rows_, cols_, Eigen::OuterStride<>(stride_)); }
    // Rows [first, first + rows).
    MatrixMap<T> rows(Index first, Index rows) {
        return MatrixMap<T>(data_ + first * stride_, rows, cols_, Eigen::OuterStride<>(stride_));
    }

    Workspace(const Workspace&) = delete;
    Workspace& operator=(const Workspace&) = delete;

private:
    using Buffer = detail::Buffer<T>;
    Index rows_, cols_, stride_;
    T* data_ = nullptr;
    bool* busy_ = nullptr;  // the slot's flag while this holds its kept block
    Buffer own_;
};

}  // namespace rnnfast::detail
