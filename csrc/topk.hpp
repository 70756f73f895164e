#pragma once
#include "common.hpp"

namespace car {
py::array_t<int64_t> topk(const py::array& scores, int64_t k);
py::array_t<int64_t> topk_per_cluster(const py::array& scores, const py::array& labels,
                                      int64_t n_per_cluster, int64_t n_clusters);
}  // namespace car
