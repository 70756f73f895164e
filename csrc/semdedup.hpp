#pragma once
#include "common.hpp"

namespace car {
py::object projected_pairs(const py::array& zt, const py::array& zz, int64_t lo, int64_t hi,
                           double reach, int64_t max_pairs, int threads);
}  // namespace car
