#pragma once
#include "common.hpp"

namespace car {
py::array_t<uint32_t> minhash_signatures(const py::list& texts, int num_perm, uint64_t seed,
                                         int ngram, int threads);
py::tuple lsh_groups(const py::array& signatures, int bands, int rows, double threshold,
                     int threads);
void union_pairs(py::array& parent, const py::array& left, const py::array& right);
void flatten_forest(py::array& parent);
}  // namespace car
