// tanh and the logistic sigmoid as Eigen functors that are vectorized for both dtypes and give every element the
// same bits wherever it falls in a row.
//
// Eigen 3.4 computes tanh of a double one scalar at a time (std::tanh: several times the cost of the products
// around it in a float64 layer), and finishes each span of a float tanh or logistic with scalars whose formula
// differs from its packets'. Here a double's tanh is expm1(2x) / (expm1(2x) + 2) with Kahan's expm1 over Eigen's
// vectorized exp and log, and a scalar goes through a one-element packet of the same code: a unit's result does
// not depend on whether a thread's band, a row's tail or a whole packet held it.
#pragma once

#include <Eigen/Core>

#include <type_traits>

namespace rnnfast::detail {

// An Eigen functor from `static Packet Derived::packet(const Packet&)`: a scalar goes through a one-element packet
// of the same code, so that it gets the bits its packet would have given it.
template <class Derived, class T>
struct PacketFunctor {
    using Packet = typename Eigen::internal::packet_traits<T>::type;
    T operator()(const T& x) const { return Eigen::internal::pfirst(Derived::packet(Eigen::internal::pset1<Packet>(x))); }
    template <class P>
    P packetOp(const P& x) const {
        return Derived::packet(x);
    }
};

// tanh(x). float: Eigen's rational approximation; double: see above, within 8 ulp.
template <class T>
struct TanhOp : PacketFunctor<TanhOp<T>, T> {
    template <class Packet>
    static Packet packet(const Packet& x) {
        using namespace Eigen::internal;
        if constexpr (std::is_same<T, float>::value) {
            return ptanh(x);
        } else {
            // Over |x| (tanh is odd; this keeps it so bit for bit), clamped at 20: tanh rounds to 1 in double
            // beyond, and exp(2|x|) stays finite.
            const Packet sign = pand(x, pset1<Packet>(T(-0.0)));
            const Packet y = pmul(pset1<Packet>(T(2)), pmin(pabs(x), pset1<Packet>(T(20))));
            const Packet u = pexp(y);
            const Packet um1 = psub(u, pset1<Packet>(T(1)));
            // Kahan: expm1(y) = (u - 1) * y / log(u), exact where u rounds to 1 (then expm1(y) = y).
            const Packet expm1 = pselect(pcmp_eq(u, pset1<Packet>(T(1))), y, pdiv(pmul(um1, y), plog(u)));
            const Packet t = por(pdiv(expm1, padd(expm1, pset1<Packet>(T(2)))), sign);
            return pselect(pcmp_eq(x, x), t, x);  // NaN stays NaN
        }
    }
};

// 1 / (1 + exp(-x)). float: Eigen's rational approximation; double: the formula over Eigen's vectorized exp.
template <class T>
struct LogisticOp : PacketFunctor<LogisticOp<T>, T> {
    template <class Packet>
    static Packet packet(const Packet& x) {
        using namespace Eigen::internal;
        if constexpr (std::is_same<T, float>::value) {
            return Eigen::internal::scalar_logistic_op<float>().packetOp(x);
        } else {
            const Packet one = pset1<Packet>(T(1));
            return pdiv(one, padd(one, pexp(pnegate(x))));
        }
    }
};

}  // namespace rnnfast::detail

namespace Eigen::internal {

template <class T>
struct functor_traits<rnnfast::detail::TanhOp<T>> {
    enum { Cost = 30 * NumTraits<T>::MulCost, PacketAccess = packet_traits<T>::HasExp && packet_traits<T>::HasLog };
};

template <class T>
struct functor_traits<rnnfast::detail::LogisticOp<T>> {
    enum { Cost = 20 * NumTraits<T>::MulCost, PacketAccess = packet_traits<T>::HasExp };
};

}  // namespace Eigen::internal
