#pragma once
#include "common.hpp"

namespace car {
py::array_t<double> cluster_means(const py::array& x, const py::array& order,
                                  const py::array& offsets, int threads);
py::tuple semdedup_pairs(const py::array& x, const py::array& z, const py::array& centres,
                         const py::array& centres_z, const py::array& order, const py::array& offsets, double reach,
                         double cut, double tol, int threads, bool plain);
}  // namespace car
