// The LSTM cell's instance of the recurrent driver (the math is LstmCell in cells.hpp).
#include "recurrent.hpp"

namespace rnnfast::detail {
RNNFAST_RECURRENT_CELL(, LstmCell)
}  // namespace rnnfast::detail
