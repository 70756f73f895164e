// SemDeDup's first test (SPEC §9): the pairs of a cluster whose projected squared distance
// ||z_i - z_j||^2 = zz_i + zz_j - 2 z_i.z_j is within reach, computed without ever writing a
// pair's value to memory (the pairs that pass are rare; numpy would write all m^2).
#include "semdedup.hpp"

#include <immintrin.h>

#include <algorithm>
#include <atomic>

namespace car {
namespace {

// Row i against every later row; appends (i, j) for each pair within reach.
void scan_plain(const float* zt, const float* zz, int64_t m, int d, int64_t i, float reach,
                std::vector<int64_t>& out) {
    for (int64_t j = i + 1; j < m; ++j) {
        float dot = 0;
        for (int k = 0; k < d; ++k) dot += zt[k * m + i] * zt[k * m + j];
        if (zz[i] + zz[j] - 2 * dot <= reach) {
            out.push_back(i);
            out.push_back(j);
        }
    }
}

__attribute__((target("avx2,fma")))
void scan_avx2(const float* zt, const float* zz, int64_t m, int d, int64_t i, float reach,
               std::vector<int64_t>& out) {
    constexpr int V = 8;  // independent accumulators of 8 lanes: 64 rows j at a time
    int64_t j = i + 1;
    const __m256 limit = _mm256_set1_ps(reach - zz[i]);
    for (; j + 8 * V <= m; j += 8 * V) {
        __m256 acc[V];
        for (int v = 0; v < V; ++v) acc[v] = _mm256_setzero_ps();
        for (int k = 0; k < d; ++k) {
            const float* row = zt + k * m + j;
            const __m256 zi = _mm256_set1_ps(-2.0f * zt[k * m + i]);
            for (int v = 0; v < V; ++v)
                acc[v] = _mm256_fmadd_ps(zi, _mm256_loadu_ps(row + 8 * v), acc[v]);
        }
        for (int v = 0; v < V; ++v) {
            // zz_j - 2 z_i.z_j <= reach - zz_i
            const __m256 dist = _mm256_add_ps(acc[v], _mm256_loadu_ps(zz + j + 8 * v));
            int mask = _mm256_movemask_ps(_mm256_cmp_ps(dist, limit, _CMP_LE_OQ));
            while (mask) {
                const int bit = __builtin_ctz(mask);
                mask &= mask - 1;
                out.push_back(i);
                out.push_back(j + 8 * v + bit);
            }
        }
    }
    for (; j < m; ++j) {
        float dot = 0;
        for (int k = 0; k < d; ++k) dot += zt[k * m + i] * zt[k * m + j];
        if (zz[i] + zz[j] - 2 * dot <= reach) {
            out.push_back(i);
            out.push_back(j);
        }
    }
}

}  // namespace

py::object projected_pairs(const py::array& zt_arr, const py::array& zz_arr, int64_t lo,
                           int64_t hi, double reach, int64_t max_pairs, int threads) {
    if (!py::isinstance<py::array_t<float>>(zt_arr) || zt_arr.ndim() != 2 ||
        !(zt_arr.flags() & py::array::c_style))
        throw py::value_error("zt: expected a C-contiguous 2-D float32 array [dims, rows]");
    auto zt = py::reinterpret_borrow<py::array_t<float>>(zt_arr);
    auto zz = expect_1d<float>(zz_arr, "zz");
    const int d = static_cast<int>(zt.shape(0));
    const int64_t m = zt.shape(1);
    if (zz.shape(0) != m) throw py::value_error("zz: one value per row of zt");
    if (lo < 0 || hi > m || lo > hi) throw py::value_error("rows [lo, hi) out of range");
    const float* z = zt.data();
    const float* q = zz.data();
    const float r = static_cast<float>(reach);
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int T = static_cast<int>(std::max<int64_t>(
        1, std::min<int64_t>(threads > 0 ? threads : hw, (hi - lo) / 16 + 1)));
    std::vector<std::vector<int64_t>> found(T);
    std::atomic<int64_t> next{lo}, total{0};
    std::atomic<bool> over{false};
    {
        py::gil_scoped_release nogil;
        auto worker = [&](int t) {
            auto& mine = found[t];
            for (;;) {
                const int64_t a = next.fetch_add(8);
                if (a >= hi || over.load()) return;
                const size_t before = mine.size();
                for (int64_t i = a; i < std::min(hi, a + 8); ++i) {
                    if (avx2) scan_avx2(z, q, m, d, i, r, mine);
                    else scan_plain(z, q, m, d, i, r, mine);
                }
                if (total.fetch_add(static_cast<int64_t>(mine.size() - before) / 2) > max_pairs)
                    over.store(true);
            }
        };
        std::vector<std::thread> pool;
        for (int t = 1; t < T; ++t) pool.emplace_back(worker, t);
        worker(0);
        for (auto& th : pool) th.join();
    }
    if (over.load()) return py::none();
    // Pairs in (i, j) order whichever thread found them: the same output every time.
    std::vector<std::pair<int64_t, int64_t>> pairs;
    for (auto& f : found)
        for (size_t k = 0; k < f.size(); k += 2) pairs.emplace_back(f[k], f[k + 1]);
    std::sort(pairs.begin(), pairs.end());
    std::vector<int64_t> left(pairs.size()), right(pairs.size());
    for (size_t k = 0; k < pairs.size(); ++k) {
        left[k] = pairs[k].first;
        right[k] = pairs[k].second;
    }
    return py::make_tuple(to_numpy(std::move(left)), to_numpy(std::move(right)));
}

}  // namespace car
