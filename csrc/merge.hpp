#pragma once
#include "common.hpp"

namespace car {
py::tuple merge_topk(const py::list& scores_lists, const py::list& id_lists, int64_t k);
}  // namespace car
