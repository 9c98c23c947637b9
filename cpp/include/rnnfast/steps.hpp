// How the rows of a sequence matrix are laid out over time.
//
// Step t occupies rows [offset(t), offset(t) + size(t)) of a [rows(), F] matrix. Sizes never increase with t:
// the batch is sorted by decreasing length, so the items still running at step t are the first size(t) of
// them and a padded step costs nothing. A uniform layout (every step holds the whole batch, rows t*B + b) is
// the plain time-major [T*B, F] view.
#pragma once

#include <vector>

#include "rnnfast/types.hpp"

namespace rnnfast {

class StepLayout {
public:
    StepLayout() = default;

    // Every step holds the whole batch.
    static StepLayout uniform(Index seq_len, Index batch);

    // Step t holds sizes[t] rows; sizes must be non-increasing and non-negative (std::invalid_argument otherwise).
    static StepLayout packed(std::vector<Index> sizes);

    Index seq_len() const { return static_cast<Index>(sizes_.size()); }
    // Items in the batch (the size of the first step).
    Index batch() const { return sizes_.empty() ? 0 : sizes_.front(); }
    Index rows() const { return rows_; }
    Index size(Index t) const { return sizes_[static_cast<size_t>(t)]; }
    Index offset(Index t) const { return offsets_[static_cast<size_t>(t)]; }
    // Size of step t, or 0 outside [0, T): the state before the first step comes from h0.
    Index size_or_zero(Index t) const { return t < 0 || t >= seq_len() ? 0 : size(t); }
    bool is_uniform() const { return uniform_; }

private:
    std::vector<Index> sizes_;
    std::vector<Index> offsets_;
    Index rows_ = 0;
    bool uniform_ = true;
};

}  // namespace rnnfast
