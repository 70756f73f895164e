// RMSNorm over the rows of a packed [tokens, hidden] activation (Llama's norms in the packed
// IFD body): one read and one write per element, fp32 inside.
#pragma once
#include "common.hpp"

namespace car {
// out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * weight, for bf16 bits (as int16): x and weight
// widened to fp32, the result rounded to bf16 once (nearest even).
void rms_norm_bf16(const py::array_t<int16_t>& x, const py::array_t<int16_t>& weight,
                   double eps, py::array_t<int16_t>& out, int64_t threads);
// The same in fp32.
void rms_norm_f32(const py::array_t<float>& x, const py::array_t<float>& weight, double eps,
                  py::array_t<float>& out, int64_t threads);
}  // namespace car
