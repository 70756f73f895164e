#pragma once
#include "common.hpp"

namespace car {
uint64_t hash_bytes(const char* data, size_t len);
// Whitespace runs become one ASCII space; leading and trailing whitespace goes.
void collapse_whitespace(const char* data, size_t n, std::string& out);
py::array_t<uint64_t> hash_texts(const py::list& texts);
py::array_t<int64_t> dedup(const py::array& hashes, const py::object& scores);
py::array_t<int64_t> union_ordered(const py::list& index_arrays);
}  // namespace car
