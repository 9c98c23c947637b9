// The GRU cell's instance of the recurrent driver (the math is GruCell in cells.hpp).
#include "recurrent.hpp"

namespace rnnfast::detail {
RNNFAST_RECURRENT_CELL(, GruCell)
}  // namespace rnnfast::detail
