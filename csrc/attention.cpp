// Fused softmax attention for packed texts: bf16 with AVX512-BF16 dot products, fp32 with FMA.
//
// PyTorch's matmul + softmax + matmul writes every head's n x n scores to memory and reads
// them back twice; at head dim 32 that traffic, not the arithmetic, is most of the time.
// Here one (text, key/value head) at a time, a few queries at a time: keys are repacked so
// one vdpbf16ps gives a query's scores against 16 keys, values so one gives 16 output dims
// from 2 keys; the queries' score rows stay in L1, the exponentials are a vector polynomial.
// Scores, softmax sums and outputs accumulate in fp32; probabilities enter P @ V as bf16, as
// in PyTorch's bf16 path (which also rounds the scores). Both the encoder (BERT: every head
// its own keys) and the causal LM of IFD (Llama: grouped-query, causal) use it. On 2 cores:
// 16 x 256 tokens, 12 heads of 32: 6.4 ms vs 11.5 ms for PyTorch's bmm + softmax + bmm;
// 16 Llama-shaped causal sequences (9 query / 3 key heads of 64, 200-512 tokens): bf16
// 7.1 ms, fp32 13.2 ms, vs 53-65 ms for PyTorch's scaled_dot_product_attention with
// enable_gqa and ~31 ms with the key/value heads repeated (its flash path).
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

// The two element types. A "lane group" is what one multiply-add instruction consumes per
// output lane: two bf16 (vdpbf16ps) or one fp32 (vfmadd). Keys are repacked as
// [16-key blocks][head_dim / group][16 keys][group] and values as [keys / group][head_dim]
// [group], so one instruction gives a query's scores against 16 keys, or 16 output dims
// from `group` keys.
struct Bf16 {
    using T = int16_t;  // bf16 bit pattern
    using Vec = __m512bh;
    static constexpr int64_t group = 2;
    static Vec load(const T* p) { return (Vec)_mm512_loadu_si512(p); }
    static Vec broadcast(const T* p) {  // two adjacent bf16, to all lanes
        int32_t pair;
        std::memcpy(&pair, p, sizeof pair);
        return (Vec)_mm512_set1_epi32(pair);
    }
    static __m512 madd(__m512 acc, Vec a, Vec b) { return _mm512_dpbf16_ps(acc, a, b); }
    static void store(T* p, __m512 x) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(x));
    }
};

struct Fp32 {
    using T = float;
    using Vec = __m512;
    static constexpr int64_t group = 1;
    static Vec load(const T* p) { return _mm512_loadu_ps(p); }
    static Vec broadcast(const T* p) { return _mm512_set1_ps(*p); }
    static __m512 madd(__m512 acc, Vec a, Vec b) { return _mm512_fmadd_ps(a, b, acc); }
    static void store(T* p, __m512 x) { _mm512_storeu_ps(p, x); }
};

template <class E>
struct Buffers {
    std::vector<typename E::T> keys, values, probs;  // probs: [QT][blocks * 16]
    std::vector<float> scores;                       // [QT][blocks * 16]
};

// Where the rows of one (text, key/value head) job are: qkv rows [start, start + n) hold
// the query heads, then the key heads, then the value heads, each head_dim wide.
template <class E>
struct Job {
    const typename E::T* qkv;
    int64_t row_stride, start, n, heads, kv_heads, kv_head;
    bool causal;
    typename E::T* out;
    int64_t out_stride;
};

// Query rows per pass, measured on 2 cores in bf16 (the P @ V loop holds QT x chunks
// accumulators and chunks value registers of 32): D 16: 8 (16 was 1.4x slower), D 32: 4 (8
// no faster), D 64: 4 (2 was 1.5x slower), D 128: 2 (1 was 1.4x slower).
template <int D>
constexpr int64_t query_tile() { return D == 16 ? 8 : D == 128 ? 2 : 4; }

// The key/value head of one text, then every query head that shares it (heads / kv_heads of
// them: grouped-query attention), so keys and values are repacked once per group. QT query
// rows at a time share every key and value load, and the QT x 2 (or QT x chunks) running dot
// products are independent chains, so the loops are bound by multiply-add throughput rather
// than by its latency (one query at a time was 2.5x slower than PyTorch). Causal: query i
// sees keys 0..i, so a pass of QT queries stops at its last query's key.
template <class E, int D>
void attend(const Job<E>& job, Buffers<E>& buf) {
    using T = typename E::T;
    constexpr int64_t G = E::group, steps = D / G, chunks = D / 16, QT = query_tile<D>();
    const int64_t n = job.n, stride = job.row_stride;
    const int64_t blocks = (n + 15) / 16, width = blocks * 16;
    const T* rows = job.qkv + job.start * stride;
    const T* k0 = rows + (job.heads + job.kv_head) * D;
    const T* v0 = rows + (job.heads + job.kv_heads + job.kv_head) * D;
    buf.keys.assign(blocks * steps * 16 * G, 0);
    buf.values.assign(width * D, 0);
    for (int64_t j = 0; j < n; ++j) {
        const T* key = k0 + j * stride;
        const T* value = v0 + j * stride;
        T* kd = buf.keys.data() + (j / 16) * steps * 16 * G + (j % 16) * G;
        for (int64_t i = 0; i < steps; ++i)
            for (int64_t g = 0; g < G; ++g) kd[i * 16 * G + g] = key[G * i + g];
        T* vd = buf.values.data() + (j / G) * D * G + (j % G);
        for (int64_t d = 0; d < D; ++d) vd[G * d] = value[d];
    }
    buf.scores.resize(QT * width);
    buf.probs.resize(QT * width);
    const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    // Lanes of key block b that query row `last` may see (keys 0..last).
    auto visible = [](int64_t b, int64_t last) -> __mmask16 {
        const int64_t count = last - b * 16 + 1;
        return count >= 16 ? 0xFFFF : count <= 0 ? 0 : static_cast<__mmask16>((1u << count) - 1);
    };
    const int64_t per_group = job.heads / job.kv_heads;
    for (int64_t h = job.kv_head * per_group; h < (job.kv_head + 1) * per_group; ++h) {
        const T* q0 = rows + h * D;
        for (int64_t r0 = 0; r0 < n; r0 += QT) {
            const T* q[QT];
            int64_t last[QT];  // the last key each query row sees
            for (int64_t t = 0; t < QT; ++t) {
                const int64_t r = std::min(r0 + t, n - 1);
                q[t] = q0 + r * stride;
                last[t] = job.causal ? r : n - 1;
            }
            const int64_t seen = (last[QT - 1] + 16) / 16;  // key blocks this pass reads
            __m512 row_max[QT];
            for (int64_t t = 0; t < QT; ++t) row_max[t] = minus_inf;
            for (int64_t b = 0; b < seen; b += 2) {  // two key blocks x QT queries per pass
                const bool pair_of_blocks = b + 1 < seen;
                const T* kb = buf.keys.data() + b * steps * 16 * G;
                __m512 a[QT][2];
                for (int64_t t = 0; t < QT; ++t) a[t][0] = a[t][1] = _mm512_setzero_ps();
                for (int64_t i = 0; i < steps; ++i) {
                    const auto k_0 = E::load(kb + i * 16 * G);
                    const auto k_1 = pair_of_blocks ? E::load(kb + (steps + i) * 16 * G) : k_0;
                    for (int64_t t = 0; t < QT; ++t) {
                        const auto qi = E::broadcast(q[t] + G * i);
                        a[t][0] = E::madd(a[t][0], qi, k_0);
                        a[t][1] = E::madd(a[t][1], qi, k_1);
                    }
                }
                for (int64_t t = 0; t < QT; ++t) {
                    float* sc = buf.scores.data() + t * width + b * 16;
                    a[t][0] = _mm512_mask_mov_ps(minus_inf, visible(b, last[t]), a[t][0]);
                    _mm512_storeu_ps(sc, a[t][0]);
                    row_max[t] = _mm512_max_ps(row_max[t], a[t][0]);
                    if (pair_of_blocks) {
                        a[t][1] = _mm512_mask_mov_ps(minus_inf, visible(b + 1, last[t]), a[t][1]);
                        _mm512_storeu_ps(sc + 16, a[t][1]);
                        row_max[t] = _mm512_max_ps(row_max[t], a[t][1]);
                    }
                }
            }
            float inv_total[QT];
            for (int64_t t = 0; t < QT; ++t) {
                const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(row_max[t]));
                __m512 total = _mm512_setzero_ps();
                for (int64_t b = 0; b < seen; ++b) {
                    const __m512 p = exp16(_mm512_sub_ps(
                        _mm512_loadu_ps(buf.scores.data() + t * width + b * 16), shift));
                    total = _mm512_add_ps(total, p);  // hidden keys: e^-inf = 0
                    E::store(buf.probs.data() + t * width + b * 16, p);
                }
                inv_total[t] = 1.0f / _mm512_reduce_add_ps(total);
            }
            __m512 acc[QT][chunks];
            for (int64_t t = 0; t < QT; ++t)
                for (int64_t c = 0; c < chunks; ++c) acc[t][c] = _mm512_setzero_ps();
            for (int64_t jg = 0; jg < seen * 16 / G; ++jg) {  // G keys per step
                typename E::Vec v[chunks];
                for (int64_t c = 0; c < chunks; ++c)
                    v[c] = E::load(buf.values.data() + jg * D * G + c * 16 * G);
                for (int64_t t = 0; t < QT; ++t) {
                    const auto p = E::broadcast(buf.probs.data() + t * width + G * jg);
                    for (int64_t c = 0; c < chunks; ++c) acc[t][c] = E::madd(acc[t][c], p, v[c]);
                }
            }
            for (int64_t t = 0; t < QT && r0 + t < n; ++t) {
                T* dst = job.out + (job.start + r0 + t) * job.out_stride + h * D;
                for (int64_t c = 0; c < chunks; ++c)
                    E::store(dst + c * 16, _mm512_mul_ps(acc[t][c], _mm512_set1_ps(inv_total[t])));
            }
        }
    }
}

template <class E>
using AttendFn = void (*)(const Job<E>&, Buffers<E>&);

template <class E>
AttendFn<E> attend_for(int64_t head_dim) {
    switch (head_dim) {
        case 16: return attend<E, 16>;
        case 32: return attend<E, 32>;
        case 64: return attend<E, 64>;
        case 128: return attend<E, 128>;
        default: return nullptr;
    }
}

template <class E>
void run_attention(const py::array_t<typename E::T>& qkv, const py::array_t<int64_t>& starts,
                   const py::array_t<int64_t>& lengths, int64_t heads, int64_t kv_heads,
                   int64_t head_dim, bool causal, py::array_t<typename E::T>& out,
                   int64_t threads) {
    if (!attention_supported()) throw std::runtime_error("no AVX512-BF16 attention here");
    const AttendFn<E> attend_group = attend_for<E>(head_dim);
    if (attend_group == nullptr)
        throw std::invalid_argument("attention: head_dim must be 16, 32, 64 or 128");
    if (heads < 1 || kv_heads < 1 || heads % kv_heads != 0)
        throw std::invalid_argument("attention: heads must be a multiple of kv_heads");
    const int64_t width = heads * head_dim, row = (heads + 2 * kv_heads) * head_dim;
    if (qkv.ndim() != 2 || out.ndim() != 2 || qkv.shape(1) != row ||
        out.shape(0) != qkv.shape(0) || out.shape(1) != width ||
        !(qkv.flags() & py::array::c_style) || !(out.flags() & py::array::c_style))
        throw std::invalid_argument("attention: qkv must be C-contiguous [tokens, (heads + 2 * "
                                    "kv_heads) * head_dim] and out [tokens, heads * head_dim]");
    const int64_t tokens = qkv.shape(0), texts = starts.size();
    if (lengths.size() != texts) throw std::invalid_argument("starts and lengths differ");
    const int64_t* s = starts.data();
    const int64_t* n = lengths.data();
    for (int64_t t = 0; t < texts; ++t)
        if (n[t] < 1 || s[t] < 0 || s[t] + n[t] > tokens)
            throw std::invalid_argument("attention: text " + std::to_string(t) +
                                        " is outside the tokens");
    const typename E::T* in = qkv.data();
    typename E::T* dst = out.mutable_data();
    std::atomic<int64_t> next{0};
    const int64_t items = texts * kv_heads;
    auto work = [&]() {
        Buffers<E> buf;
        for (int64_t item; (item = next.fetch_add(1)) < items;) {
            const int64_t t = item / kv_heads;
            attend_group(Job<E>{in, row, s[t], n[t], heads, kv_heads, item % kv_heads, causal,
                                dst, width},
                         buf);
        }
    };
    py::gil_scoped_release release;
    std::vector<std::thread> pool;
    for (int64_t i = 1; i < std::max<int64_t>(1, threads); ++i) pool.emplace_back(work);
    work();
    for (auto& thread : pool) thread.join();
}

}  // namespace

void attention_bf16(const py::array_t<int16_t>& qkv, const py::array_t<int64_t>& starts,
                    const py::array_t<int64_t>& lengths, int64_t heads, int64_t kv_heads,
                    int64_t head_dim, bool causal, py::array_t<int16_t>& out, int64_t threads) {
    run_attention<Bf16>(qkv, starts, lengths, heads, kv_heads, head_dim, causal, out, threads);
}

void attention_f32(const py::array_t<float>& qkv, const py::array_t<int64_t>& starts,
                   const py::array_t<int64_t>& lengths, int64_t heads, int64_t kv_heads,
                   int64_t head_dim, bool causal, py::array_t<float>& out, int64_t threads) {
    run_attention<Fp32>(qkv, starts, lengths, heads, kv_heads, head_dim, causal, out, threads);
}

}  // namespace car
