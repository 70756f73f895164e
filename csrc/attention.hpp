// Fused softmax attention over packed bf16 texts (the embedder's CPU hot spot).
#pragma once
#include "common.hpp"

namespace car {
// True when this build has the kernel and the CPU has AVX512-BF16.
bool attention_supported();
// Attention of every text over its own tokens, for every head. ``qkv`` is the packed
// [tokens, 3 * heads * head_dim] bf16 projection (bit patterns as int16; query already
// scaled), ``starts``/``lengths`` the texts' token ranges; writes [tokens, heads * head_dim].
void attention_bf16(const py::array_t<int16_t>& qkv, const py::array_t<int64_t>& starts,
                    const py::array_t<int64_t>& lengths, int64_t heads, int64_t head_dim,
                    py::array_t<int16_t>& out, int64_t threads);
}  // namespace car
