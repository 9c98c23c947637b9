// A SIMD packet's first n lanes loaded from or stored to memory that may end after them: the tails of rows whose
// width is not a whole number of packets.
#pragma once

#include <Eigen/Core>

#include <algorithm>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "rnnfast/types.hpp"

namespace rnnfast::detail {

// Lanes [0, n) of a packet, n < its size: a load that zeroes the others and a store that leaves the memory past
// them alone. Masked instructions where the instruction set has them: a packet loaded from a copy that was just
// written element by element waits for the stores to retire (no store forwarding), and at 20 units a row, half of
// a small LSTM's gate math had been those waits. Elsewhere, through a zero-padded copy. Users: the gate math
// (cells.hpp's Lanes) and the per-step product's last packet of a segment (packed_product.hpp).
// (Overloads on the packet type, picked by a null pointer to it: vector types as template arguments lose their
// attributes.)
template <class Packet, class T>
Packet partial_load(const T* p, Index n, const Packet*) {
    alignas(sizeof(Packet)) T part[sizeof(Packet) / sizeof(T)] = {};
    std::copy(p, p + n, part);
    return Eigen::internal::pload<Packet>(part);
}
template <class Packet, class T>
void partial_store(T* p, const Packet& v, Index n) {
    alignas(sizeof(Packet)) T part[sizeof(Packet) / sizeof(T)];
    Eigen::internal::pstore(part, v);
    std::copy(part, part + n, p);
}

#if defined(__AVX512F__)
inline __m512 partial_load(const float* p, Index n, const __m512*) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
}
inline void partial_store(float* p, const __m512& v, Index n) {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
}
inline __m512d partial_load(const double* p, Index n, const __m512d*) {
    return _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << n) - 1), p);
}
inline void partial_store(double* p, const __m512d& v, Index n) {
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1), v);
}
#endif
#if defined(__AVX2__)
inline __m256i lane_mask_32(Index n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline __m256i lane_mask_64(Index n) { return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3)); }
inline __m256 partial_load(const float* p, Index n, const __m256*) { return _mm256_maskload_ps(p, lane_mask_32(n)); }
inline void partial_store(float* p, const __m256& v, Index n) { _mm256_maskstore_ps(p, lane_mask_32(n), v); }
inline __m256d partial_load(const double* p, Index n, const __m256d*) { return _mm256_maskload_pd(p, lane_mask_64(n)); }
inline void partial_store(double* p, const __m256d& v, Index n) { _mm256_maskstore_pd(p, lane_mask_64(n), v); }
#endif

}  // namespace rnnfast::detail
