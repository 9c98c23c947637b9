// The vectorized tanh and logistic (cpp/src/activations.hpp): accurate against the C library in double, and the
// same bits for an element whether it is computed in a whole packet, a packet of a row's tail, or alone.
#include <gtest/gtest.h>

#include <Eigen/Core>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "activations.hpp"
#include "rnnfast/types.hpp"

namespace {

using rnnfast::Index;
using rnnfast::detail::LogisticOp;
using rnnfast::detail::TanhOp;

std::vector<double> arguments() {
    // (0.35: where the double tanh switches from its series to the exp form.)
    std::vector<double> xs = {0.0,  -0.0, 1e-300, -1e-300, 1e-17, 1e-9, -1e-9, 1e-5, 0.1,   -0.3,   0.3499999999,
                              0.35, -0.35, 0.3500000001, 0.5493, 0.55, 0.625, 1.0,  -1.0, 2.5,  8.0,   19.0,
                              19.1, 20.0, 21.0, -25.0,  300.0, -800.0};
    std::mt19937 gen(7);
    std::uniform_real_distribution<double> wide(-30.0, 30.0), narrow(-1.0, 1.0), tiny(-1e-6, 1e-6);
    for (int i = 0; i < 4000; ++i) xs.push_back(wide(gen));
    for (int i = 0; i < 4000; ++i) xs.push_back(narrow(gen));
    for (int i = 0; i < 1000; ++i) xs.push_back(tiny(gen));
    return xs;
}

// |got - want| in units of want's last place.
double ulps(double got, double want) {
    const double ulp = std::nextafter(std::fabs(want), std::numeric_limits<double>::infinity()) - std::fabs(want);
    return std::fabs(got - want) / (want == 0.0 ? std::numeric_limits<double>::denorm_min() : ulp);
}

TEST(Activations, DoubleTanhWithinFewUlps) {
    const std::vector<double> xs = arguments();
    Eigen::ArrayXd a = Eigen::Map<const Eigen::ArrayXd>(xs.data(), static_cast<Index>(xs.size()));
    const Eigen::ArrayXd t = a.unaryExpr(TanhOp<double>());
    double worst = 0;
    for (Index i = 0; i < a.size(); ++i) worst = std::max(worst, ulps(t[i], std::tanh(a[i])));
    EXPECT_LE(worst, 3.0);  // 2 ulp from the exact value, and the C library's own error
    // Odd and bounded.
    for (Index i = 0; i < a.size(); ++i) {
        EXPECT_EQ(TanhOp<double>()(-a[i]), -TanhOp<double>()(a[i])) << a[i];
        EXPECT_LE(std::fabs(t[i]), 1.0);
    }
}

TEST(Activations, DoubleLogisticWithinFewUlps) {
    const std::vector<double> xs = arguments();
    Eigen::ArrayXd a = Eigen::Map<const Eigen::ArrayXd>(xs.data(), static_cast<Index>(xs.size()));
    const Eigen::ArrayXd s = a.unaryExpr(LogisticOp<double>());
    double worst = 0;
    for (Index i = 0; i < a.size(); ++i) worst = std::max(worst, ulps(s[i], 1.0 / (1.0 + std::exp(-a[i]))));
    EXPECT_LE(worst, 4.0);
}

TEST(Activations, NonFiniteArguments) {
    const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
    EXPECT_EQ(TanhOp<double>()(inf), 1.0);
    EXPECT_EQ(TanhOp<double>()(-inf), -1.0);
    EXPECT_TRUE(std::isnan(TanhOp<double>()(nan)));
    EXPECT_TRUE(std::isnan(TanhOp<float>()(std::numeric_limits<float>::quiet_NaN())));
    EXPECT_EQ(LogisticOp<double>()(inf), 1.0);
    EXPECT_EQ(LogisticOp<double>()(-inf), 0.0);
    EXPECT_TRUE(std::isnan(LogisticOp<double>()(nan)));
}

// The same values at every offset and length of a span: packets, a span's unaligned head and its tail agree.
template <class T, class Op>
void check_position_independent() {
    std::mt19937 gen(3);
    std::uniform_real_distribution<double> dist(-12.0, 12.0);
    const Index n = 67;
    std::vector<T> v(n);
    for (auto& e : v) e = static_cast<T>(dist(gen));
    std::vector<T> alone(n);
    for (Index i = 0; i < n; ++i) alone[static_cast<size_t>(i)] = Op()(v[static_cast<size_t>(i)]);
    for (Index start = 0; start < 9; ++start) {
        for (Index len : {Index(1), Index(3), Index(16), Index(17), Index(40), n - start}) {
            if (start + len > n) continue;
            Eigen::Array<T, Eigen::Dynamic, 1> span = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(v.data() + start, len);
            span = span.unaryExpr(Op());
            for (Index i = 0; i < len; ++i) {
                ASSERT_EQ(span[i], alone[static_cast<size_t>(start + i)]) << "start " << start << " len " << len << " i " << i;
            }
        }
    }
}

TEST(Activations, PositionIndependent) {
    check_position_independent<float, TanhOp<float>>();
    check_position_independent<float, LogisticOp<float>>();
    check_position_independent<double, TanhOp<double>>();
    check_position_independent<double, LogisticOp<double>>();
}

}  // namespace
