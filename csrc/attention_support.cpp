// Whether the AVX512-BF16 attention can run: built in (compiler flag, x86-64) and the CPU has
// it. Compiled without AVX512 flags, so the check itself runs on any x86-64.
#include "attention.hpp"

namespace car {

bool attention_supported() {
#ifdef CAR_HAVE_BF16_ATTENTION
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
#else
    return false;
#endif
}

#ifndef CAR_HAVE_BF16_ATTENTION
void attention_bf16(const py::array_t<int16_t>&, const py::array_t<int64_t>&,
                    const py::array_t<int64_t>&, int64_t, int64_t, int64_t, bool,
                    py::array_t<int16_t>&, int64_t) {
    throw std::runtime_error("car_engine._native was built without the AVX512-BF16 attention");
}

void attention_f32(const py::array_t<float>&, const py::array_t<int64_t>&,
                   const py::array_t<int64_t>&, int64_t, int64_t, int64_t, bool,
                   py::array_t<float>&, int64_t) {
    throw std::runtime_error("car_engine._native was built without the AVX512 attention");
}
#endif

}  // namespace car
