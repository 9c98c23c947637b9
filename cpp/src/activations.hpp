// tanh and the logistic sigmoid as Eigen functors that are vectorized for both dtypes and give every element the
// same bits wherever it falls in a row.
//
// Eigen 3.4 computes tanh of a double one scalar at a time (std::tanh: several times the cost of the products
// around it in a float64 layer), and finishes each span of a float tanh or logistic with scalars whose formula
// differs from its packets'. Here a double's tanh is a polynomial near 0 and 1 - 2 / (exp(2|x|) + 1) over Eigen's
// vectorized exp elsewhere, and a scalar goes through a one-element packet of the same code: a unit's result does
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

// Coefficients of x^3, x^5, ..., x^27 in tanh's series about 0, 2^2n (2^2n - 1) B_2n / (2n)! for n = 2..14 (B: the
// Bernoulli numbers), rounded to double. Below |x| = 0.35 the terms left out are under 1e-17 of tanh.
constexpr double kTanhSeries[] = {
    -0.3333333333333333,     0.13333333333333333,    -0.05396825396825397,    0.021869488536155203,
    -0.008863235529902197,   0.003592128036572481,   -0.0014558343870513183,  0.000590027440945586,
    -0.00023912911424355248, 9.691537956929451e-05,  -3.927832388331683e-05,  1.5918905069328964e-05,
    -6.451689215655431e-06,
};

// tanh(x). float: Eigen's rational approximation; double: see above, within 2 ulp (a dense scan of [-25, 25]
// against long double).
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
            const Packet ax = pmin(pabs(x), pset1<Packet>(T(20)));
            // Near 0 the series: 1 - 2 / (e + 1) would lose the digits of a small tanh to cancellation (at 0.35,
            // to 2 ulp; the series needs no division, log or exp).
            const Packet x2 = pmul(ax, ax);
            constexpr int n = static_cast<int>(sizeof(kTanhSeries) / sizeof(kTanhSeries[0]));
            Packet p = pset1<Packet>(kTanhSeries[n - 1]);
            for (int k = n - 2; k >= 0; --k) p = pmadd(p, x2, pset1<Packet>(kTanhSeries[k]));
            const Packet near0 = pmadd(pmul(p, x2), ax, ax);
            const Packet one = pset1<Packet>(T(1));
            const Packet far = psub(one, pdiv(pset1<Packet>(T(2)), padd(pexp(padd(ax, ax)), one)));
            const Packet t = por(pselect(pcmp_lt(ax, pset1<Packet>(T(0.35))), near0, far), sign);
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
    enum { Cost = 30 * NumTraits<T>::MulCost, PacketAccess = packet_traits<T>::HasExp };
};

template <class T>
struct functor_traits<rnnfast::detail::LogisticOp<T>> {
    enum { Cost = 20 * NumTraits<T>::MulCost, PacketAccess = packet_traits<T>::HasExp };
};

}  // namespace Eigen::internal
