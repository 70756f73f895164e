// SemDeDup's search (SPEC §9) over every cluster in one call: for unit vectors,
// cos(x, y) >= 1 - eps  <=>  |x - y|^2 <= 2 eps, and |x - y| does not change when both are
// moved by their cluster's centre c. Split x - c into its part z in an orthonormal basis B of
// k directions and a residual of norm r: |x - y|^2 = |z_x - z_y|^2 + |res_x - res_y|^2
// >= |z_x - z_y|^2 + (r_x - r_y)^2 (reverse triangle inequality). With the augmented vector
// w = (z, r), that lower bound is |w_x - w_y|^2 = q_x + q_y - 2 w_x.w_y (q = |x - c|^2): a dot
// product of k + 1 values instead of d. Pairs whose bound is over the radius cannot match;
// the rest get their full cosine. Nothing m x m is ever written: memory is linear in n.
#include "semdedup.hpp"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <limits>
#include <tuple>

namespace car {
namespace {

constexpr int MR = 6;   // rows i of a tile (broadcast)
constexpr int NR = 16;  // rows j of a tile (two 8-lane vectors)

struct Packed {
    int64_t K = 0;                 // w's length: k + 1 rounded up to 8
    std::vector<float> rows;       // [positions][K], w row by row (positions = cluster order)
    std::vector<float> panels;     // per cluster, per 16 rows: [K][16] (j side of a tile)
    std::vector<float> half;       // per panel slot: q / 2 (+inf for padding)
    std::vector<int64_t> panel_at; // per cluster: first panel slot (a multiple of 16)
};

using Out = std::vector<std::tuple<int64_t, int64_t, float>>;

struct Cluster {
    int64_t begin, size;  // positions in order
};

float full_dot(const float* a, const float* b, int64_t d, bool avx2);

__attribute__((target("avx2,fma")))
float full_dot_avx2(const float* a, const float* b, int64_t d) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= d; k += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), s1);
    }
    for (; k + 8 <= d; k += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), s0);
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, _mm256_add_ps(s0, s1));
    float s = 0;
    for (float v : lanes) s += v;
    for (; k < d; ++k) s += a[k] * b[k];
    return s;
}

float full_dot(const float* a, const float* b, int64_t d, bool avx2) {
    if (avx2) return full_dot_avx2(a, b, d);
    float s = 0;
    for (int64_t k = 0; k < d; ++k) s += a[k] * b[k];
    return s;
}

// Context of one cluster's search.
struct Search {
    const Packed& p;
    const float* x;
    int64_t d;
    const int64_t* order;
    Cluster c;
    int64_t slot;  // the cluster's first panel slot
    float reach_half, cut;
    bool avx2;
};

// Pair (a, b) of positions inside the cluster passed the bound: its full cosine.
inline void check(const Search& s, int64_t a, int64_t b, Out& out, int64_t& passed) {
    ++passed;
    const int64_t ra = s.order[s.c.begin + a], rb = s.order[s.c.begin + b];
    const float sim = full_dot(s.x + ra * s.d, s.x + rb * s.d, s.d, s.avx2);
    if (sim >= s.cut) out.emplace_back(std::min(ra, rb), std::max(ra, rb), sim);
}

// Tile rows [i0, i0 + MR) against panel rows [j0, j0 + NR): w_i.w_j - q_j / 2 >= q_i / 2 -
// reach / 2 passes (the bound |w_i - w_j|^2 <= reach).
void tile_plain(const Search& s, int64_t i0, int64_t j0, Out& out, int64_t& passed) {
    const int64_t K = s.p.K, m = s.c.size;
    const float* pan = s.p.panels.data() + (s.slot + j0) * K;
    const float* hj = s.p.half.data() + s.slot + j0;
    for (int64_t i = i0; i < std::min(m, i0 + MR); ++i) {
        const float* wi = s.p.rows.data() + (s.c.begin + i) * K;
        const float limit = s.p.half[s.slot + i] - s.reach_half;
        for (int j = 0; j < NR; ++j) {
            if (j0 + j <= i || j0 + j >= m) continue;
            float dot = 0;
            for (int64_t k = 0; k < K; ++k) dot += wi[k] * pan[k * NR + j];
            if (dot - hj[j] >= limit) check(s, i, j0 + j, out, passed);
        }
    }
}

__attribute__((target("avx2,fma")))
void tile_avx2(const Search& s, int64_t i0, int64_t j0, Out& out, int64_t& passed) {
    const int64_t K = s.p.K, m = s.c.size;
    const float* pan = s.p.panels.data() + (s.slot + j0) * K;
    const float* w[MR];
    for (int r = 0; r < MR; ++r)  // rows past the cluster's end read a valid row, never pass
        w[r] = s.p.rows.data() + (s.c.begin + std::min(i0 + r, m - 1)) * K;
    __m256 acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; ++k) {
        const __m256 b0 = _mm256_loadu_ps(pan + k * NR), b1 = _mm256_loadu_ps(pan + k * NR + 8);
        for (int r = 0; r < MR; ++r) {
            const __m256 a = _mm256_broadcast_ss(w[r] + k);
            acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    const float* hj = s.p.half.data() + s.slot + j0;
    const __m256 h0 = _mm256_loadu_ps(hj), h1 = _mm256_loadu_ps(hj + 8);
    for (int r = 0; r < MR && i0 + r < m; ++r) {
        const int64_t i = i0 + r;
        const __m256 limit = _mm256_set1_ps(s.p.half[s.slot + i] - s.reach_half);
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(acc[r][0], h0), limit,
                                                    _CMP_GE_OQ)) |
                   _mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(acc[r][1], h1), limit,
                                                    _CMP_GE_OQ)) << 8;
        while (mask) {
            const int64_t j = j0 + __builtin_ctz(mask);
            mask &= mask - 1;
            if (j > i && j < m) check(s, i, j, out, passed);
        }
    }
}

__attribute__((target("avx2,fma")))
double centred_norm_avx2(const float* x, const float* c, int64_t d) {
    __m256 s0 = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 8 <= d; t += 8) {
        const __m256 v = _mm256_sub_ps(_mm256_loadu_ps(x + t), _mm256_loadu_ps(c + t));
        s0 = _mm256_fmadd_ps(v, v, s0);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, s0);
    double s = 0;
    for (float v : lanes) s += v;
    for (; t < d; ++t) s += double(x[t] - c[t]) * (x[t] - c[t]);
    return s;
}

// |x - c|^2, float32 products summed in 8 lanes (relative error ~1e-6 for d = 384, far
// inside tol).
double centred_norm(const float* x, const float* c, int64_t d, bool avx2) {
    if (avx2) return centred_norm_avx2(x, c, d);
    double s = 0;
    for (int64_t t = 0; t < d; ++t) s += double(x[t] - c[t]) * (x[t] - c[t]);
    return s;
}

// Writes w = (z, r) row by row and into 16-row panels, and q / 2, threads over clusters;
// returns the slack the float32 inputs call for (see semdedup_pairs).
double pack(const float* x, int64_t d, const float* z, int64_t k, const float* centres,
            const float* centres_z, const int64_t* order, const std::vector<Cluster>& clusters, double tol, int T,
            bool avx2, Packed& p) {
    p.K = (k + 1 + 7) / 8 * 8;
    const int64_t K = p.K;
    int64_t slots = 0;
    for (const auto& c : clusters) {
        p.panel_at.push_back(slots);
        slots += (c.size + NR - 1) / NR * NR;
    }
    const int64_t positions = clusters.empty() ? 0 : clusters.back().begin + clusters.back().size;
    p.rows.assign(positions * K, 0.0f);
    p.panels.assign(slots * K, 0.0f);
    p.half.assign(slots, std::numeric_limits<float>::infinity());
    std::vector<double> u_max(T, 0.0), r_max(T, 0.0);
    std::atomic<size_t> next{0};
    auto worker = [&](int th) {
        for (size_t ci; (ci = next.fetch_add(1)) < clusters.size();) {
            const Cluster& c = clusters[ci];
            for (int64_t a = 0; a < c.size; ++a) {
                const int64_t row = order[c.begin + a];
                const double q = centred_norm(x + row * d, centres + ci * d, d, avx2);
                double zz = 0;
                float* wr = p.rows.data() + (c.begin + a) * K;
                for (int64_t t = 0; t < k; ++t) {
                    wr[t] = z[row * k + t] - centres_z[ci * k + t];
                    zz += double(wr[t]) * wr[t];
                }
                // r^2 = q - |z|^2 carries z's float32 rounding (at most tol * q): r is off by
                // at most u = tol q / (r + sqrt(tol q)).
                const double r = std::sqrt(std::max(0.0, q - zz)), err = tol * q;
                u_max[th] = std::max(u_max[th], err / (r + std::sqrt(err)));
                r_max[th] = std::max(r_max[th], r);
                wr[k] = static_cast<float>(r);
                const int64_t slot = p.panel_at[ci] + a;
                float* pan = p.panels.data() + (slot / NR) * NR * K + slot % NR;
                for (int64_t t = 0; t <= k; ++t) pan[t * NR] = wr[t];
                p.half[slot] = static_cast<float>((zz + double(wr[k]) * wr[k]) / 2);
            }
        }
    };
    run_threads(T, worker);
    const double u = *std::max_element(u_max.begin(), u_max.end());
    const double rm = *std::max_element(r_max.begin(), r_max.end());
    // (r_x - r_y)^2 is then off by at most 2u (2 r_max + 2u); float32 sums of K products of
    // values up to ~|x - c| add a few ulps of q.
    return 4 * u * (rm + u) + 1e-5 * double(K) * 4;
}

}  // namespace

py::array_t<double> cluster_means(const py::array& x_arr, const py::array& order_arr,
                                  const py::array& offsets_arr, int threads) {
    if (!py::isinstance<py::array_t<float>>(x_arr) || x_arr.ndim() != 2 ||
        !(x_arr.flags() & py::array::c_style))
        throw py::value_error("x: expected a C-contiguous 2-D float32 array");
    auto x = py::reinterpret_borrow<py::array_t<float>>(x_arr);
    auto order = expect_1d<int64_t>(order_arr, "order");
    auto offsets = expect_1d<int64_t>(offsets_arr, "offsets");
    const int64_t n = x.shape(0), d = x.shape(1), c = offsets.shape(0) - 1;
    const int64_t *o = order.data(), *off = offsets.data();
    for (int64_t a = 0; a < c; ++a)
        if (off[a] < 0 || off[a + 1] < off[a] || off[a + 1] > order.shape(0))
            throw py::value_error("offsets: expected non-decreasing positions into order");
    for (int64_t a = 0; a < order.shape(0); ++a)
        if (o[a] < 0 || o[a] >= n) throw py::value_error("order: row out of range");
    py::array_t<double> out({std::max<int64_t>(c, 0), d});
    double* mean = out.mutable_data();
    const float* xs = x.data();
    {
        py::gil_scoped_release nogil;
        std::atomic<int64_t> next{0};
        auto worker = [&]() {
            for (int64_t ci; (ci = next.fetch_add(1)) < c;) {
                double* m = mean + ci * d;
                std::fill(m, m + d, 0.0);
                for (int64_t a = off[ci]; a < off[ci + 1]; ++a)
                    for (int64_t t = 0; t < d; ++t) m[t] += xs[o[a] * d + t];
                const double size = double(std::max<int64_t>(1, off[ci + 1] - off[ci]));
                for (int64_t t = 0; t < d; ++t) m[t] /= size;
            }
        };
        run_threads(pick_threads(threads, c), [&](int) { worker(); });
    }
    return out;
}

py::tuple semdedup_pairs(const py::array& x_arr, const py::array& z_arr,
                         const py::array& centres_arr, const py::array& centres_z_arr,
                         const py::array& order_arr,
                         const py::array& offsets_arr, double reach, double cut, double tol,
                         int threads, bool plain) {
    auto expect_2d = [](const py::array& a, const char* name) {
        if (!py::isinstance<py::array_t<float>>(a) || a.ndim() != 2 ||
            !(a.flags() & py::array::c_style))
            throw py::value_error(std::string(name) + ": expected a C-contiguous 2-D float32 "
                                  "array");
        return py::reinterpret_borrow<py::array_t<float>>(a);
    };
    auto x = expect_2d(x_arr, "x"), z = expect_2d(z_arr, "z"), cen = expect_2d(centres_arr,
                                                                               "centres");
    auto cz = expect_2d(centres_z_arr, "centres_z");
    auto order = expect_1d<int64_t>(order_arr, "order");
    auto offsets = expect_1d<int64_t>(offsets_arr, "offsets");
    const int64_t n = x.shape(0), d = x.shape(1), k = z.shape(1);
    if (cz.shape(0) != cen.shape(0) || cz.shape(1) != k)
        throw py::value_error("centres_z: one row of z's width per cluster");
    if (z.shape(0) != n) throw py::value_error("z: one row per row of x");
    if (cen.shape(1) != d || cen.shape(0) != offsets.shape(0) - 1)
        throw py::value_error("centres: one row of x's width per cluster (offsets - 1)");
    const int64_t* off = offsets.data();
    std::vector<Cluster> clusters;
    for (int64_t c = 0; c + 1 < offsets.shape(0); ++c) {
        if (off[c] < 0 || off[c + 1] < off[c] || off[c + 1] > order.shape(0))
            throw py::value_error("offsets: expected non-decreasing positions into order");
        clusters.push_back({off[c], off[c + 1] - off[c]});
    }
    for (int64_t a = 0; a < order.shape(0); ++a)
        if (order.data()[a] < 0 || order.data()[a] >= n)
            throw py::value_error("order: row out of range");
    const bool avx2 = !plain && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    Packed p;
    int64_t passed_all = 0;
    double slack = 0, pack_s = 0, search_s = 0;
    std::vector<Out> found;
    {
        py::gil_scoped_release nogil;
        const auto t0 = std::chrono::steady_clock::now();
        const int T = pick_threads(threads, int64_t(clusters.size()));
        slack = pack(x.data(), d, z.data(), k, cen.data(), cz.data(), order.data(), clusters,
                     tol, T, avx2, p);
        const auto t1 = std::chrono::steady_clock::now();
        pack_s = std::chrono::duration<double>(t1 - t0).count();
        // Tasks: 96 rows of a cluster against its later rows, largest first (load balance).
        std::vector<std::tuple<int64_t, int64_t, int64_t>> tasks;  // (cost, cluster, i0)
        for (size_t c = 0; c < clusters.size(); ++c)
            for (int64_t i0 = 0; i0 + 1 < clusters[c].size; i0 += 16 * MR)
                tasks.emplace_back(-(clusters[c].size - i0), int64_t(c), i0);
        std::sort(tasks.begin(), tasks.end());
        found.resize(T);
        std::vector<int64_t> passed(T, 0);
        std::atomic<size_t> next{0};
        const float reach_half = static_cast<float>((reach + slack) / 2);
        auto worker = [&](int t) {
            for (;;) {
                const size_t at = next.fetch_add(1);
                if (at >= tasks.size()) return;
                const auto [cost, ci, i0] = tasks[at];
                (void)cost;
                const Search s{p, x.data(), d, order.data(), clusters[ci], p.panel_at[ci],
                               reach_half, static_cast<float>(cut), avx2};
                const int64_t m = s.c.size;
                for (int64_t i = i0; i < std::min(m, i0 + 16 * MR); i += MR)
                    for (int64_t j0 = i / NR * NR; j0 < m; j0 += NR) {
                        if (avx2) tile_avx2(s, i, j0, found[t], passed[t]);
                        else tile_plain(s, i, j0, found[t], passed[t]);
                    }
            }
        };
        run_threads(T, worker);
        for (int64_t v : passed) passed_all += v;
        search_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    }
    // Sorted by (left, right) whichever thread found them: the same output every time.
    Out all;
    for (auto& f : found) all.insert(all.end(), f.begin(), f.end());
    std::sort(all.begin(), all.end());
    std::vector<int64_t> left(all.size()), right(all.size());
    py::array_t<float> sims(static_cast<py::ssize_t>(all.size()));
    float* sv = sims.mutable_data();
    for (size_t a = 0; a < all.size(); ++a) std::tie(left[a], right[a], sv[a]) = all[a];
    py::dict stats;
    stats["passed_bound"] = passed_all;
    stats["slack"] = slack;
    stats["pack_s"] = pack_s;
    stats["search_s"] = search_s;
    return py::make_tuple(to_numpy(std::move(left)), to_numpy(std::move(right)), sims, stats);
}

}  // namespace car
