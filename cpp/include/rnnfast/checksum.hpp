// A 64-bit checksum of a buffer, to notice that an array a cache refers to (instead of copying it) was changed
// before backward reads it. Every word is mixed in with a key that depends on its position, so any change of any
// element, a moved block of steps included, changes the sum except with probability about 2^-64. Not
// cryptographic: it guards against mistakes, not adversaries.
#pragma once

#include <cstddef>
#include <cstdint>

namespace rnnfast {

// The checksum of `bytes` bytes at `data`. Large buffers are split across the kernels' threads in fixed blocks
// whose sums add up, so the value does not depend on the thread count.
std::uint64_t checksum(const void* data, std::size_t bytes);

}  // namespace rnnfast
