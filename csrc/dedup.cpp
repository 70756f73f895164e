// Text hashing, duplicate removal over 64-bit hashes, and ordered union of index sets.
#include "dedup.hpp"

#include <algorithm>
#include <cstring>

namespace car {
namespace {

constexpr uint64_t kMul1 = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kMul2 = 0xC2B2AE3D27D4EB4Full;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

inline uint64_t finalize(uint64_t h) {  // splitmix64's finaliser: full avalanche
    h ^= h >> 30;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 27;
    h *= 0x94D049BB133111EBull;
    h ^= h >> 31;
    return h;
}

// Python's str.isspace() set, by code point.
inline bool is_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 ||
           cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Decode one UTF-8 code point at p (input is valid UTF-8: it comes from a Python str).
inline uint32_t next_cp(const unsigned char* p, size_t& len) {
    if (p[0] < 0x80) { len = 1; return p[0]; }
    if ((p[0] & 0xE0) == 0xC0) { len = 2; return ((p[0] & 0x1F) << 6) | (p[1] & 0x3F); }
    if ((p[0] & 0xF0) == 0xE0) {
        len = 3;
        return ((p[0] & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    }
    len = 4;
    return ((p[0] & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

struct Slot {
    uint64_t hash;
    int64_t index;  // -1 = empty
};

template <typename S>
inline bool score_better(S a, int64_t ia, S b, int64_t ib) {
    // NaN ranks below every number; among equals the lower index wins.
    const bool an = std::isnan(a), bn = std::isnan(b);
    if (an != bn) return bn;
    if (!an && a != b) return a > b;
    return ia < ib;
}

// Radix-partition (index, hash) by the hash's top bits so that each bucket's table fits in
// cache, then resolve every bucket independently. Returns a keep-mask over the input.
template <typename S>
std::vector<uint8_t> dedup_impl(const uint64_t* h, int64_t n, const S* scores) {
    std::vector<uint8_t> keep(static_cast<size_t>(n), 0);
    if (n == 0) return keep;
    // Buckets of ~8k entries: each bucket's table (16k slots x 16 B) stays in L2.
    int bits = 0;
    while ((int64_t{1} << bits) * 8192 < n && bits < 16) ++bits;
    const int64_t B = int64_t{1} << bits;
    auto bucket_of = [&](uint64_t x) -> int64_t {
        return bits == 0 ? 0 : static_cast<int64_t>(finalize(x) >> (64 - bits));
    };
    std::vector<uint32_t> bucket(static_cast<size_t>(n));
    std::vector<int64_t> start(B + 1, 0);
    for (int64_t i = 0; i < n; ++i) ++start[(bucket[i] = static_cast<uint32_t>(bucket_of(h[i]))) + 1];
    for (int64_t b = 0; b < B; ++b) start[b + 1] += start[b];
    // Scatter (hash, index) pairs together so each bucket is then read sequentially;
    // the scatter is stable, so within a bucket indices stay ascending.
    std::vector<Slot> pairs(static_cast<size_t>(n));
    {
        std::vector<int64_t> cursor(start.begin(), start.end() - 1);
        for (int64_t i = 0; i < n; ++i) pairs[cursor[bucket[i]]++] = {h[i], i};
    }
    std::vector<uint32_t>().swap(bucket);
    auto resolve = [&](int64_t b_lo, int64_t b_hi) {
        std::vector<Slot> table;
        for (int64_t b = b_lo; b < b_hi; ++b) {
            const int64_t size = start[b + 1] - start[b];
            if (size == 0) continue;
            size_t cap = 16;
            while (cap < static_cast<size_t>(size) * 2) cap <<= 1;
            table.assign(cap, Slot{0, -1});
            for (int64_t j = start[b]; j < start[b + 1]; ++j) {
                const uint64_t x = pairs[j].hash;
                const int64_t i = pairs[j].index;
                size_t pos = ((x * kMul1) >> 20) & (cap - 1);
                while (table[pos].index >= 0 && table[pos].hash != x) pos = (pos + 1) & (cap - 1);
                Slot& slot = table[pos];
                if (slot.index < 0) {
                    slot = {x, i};
                } else if (scores && score_better(scores[i], i, scores[slot.index], slot.index)) {
                    slot.index = i;
                }
            }
            for (const Slot& slot : table)
                if (slot.index >= 0) keep[slot.index] = 1;
        }
    };
    const int T = threads_for(n);
    run_threads(T, [&](int t) { resolve(B * t / T, B * (t + 1) / T); });
    return keep;
}

std::vector<int64_t> mask_to_indices(const std::vector<uint8_t>& keep) {
    std::vector<int64_t> out;
    for (size_t i = 0; i < keep.size(); ++i)
        if (keep[i]) out.push_back(static_cast<int64_t>(i));
    return out;
}

}  // namespace

// Whitespace runs become one ASCII space; leading and trailing whitespace goes. Runs of other
// characters are copied whole (ASCII is checked byte by byte, only other bytes are decoded).
void collapse_whitespace(const char* data, size_t n, std::string& out) {
    out.clear();
    out.reserve(n);
    const auto* p = reinterpret_cast<const unsigned char*>(data);
    bool pending_space = false;
    size_t i = 0;
    while (i < n) {
        size_t j = i, len = 1;
        while (j < n) {
            const unsigned char c = p[j];
            if (c < 0x80) {
                if ((c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20)) break;
                ++j;
            } else {
                if (is_space(next_cp(p + j, len))) break;
                j += len;
            }
        }
        if (j > i) {
            if (pending_space) out.push_back(' ');
            out.append(data + i, j - i);
        }
        if (j >= n) break;
        next_cp(p + j, len);  // the whitespace character at j
        i = j + len;
        pending_space = !out.empty();
    }
}

uint64_t hash_bytes(const char* data, size_t len) {
    uint64_t h = 0x243F6A8885A308D3ull ^ (len * kMul2);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t k;
        std::memcpy(&k, data + i, 8);  // little-endian load
        h = rotl(h ^ (k * kMul1), 31) * kMul2;
    }
    uint64_t tail = 0;
    for (size_t j = 0; i + j < len; ++j)
        tail |= static_cast<uint64_t>(static_cast<unsigned char>(data[i + j])) << (8 * j);
    h = rotl(h ^ (tail * kMul1), 31) * kMul2;
    return finalize(h);
}

py::array_t<uint64_t> hash_texts(const py::list& texts) {
    const size_t n = texts.size();
    std::vector<const char*> ptr(n);
    std::vector<size_t> len(n);
    for (size_t i = 0; i < n; ++i) {
        PyObject* obj = texts[i].ptr();
        if (!PyUnicode_Check(obj))
            throw py::value_error("texts[" + std::to_string(i) + "] is not a str");
        Py_ssize_t size;
        const char* utf8 = PyUnicode_AsUTF8AndSize(obj, &size);
        if (!utf8) throw py::error_already_set();  // e.g. lone surrogates
        ptr[i] = utf8;
        len[i] = static_cast<size_t>(size);
    }
    py::array_t<uint64_t> out(static_cast<py::ssize_t>(n));
    uint64_t* o = out.mutable_data();
    {
        // The UTF-8 buffers are cached on the str objects, which the list keeps alive.
        py::gil_scoped_release nogil;
        std::string buf;
        for (size_t i = 0; i < n; ++i) {
            collapse_whitespace(ptr[i], len[i], buf);
            o[i] = hash_bytes(buf.data(), buf.size());
        }
    }
    return out;
}

py::array_t<int64_t> dedup(const py::array& hashes, const py::object& scores) {
    auto h = expect_1d<uint64_t>(hashes, "hashes");
    const int64_t n = h.shape(0);
    std::vector<uint8_t> keep;
    if (scores.is_none()) {
        py::gil_scoped_release nogil;
        keep = dedup_impl<double>(h.data(), n, nullptr);
    } else {
        py::array arr = py::reinterpret_borrow<py::array>(scores);
        if (!py::isinstance<py::array>(scores)) throw py::value_error("scores: expected an array");
        auto check_len = [&](py::ssize_t m) {
            if (m != n) throw py::value_error("scores: length differs from hashes");
        };
        if (is_float_dtype(arr, 4)) {
            auto s = expect_1d<float>(arr, "scores");
            check_len(s.shape(0));
            py::gil_scoped_release nogil;
            keep = dedup_impl<float>(h.data(), n, s.data());
        } else {
            auto s = expect_1d<double>(arr, "scores");
            check_len(s.shape(0));
            py::gil_scoped_release nogil;
            keep = dedup_impl<double>(h.data(), n, s.data());
        }
    }
    return to_numpy(mask_to_indices(keep));
}

py::array_t<int64_t> union_ordered(const py::list& index_arrays) {
    std::vector<py::array_t<int64_t>> parts;
    int64_t top = -1;
    for (size_t a = 0; a < index_arrays.size(); ++a) {
        auto arr = expect_1d<int64_t>(index_arrays[a].cast<py::array>(),
                                      ("index_arrays[" + std::to_string(a) + "]").c_str());
        for (py::ssize_t i = 0; i < arr.shape(0); ++i) {
            if (arr.data()[i] < 0)
                throw py::value_error("index_arrays[" + std::to_string(a) +
                                      "]: negative index " + std::to_string(arr.data()[i]));
            top = std::max(top, arr.data()[i]);
        }
        parts.push_back(arr);
    }
    std::vector<int64_t> out;
    {
        py::gil_scoped_release nogil;
        std::vector<uint8_t> seen(static_cast<size_t>(top + 1), 0);
        for (auto& arr : parts) {
            for (py::ssize_t i = 0; i < arr.shape(0); ++i) {
                const int64_t v = arr.data()[i];
                if (!seen[v]) {
                    seen[v] = 1;
                    out.push_back(v);
                }
            }
        }
    }
    return to_numpy(std::move(out));
}

}  // namespace car
