// Fused softmax attention over packed texts (the CPU hot spot of the packed encoders).
#pragma once
#include "common.hpp"

namespace car {
// True when this build has the kernel and the CPU has AVX512-BF16.
bool attention_supported();
// Attention of every text over its own tokens, for every head. ``qkv`` is the packed
// [tokens, (heads + 2 * kv_heads) * head_dim] bf16 projection (bit patterns as int16; query
// already scaled): query heads, then key heads, then value heads; query head h uses key/value
// head h / (heads / kv_heads). ``starts``/``lengths`` are the texts' token ranges; with
// ``causal`` a token sees only itself and earlier tokens. Writes [tokens, heads * head_dim].
void attention_bf16(const py::array_t<int16_t>& qkv, const py::array_t<int64_t>& starts,
                    const py::array_t<int64_t>& lengths, int64_t heads, int64_t kv_heads,
                    int64_t head_dim, bool causal, py::array_t<int16_t>& out, int64_t threads);
// The same in fp32 (vfmadd instead of vdpbf16ps; probabilities stay fp32).
void attention_f32(const py::array_t<float>& qkv, const py::array_t<int64_t>& starts,
                   const py::array_t<int64_t>& lengths, int64_t heads, int64_t kv_heads,
                   int64_t head_dim, bool causal, py::array_t<float>& out, int64_t threads);
}  // namespace car
