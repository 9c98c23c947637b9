#include "rnnfast/checksum.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "parallel.hpp"
#include "rnnfast/interrupt.hpp"

namespace rnnfast {
namespace {

constexpr std::size_t kLanes = 8;                  // 64-bit words per stripe: one AVX-512 register
constexpr std::size_t kBlockWords = 512;           // 4 KiB blocks, mixed into the sum one by one
constexpr std::uint64_t kPrime1 = 0x9E3779B185EBCA87ULL, kPrime2 = 0xC2B2AE3D27D4EB4FULL;

std::uint64_t mix(std::uint64_t h) {  // a 64-bit finalizer: every input bit affects every output bit
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 33;
    return h;
}

// One block of up to kBlockWords words starting at word `first` of the buffer. The key of a word depends on its
// position in the buffer; the multiply of its two halves (after keying) makes the sum nonlinear in the data, and
// adding the word itself keeps a key that zeroes one half from hiding the other.
std::uint64_t load(const unsigned char* p) {  // the buffer may be aligned for floats only
    std::uint64_t w;
    std::memcpy(&w, p, sizeof w);
    return w;
}

std::uint64_t block_sum(const unsigned char* words, std::size_t count, std::size_t first) {
    std::uint64_t acc[kLanes];
    for (std::size_t j = 0; j < kLanes; ++j) acc[j] = kPrime1 * (j + 1);
    std::size_t i = 0;
    for (; i + kLanes <= count; i += kLanes) {
        const std::uint64_t stripe_key = (first + i) * kPrime2;
        for (std::size_t j = 0; j < kLanes; ++j) {
            const std::uint64_t w = load(words + 8 * (i + j));
            const std::uint64_t k = w ^ (stripe_key + j * kPrime1);
            acc[j] += (k & 0xFFFFFFFFULL) * (k >> 32) + w;
        }
    }
    for (; i < count; ++i) {
        const std::uint64_t w = load(words + 8 * i);
        const std::uint64_t k = w ^ ((first + i) * kPrime2);
        acc[i % kLanes] += (k & 0xFFFFFFFFULL) * (k >> 32) + w;
    }
    std::uint64_t h = first * kPrime1;
    for (std::size_t j = 0; j < kLanes; ++j) h = mix(h ^ acc[j]) + kPrime2;
    return h;
}

}  // namespace

std::uint64_t checksum(const void* data, std::size_t bytes) {
    const std::size_t n_words = bytes / 8, tail = bytes % 8;
    const std::size_t blocks = (n_words + kBlockWords - 1) / kBlockWords;
    const auto* words = static_cast<const unsigned char*>(data);
    // Summed per part, then the parts added: addition is commutative, so any split gives the same value. Spans of
    // kSpanBlocks blocks (32 MiB) one after the other, between which the call can be interrupted.
    constexpr std::size_t kSpanBlocks = 8192;
    std::uint64_t sum = 0;
    for (std::size_t s0 = 0; s0 < blocks; s0 += kSpanBlocks) {
        const std::size_t s1 = std::min(blocks, s0 + kSpanBlocks), span = s1 - s0;
        const int threads = detail::threads_for(static_cast<double>(span * kBlockWords * 8), 1 << 20);
        std::vector<std::uint64_t> parts(static_cast<std::size_t>(std::max(threads, 1)), 0);
        detail::parallel(threads, [&](int k, int n_parts) {
            const auto b0 = s0 + static_cast<std::size_t>(detail::split(static_cast<Index>(span), k, n_parts, 1));
            const auto b1 = s0 + static_cast<std::size_t>(detail::split(static_cast<Index>(span), k + 1, n_parts, 1));
            std::uint64_t part = 0;
            for (std::size_t b = b0; b < b1; ++b) {
                const std::size_t first = b * kBlockWords;
                part += block_sum(words + 8 * first, std::min(kBlockWords, n_words - first), first);
            }
            parts[static_cast<std::size_t>(k)] = part;
        });
        for (std::uint64_t p : parts) sum += p;
        interruption_point(static_cast<double>(span * kBlockWords));
    }
    std::uint64_t total = mix(bytes) + sum;
    if (tail != 0) {
        std::uint64_t last = 0;
        std::memcpy(&last, static_cast<const unsigned char*>(data) + n_words * 8, tail);
        total += mix(last ^ (n_words * kPrime2));
    }
    return mix(total);
}

}  // namespace rnnfast
