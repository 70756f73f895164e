// Fused softmax attention for packed bf16 texts, with AVX512-BF16 dot products.
//
// PyTorch's matmul + softmax + matmul writes every head's n x n scores to memory and reads
// them back twice; at head dim 32 that traffic, not the arithmetic, is most of the time.
// Here one (text, head) pair at a time: keys are repacked so one vdpbf16ps gives a query's
// scores against 16 keys, a query's score row stays in L1, the exponentials are a vector
// polynomial, and P @ V accumulates in fp32 from V converted once. Scores, probabilities and
// sums are fp32 throughout (PyTorch's bf16 path rounds scores and probabilities to bf16).
// Compiled with -mavx512bf16 (see CMakeLists.txt); callers check attention_supported().
#include "attention.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <atomic>
#include <limits>

namespace car {
namespace {

// e^x for 16 floats: x = k ln2 + r with |r| <= ln2 / 2, e^r by its degree-6 Taylor
// polynomial (relative error < 2e-7 there), then scaled by 2^k.
inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, k);
}

inline float bf16_to_float(int16_t bits) {
    uint32_t wide = static_cast<uint32_t>(static_cast<uint16_t>(bits)) << 16;
    float out;
    std::memcpy(&out, &wide, sizeof out);
    return out;
}

struct Buffers {
    std::vector<int16_t> keys;  // [blocks][head_dim / 2][16 keys][2]
    std::vector<float> values;  // [n][head_dim]
    std::vector<float> scores;  // [blocks * 16]
};

// One head of one text: rows [start, start + n) of qkv, head h. D is the head dim; the loops
// keep several independent accumulators, since a single chain of dot products or FMAs waits
// on each one's latency (that made a first version 2x slower than PyTorch).
template <int D>
void attend(const int16_t* qkv, int64_t row_stride, int64_t start, int64_t n, int64_t h,
            int64_t heads, int16_t* out, int64_t out_stride, Buffers& buf) {
    constexpr int64_t pairs = D / 2, chunks = D / 16, unroll = chunks >= 4 ? 1 : 4 / chunks;
    const int64_t blocks = (n + 15) / 16;
    const int16_t* q0 = qkv + start * row_stride + h * D;
    const int16_t* k0 = q0 + heads * D;
    const int16_t* v0 = k0 + heads * D;
    buf.keys.assign(blocks * pairs * 32, 0);
    for (int64_t j = 0; j < n; ++j) {
        const int16_t* key = k0 + j * row_stride;
        int16_t* dst = buf.keys.data() + (j / 16) * pairs * 32 + (j % 16) * 2;
        for (int64_t i = 0; i < pairs; ++i) {
            dst[i * 32] = key[2 * i];
            dst[i * 32 + 1] = key[2 * i + 1];
        }
    }
    const int64_t padded = (n + unroll - 1) / unroll * unroll;
    buf.values.assign(padded * D, 0.0f);
    for (int64_t j = 0; j < n; ++j)
        for (int64_t d = 0; d < D; ++d)
            buf.values[j * D + d] = bf16_to_float(v0[j * row_stride + d]);
    buf.scores.assign(std::max(blocks * 16, padded), 0.0f);
    const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    const __mmask16 tail = n % 16 ? static_cast<__mmask16>((1u << (n % 16)) - 1) : 0xFFFF;
    __m512i query[pairs];
    float* scores = buf.scores.data();
    for (int64_t r = 0; r < n; ++r) {
        const int16_t* q = q0 + r * row_stride;
        for (int64_t i = 0; i < pairs; ++i) {
            int32_t pair;
            std::memcpy(&pair, q + 2 * i, sizeof pair);
            query[i] = _mm512_set1_epi32(pair);
        }
        __m512 row_max = minus_inf;
        int64_t b = 0;
        for (; b + 4 <= blocks; b += 4) {  // four key blocks at once: four dot-product chains
            const int16_t* kb = buf.keys.data() + b * pairs * 32;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t i = 0; i < pairs; ++i) {
                const __m512bh qi = (__m512bh)query[i];
                a0 = _mm512_dpbf16_ps(a0, qi, (__m512bh)_mm512_loadu_si512(kb + i * 32));
                a1 = _mm512_dpbf16_ps(a1, qi, (__m512bh)_mm512_loadu_si512(kb + (pairs + i) * 32));
                a2 = _mm512_dpbf16_ps(a2, qi,
                                      (__m512bh)_mm512_loadu_si512(kb + (2 * pairs + i) * 32));
                a3 = _mm512_dpbf16_ps(a3, qi,
                                      (__m512bh)_mm512_loadu_si512(kb + (3 * pairs + i) * 32));
            }
            if (b + 4 == blocks) a3 = _mm512_mask_mov_ps(minus_inf, tail, a3);
            _mm512_storeu_ps(scores + b * 16, a0);
            _mm512_storeu_ps(scores + b * 16 + 16, a1);
            _mm512_storeu_ps(scores + b * 16 + 32, a2);
            _mm512_storeu_ps(scores + b * 16 + 48, a3);
            row_max = _mm512_max_ps(_mm512_max_ps(row_max, _mm512_max_ps(a0, a1)),
                                    _mm512_max_ps(a2, a3));
        }
        for (; b < blocks; ++b) {
            const int16_t* kb = buf.keys.data() + b * pairs * 32;
            __m512 acc = _mm512_setzero_ps();
            for (int64_t i = 0; i < pairs; ++i)
                acc = _mm512_dpbf16_ps(acc, (__m512bh)query[i],
                                       (__m512bh)_mm512_loadu_si512(kb + i * 32));
            if (b == blocks - 1) acc = _mm512_mask_mov_ps(minus_inf, tail, acc);
            _mm512_storeu_ps(scores + b * 16, acc);
            row_max = _mm512_max_ps(row_max, acc);
        }
        const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(row_max));
        __m512 total = _mm512_setzero_ps();
        for (b = 0; b < blocks; ++b) {
            __m512 p = exp16(_mm512_sub_ps(_mm512_loadu_ps(scores + b * 16), shift));
            _mm512_storeu_ps(scores + b * 16, p);  // padded keys: e^-inf = 0
            total = _mm512_add_ps(total, p);
        }
        for (int64_t j = blocks * 16; j < padded; ++j) scores[j] = 0.0f;
        const float inv_total = 1.0f / _mm512_reduce_add_ps(total);
        __m512 acc[unroll][chunks];
        for (int64_t u = 0; u < unroll; ++u)
            for (int64_t c = 0; c < chunks; ++c) acc[u][c] = _mm512_setzero_ps();
        const float* values = buf.values.data();
        for (int64_t j = 0; j < padded; j += unroll)
            for (int64_t u = 0; u < unroll; ++u) {
                const __m512 p = _mm512_set1_ps(scores[j + u]);
                for (int64_t c = 0; c < chunks; ++c)
                    acc[u][c] = _mm512_fmadd_ps(p, _mm512_loadu_ps(values + (j + u) * D + c * 16),
                                                acc[u][c]);
            }
        int16_t* dst = out + (start + r) * out_stride + h * D;
        for (int64_t c = 0; c < chunks; ++c) {
            __m512 sum = acc[0][c];
            for (int64_t u = 1; u < unroll; ++u) sum = _mm512_add_ps(sum, acc[u][c]);
            sum = _mm512_mul_ps(sum, _mm512_set1_ps(inv_total));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c * 16),
                                (__m256i)_mm512_cvtneps_pbh(sum));
        }
    }
}

using AttendFn = void (*)(const int16_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                          int16_t*, int64_t, Buffers&);

AttendFn attend_for(int64_t head_dim) {
    switch (head_dim) {
        case 16: return attend<16>;
        case 32: return attend<32>;
        case 64: return attend<64>;
        case 128: return attend<128>;
        default: return nullptr;
    }
}

}  // namespace

void attention_bf16(const py::array_t<int16_t>& qkv, const py::array_t<int64_t>& starts,
                    const py::array_t<int64_t>& lengths, int64_t heads, int64_t head_dim,
                    py::array_t<int16_t>& out, int64_t threads) {
    if (!attention_supported()) throw std::runtime_error("no AVX512-BF16 attention here");
    const AttendFn attend_head = attend_for(head_dim);
    if (qkv.ndim() != 2 || out.ndim() != 2 || heads < 1 || attend_head == nullptr)
        throw std::invalid_argument("attention_bf16: head_dim must be 16, 32, 64 or 128");
    const int64_t tokens = qkv.shape(0), width = heads * head_dim;
    if (qkv.shape(1) != 3 * width || out.shape(0) != tokens || out.shape(1) != width ||
        !(qkv.flags() & py::array::c_style) || !(out.flags() & py::array::c_style))
        throw std::invalid_argument("attention_bf16: qkv must be C-contiguous [tokens, 3 * "
                                    "heads * head_dim] and out [tokens, heads * head_dim]");
    const int64_t texts = starts.size();
    if (lengths.size() != texts) throw std::invalid_argument("starts and lengths differ");
    const int64_t* s = starts.data();
    const int64_t* n = lengths.data();
    for (int64_t t = 0; t < texts; ++t)
        if (n[t] < 1 || s[t] < 0 || s[t] + n[t] > tokens)
            throw std::invalid_argument("attention_bf16: text " + std::to_string(t) +
                                        " is outside the tokens");
    const int16_t* in = qkv.data();
    int16_t* dst = out.mutable_data();
    std::atomic<int64_t> next{0};
    const int64_t items = texts * heads;
    auto work = [&]() {
        Buffers buf;
        for (int64_t item; (item = next.fetch_add(1)) < items;) {
            const int64_t t = item / heads, h = item % heads;
            attend_head(in, 3 * width, s[t], n[t], h, heads, dst, width, buf);
        }
    };
    py::gil_scoped_release release;
    std::vector<std::thread> pool;
    for (int64_t i = 1; i < std::max<int64_t>(1, threads); ++i) pool.emplace_back(work);
    work();
    for (auto& thread : pool) thread.join();
}

}  // namespace car
