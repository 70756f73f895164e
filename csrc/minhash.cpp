// Near duplicates (SPEC §9): MinHash signatures over word n-gram shingles, banded LSH for
// candidate pairs, verification by estimated Jaccard, and union-find groups.
#include "minhash.hpp"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <iterator>
#include <cstring>
#include <numeric>

#include "dedup.hpp"

namespace car {
namespace {

constexpr uint32_t kEmpty = 0xFFFFFFFFu;  // a slot no shingle reached

inline uint64_t splitmix(uint64_t& state) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The permutation family: h_p(x) = ((a_p * x + b_p) mod 2^64) >> 32 for a 32-bit x, with a_p,
// b_p random 64-bit (Dietzfelbinger's multiply-add-shift: strongly universal). Split into
// 32-bit halves so that the loop below vectorises on AVX2 (no 64x64 multiply there):
// (a_lo * x + b_lo) fits in 64 bits, and its high half plus a_hi * x + b_hi (mod 2^32) is h_p.
struct Permutations {
    std::vector<uint32_t> a_lo, a_hi, b_lo, b_hi;
    Permutations(int num_perm, uint64_t seed)
        : a_lo(num_perm), a_hi(num_perm), b_lo(num_perm), b_hi(num_perm) {
        uint64_t state = seed ^ 0x6A09E667F3BCC909ull;
        for (int p = 0; p < num_perm; ++p) {
            const uint64_t a = splitmix(state), b = splitmix(state);
            a_lo[p] = static_cast<uint32_t>(a);
            a_hi[p] = static_cast<uint32_t>(a >> 32);
            b_lo[p] = static_cast<uint32_t>(b);
            b_hi[p] = static_cast<uint32_t>(b >> 32);
        }
    }
};

// Fold shingle hashes into every slot of the signature, plain C++ (any CPU).
void fold_plain(const uint32_t* xs, size_t count, const Permutations& perm, int p0, int P,
                uint32_t* __restrict sig) {
    for (size_t s = 0; s < count; ++s) {
        const uint32_t x = xs[s];
        for (int p = p0; p < P; ++p) {
            const uint64_t low = static_cast<uint64_t>(perm.a_lo[p]) * x + perm.b_lo[p];
            const uint32_t h = static_cast<uint32_t>(low >> 32) + perm.a_hi[p] * x + perm.b_hi[p];
            sig[p] = std::min(sig[p], h);
        }
    }
}

// The same on AVX2, 8 slots at a time held in registers across all shingles (one pass over
// the shingles per 8 slots, so the slot minima never go back to memory in between).
__attribute__((target("avx2")))
void fold_avx2(const uint32_t* xs, size_t count, const Permutations& perm, int P,
               uint32_t* __restrict sig) {
    const __m256i lo32 = _mm256_set1_epi64x(0xFFFFFFFFll);
    int p0 = 0;
    for (; p0 + 8 <= P; p0 += 8) {
        const __m256i alo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&perm.a_lo[p0]));
        const __m256i ahi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&perm.a_hi[p0]));
        const __m256i blo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&perm.b_lo[p0]));
        const __m256i bhi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&perm.b_hi[p0]));
        const __m256i alo_odd = _mm256_srli_epi64(alo, 32);
        const __m256i blo_even = _mm256_and_si256(blo, lo32), blo_odd = _mm256_srli_epi64(blo, 32);
        __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sig + p0));
        for (size_t s = 0; s < count; ++s) {
            const __m256i x = _mm256_set1_epi32(static_cast<int>(xs[s]));
            // (a_lo * x + b_lo) as 64-bit lanes: even slots, then odd slots.
            const __m256i even = _mm256_add_epi64(_mm256_mul_epu32(alo, x), blo_even);
            const __m256i odd = _mm256_add_epi64(_mm256_mul_epu32(alo_odd, x), blo_odd);
            // Their high halves, back in slot order.
            const __m256i high = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
            const __m256i h = _mm256_add_epi32(high, _mm256_add_epi32(_mm256_mullo_epi32(ahi, x), bhi));
            m = _mm256_min_epu32(m, h);
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(sig + p0), m);
    }
    if (p0 < P) fold_plain(xs, count, perm, p0, P, sig);
}

void fold_shingles(const uint32_t* xs, size_t count, const Permutations& perm, int P,
                   uint32_t* sig) {
    static const bool avx2 = __builtin_cpu_supports("avx2");
    if (avx2) fold_avx2(xs, count, perm, P, sig);
    else fold_plain(xs, count, perm, 0, P, sig);
}

// The 32-bit hashes of the word n-grams of a whitespace-collapsed text (words are separated
// by exactly one ASCII space); a text of fewer words is one shingle, an empty one none. Each
// word is hashed once; an n-gram's hash mixes its words' hashes in order.
void shingle_hashes(const std::string& text, int ngram, std::vector<uint32_t>& out,
                    std::vector<uint64_t>& words) {
    out.clear();
    words.clear();
    if (text.empty()) return;
    size_t start = 0;
    for (size_t i = 0; i <= text.size(); ++i) {
        if (i == text.size() || text[i] == ' ') {
            words.push_back(hash_bytes(text.data() + start, i - start));
            start = i + 1;
        }
    }
    if (words.size() < static_cast<size_t>(ngram)) {
        out.push_back(static_cast<uint32_t>(hash_bytes(text.data(), text.size())));
        return;
    }
    for (size_t w = 0; w + ngram <= words.size(); ++w) {
        uint64_t h = 0x2545F4914F6CDD1Dull;
        for (int k = 0; k < ngram; ++k) h = (h ^ words[w + k]) * 0x100000001B3ull + (h >> 29);
        uint64_t state = h;
        out.push_back(static_cast<uint32_t>(splitmix(state)));
    }
}

// Union-find whose root is always the smallest index of its set.
inline int64_t find_root(int64_t* parent, int64_t x) {
    while (parent[x] != x) {
        parent[x] = parent[parent[x]];  // path halving
        x = parent[x];
    }
    return x;
}

inline void unite(int64_t* parent, int64_t a, int64_t b) {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a == b) return;
    if (a < b) parent[b] = a; else parent[a] = b;
}

void flatten(int64_t* parent, int64_t n) {
    for (int64_t i = 0; i < n; ++i) parent[i] = find_root(parent, i);
}

}  // namespace

py::array_t<uint32_t> minhash_signatures(const py::list& texts, int num_perm, uint64_t seed,
                                         int ngram, int threads) {
    if (num_perm < 1) throw py::value_error("num_perm must be >= 1");
    if (ngram < 1) throw py::value_error("ngram must be >= 1");
    const int64_t n = static_cast<int64_t>(texts.size());
    std::vector<const char*> ptr(n);
    std::vector<size_t> len(n);
    for (int64_t i = 0; i < n; ++i) {
        PyObject* obj = texts[i].ptr();
        if (!PyUnicode_Check(obj))
            throw py::value_error("texts[" + std::to_string(i) + "] is not a str");
        Py_ssize_t size;
        const char* utf8 = PyUnicode_AsUTF8AndSize(obj, &size);
        if (!utf8) throw py::error_already_set();
        ptr[i] = utf8;
        len[i] = static_cast<size_t>(size);
    }
    py::array_t<uint32_t> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(num_perm)});
    uint32_t* sig = out.mutable_data();
    {
        py::gil_scoped_release nogil;  // the list keeps every str (and its UTF-8 buffer) alive
        const Permutations perm(num_perm, seed);
        const int T = pick_threads(threads, n / 64 + 1);
        std::atomic<int64_t> next{0};
        run_threads(T, [&](int) {
            std::string buf;  // each thread's own scratch
            std::vector<uint32_t> xs;
            std::vector<uint64_t> words;
            for (int64_t lo; (lo = next.fetch_add(16)) < n;) {
                for (int64_t i = lo; i < std::min(n, lo + 16); ++i) {
                    uint32_t* row = sig + i * num_perm;
                    std::fill(row, row + num_perm, kEmpty);
                    collapse_whitespace(ptr[i], len[i], buf);
                    shingle_hashes(buf, ngram, xs, words);
                    fold_shingles(xs.data(), xs.size(), perm, num_perm, row);
                }
            }
        });
    }
    return out;
}

py::tuple lsh_groups(const py::array& signatures, int bands, int rows, double threshold,
                     int threads) {
    if (!py::isinstance<py::array_t<uint32_t>>(signatures) || signatures.ndim() != 2 ||
        !(signatures.flags() & py::array::c_style))
        throw py::value_error("signatures: expected a C-contiguous 2-D uint32 array");
    auto sig_arr = py::reinterpret_borrow<py::array_t<uint32_t>>(signatures);
    const int64_t n = sig_arr.shape(0);
    const int P = static_cast<int>(sig_arr.shape(1));
    if (n >= (int64_t{1} << 32)) throw py::value_error("signatures: over 2^32 rows");
    if (bands < 1 || rows < 1 || static_cast<int64_t>(bands) * rows > P)
        throw py::value_error("bands x rows must be between 1 and the signature length " +
                              std::to_string(P));
    const uint32_t* sig = sig_arr.data();
    std::vector<int64_t> groups(n);
    std::vector<int64_t> pi, pj;
    std::vector<float> ps;
    {
        py::gil_scoped_release nogil;
        // A record no shingle reached (empty text) is nobody's duplicate.
        std::vector<uint8_t> live(n);
        for (int64_t i = 0; i < n; ++i) live[i] = sig[i * P] != kEmpty || sig[i * P + P - 1] != kEmpty;
        // Candidates: records whose band of `rows` values is equal, band by band. Every bucket
        // yields all its pairs up to kBucketAll members; a larger bucket (thousands of copies of
        // one template) links each member to the bucket's first and to its predecessor, which
        // keeps the work linear and still joins members that are duplicates of those.
        constexpr size_t kBucketAll = 64;
        // Bands run T at a time, each round's pairs merged into the sorted, unique candidate
        // list at once: a pair found in many bands is held once (copies of one text share
        // every band), so memory follows the distinct pairs, not bands x pairs.
        const int T = pick_threads(threads, bands);
        std::vector<uint64_t> cand;
        std::vector<std::vector<uint64_t>> found(T);
        for (int round = 0; round < bands; round += T) {
            const int in_round = std::min(T, bands - round);
            parallel_for(in_round, in_round, 1, [&](int64_t slot) {
                const int64_t b = round + slot;
                std::vector<std::pair<uint64_t, int64_t>> keys;
                keys.reserve(n);
                for (int64_t i = 0; i < n; ++i)
                    if (live[i])
                        keys.emplace_back(hash_bytes(reinterpret_cast<const char*>(
                                                         sig + i * P + b * rows), 4 * rows), i);
                std::sort(keys.begin(), keys.end());
                auto& mine = found[slot];
                mine.clear();
                for (size_t s = 0; s < keys.size();) {
                    size_t e = s + 1;
                    while (e < keys.size() && keys[e].first == keys[s].first) ++e;
                    const size_t m = e - s;
                    auto add = [&](int64_t x, int64_t y) {
                        mine.push_back((static_cast<uint64_t>(x) << 32) | static_cast<uint64_t>(y));
                    };
                    if (m <= kBucketAll) {
                        for (size_t x = s; x < e; ++x)
                            for (size_t y = x + 1; y < e; ++y) add(keys[x].second, keys[y].second);
                    } else {
                        for (size_t y = s + 1; y < e; ++y) {
                            add(keys[s].second, keys[y].second);
                            if (y - 1 > s) add(keys[y - 1].second, keys[y].second);
                        }
                    }
                    s = e;
                }
                std::sort(mine.begin(), mine.end());
                mine.erase(std::unique(mine.begin(), mine.end()), mine.end());
            });
            for (int slot = 0; slot < in_round; ++slot) {
                std::vector<uint64_t> merged;
                merged.reserve(cand.size() + found[slot].size());
                std::set_union(cand.begin(), cand.end(), found[slot].begin(), found[slot].end(),
                               std::back_inserter(merged));
                cand.swap(merged);
            }
        }
        for (auto& f : found) std::vector<uint64_t>().swap(f);
        // Verify every candidate by its estimated Jaccard: the share of equal signature slots.
        const int64_t C = static_cast<int64_t>(cand.size());
        ps.resize(C);
        parallel_for(C, pick_threads(threads, C / 4096 + 1), 4096, [&](int64_t c) {
            const uint32_t* a = sig + static_cast<int64_t>(cand[c] >> 32) * P;
            const uint32_t* b = sig + static_cast<int64_t>(cand[c] & 0xFFFFFFFFu) * P;
            int equal = 0;
            for (int p = 0; p < P; ++p) equal += a[p] == b[p];
            ps[c] = static_cast<float>(equal) / static_cast<float>(P);
        });
        pi.resize(C);
        pj.resize(C);
        std::iota(groups.begin(), groups.end(), 0);
        const float cut = static_cast<float>(threshold);
        for (int64_t c = 0; c < C; ++c) {
            pi[c] = static_cast<int64_t>(cand[c] >> 32);
            pj[c] = static_cast<int64_t>(cand[c] & 0xFFFFFFFFu);
            if (ps[c] >= cut) unite(groups.data(), pi[c], pj[c]);
        }
        flatten(groups.data(), n);
    }
    auto* heap = new std::vector<float>(std::move(ps));
    py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<float>*>(p); });
    py::array_t<float> sims(static_cast<py::ssize_t>(heap->size()), heap->data(), owner);
    return py::make_tuple(to_numpy(std::move(groups)), to_numpy(std::move(pi)),
                          to_numpy(std::move(pj)), sims);
}

void union_pairs(py::array& parent, const py::array& left, const py::array& right) {
    auto par = expect_1d<int64_t>(parent, "parent");
    auto a = expect_1d<int64_t>(left, "left");
    auto b = expect_1d<int64_t>(right, "right");
    if (a.shape(0) != b.shape(0)) throw py::value_error("left and right differ in length");
    const int64_t n = par.shape(0);
    for (py::ssize_t k = 0; k < a.shape(0); ++k)
        if (a.data()[k] < 0 || a.data()[k] >= n || b.data()[k] < 0 || b.data()[k] >= n)
            throw py::value_error("pair " + std::to_string(k) + ": index out of range");
    int64_t* p = par.mutable_data();
    py::gil_scoped_release nogil;
    for (py::ssize_t k = 0; k < a.shape(0); ++k) unite(p, a.data()[k], b.data()[k]);
}

void flatten_forest(py::array& parent) {
    auto par = expect_1d<int64_t>(parent, "parent");
    const int64_t n = par.shape(0);
    int64_t* p = par.mutable_data();
    for (int64_t i = 0; i < n; ++i)
        if (p[i] < 0 || p[i] > i) throw py::value_error("parent: not a union-find forest");
    py::gil_scoped_release nogil;
    flatten(p, n);
}

}  // namespace car
