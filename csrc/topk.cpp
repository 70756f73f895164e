// Top-k by score and top-n per cluster, in one pass over the scores.
//
// Order everywhere: score descending, ties by lower index; NaN is never selected.
#include "topk.hpp"

#include <algorithm>
#include <limits>

namespace car {
namespace {

// Keeps the best k candidates seen so far in a heap with the worst on top.
template <typename S>
class BoundedHeap {
   public:
    explicit BoundedHeap(int64_t k) : k_(k) { items_.reserve(static_cast<size_t>(k)); }

    inline void offer(S score, int64_t index) {
        if (static_cast<int64_t>(items_.size()) < k_) {
            items_.push_back({score, index});
            std::push_heap(items_.begin(), items_.end(), WorstOnTop<S>());
        } else if (score > items_.front().score ||
                   (score == items_.front().score && index < items_.front().index)) {
            std::pop_heap(items_.begin(), items_.end(), WorstOnTop<S>());
            items_.back() = {score, index};
            std::push_heap(items_.begin(), items_.end(), WorstOnTop<S>());
        }
    }
    // Cheap pre-check for the hot loop: can this score possibly get in?
    inline bool may_enter(S score) const {
        return static_cast<int64_t>(items_.size()) < k_ || score >= items_.front().score;
    }
    std::vector<Candidate<S>>& items() { return items_; }

   private:
    int64_t k_;
    std::vector<Candidate<S>> items_;
};

template <typename S>
std::vector<int64_t> sorted_indices(std::vector<Candidate<S>>& all, int64_t k) {
    const auto keep = std::min<int64_t>(k, static_cast<int64_t>(all.size()));
    std::partial_sort(all.begin(), all.begin() + keep, all.end(), better<S>);
    std::vector<int64_t> out(static_cast<size_t>(keep));
    for (int64_t i = 0; i < keep; ++i) out[i] = all[i].index;
    return out;
}

template <typename S>
std::vector<int64_t> topk_impl(const S* s, int64_t n, int64_t k) {
    if (k <= 0 || n == 0) return {};
    if (k * 4 >= n) {  // most of the array survives: a full sort is cheaper than a heap
        std::vector<Candidate<S>> all;
        all.reserve(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i)
            if (!std::isnan(s[i])) all.push_back({s[i], i});
        return sorted_indices(all, k);
    }
    const int T = threads_for(n);
    std::vector<BoundedHeap<S>> heaps;
    for (int t = 0; t < T; ++t) heaps.emplace_back(k);
    auto scan = [&](int t) {
        const int64_t lo = n * t / T, hi = n * (t + 1) / T;
        auto& heap = heaps[t];
        for (int64_t i = lo; i < hi; ++i) {
            const S v = s[i];
            if (heap.may_enter(v) && !std::isnan(v)) heap.offer(v, i);
        }
    };
    run_threads(T, scan);
    std::vector<Candidate<S>> all;
    for (auto& h : heaps) all.insert(all.end(), h.items().begin(), h.items().end());
    return sorted_indices(all, k);
}

template <typename S, typename L>
std::vector<int64_t> per_cluster_impl(const S* s, const L* labels, int64_t n, int64_t per,
                                      int64_t C) {
    // One flat slab of `per` slots per cluster; each slab is a tiny heap, worst on top.
    const int T = threads_for(n);
    std::vector<std::vector<Candidate<S>>> slabs(T, std::vector<Candidate<S>>(C * per));
    std::vector<std::vector<int64_t>> fill(T, std::vector<int64_t>(C, 0));
    auto scan = [&](int t) {
        const int64_t lo = n * t / T, hi = n * (t + 1) / T;
        auto* slab = slabs[t].data();
        auto* count = fill[t].data();
        for (int64_t i = lo; i < hi; ++i) {
            const S v = s[i];
            const int64_t c = static_cast<int64_t>(labels[i]);
            if (c < 0 || std::isnan(v)) continue;  // unassigned or unscored
            Candidate<S>* h = slab + c * per;
            int64_t& m = count[c];
            if (m < per) {
                h[m++] = {v, i};
                std::push_heap(h, h + m, WorstOnTop<S>());
            } else if (v > h[0].score) {  // ties keep the earlier (lower) index already held
                std::pop_heap(h, h + per, WorstOnTop<S>());
                h[per - 1] = {v, i};
                std::push_heap(h, h + per, WorstOnTop<S>());
            }
        }
    };
    run_threads(T, scan);

    std::vector<int64_t> out;
    std::vector<Candidate<S>> merged;
    for (int64_t c = 0; c < C; ++c) {
        merged.clear();
        for (int t = 0; t < T; ++t) {
            auto* h = slabs[t].data() + c * per;
            merged.insert(merged.end(), h, h + fill[t][c]);
        }
        for (int64_t idx : sorted_indices(merged, per)) out.push_back(idx);
    }
    return out;
}

template <typename S>
std::vector<int64_t> per_cluster_dispatch(const py::array& scores, const py::array& labels,
                                          int64_t per, int64_t C) {
    auto s = expect_1d<S>(scores, "scores");
    const int64_t n = s.shape(0);
    if (py::isinstance<py::array_t<int32_t>>(labels)) {
        auto l = expect_1d<int32_t>(labels, "labels");
        if (l.shape(0) != n) throw py::value_error("labels: length differs from scores");
        py::gil_scoped_release nogil;
        return per_cluster_impl(s.data(), l.data(), n, per, C);
    }
    auto l = expect_1d<int64_t>(labels, "labels");
    if (l.shape(0) != n) throw py::value_error("labels: length differs from scores");
    py::gil_scoped_release nogil;
    return per_cluster_impl(s.data(), l.data(), n, per, C);
}

template <typename L>
int64_t max_label(const py::array& labels) {
    auto l = expect_1d<L>(labels, "labels");
    int64_t m = -1;
    for (py::ssize_t i = 0; i < l.shape(0); ++i) m = std::max<int64_t>(m, l.data()[i]);
    return m;
}

}  // namespace

py::array_t<int64_t> topk(const py::array& scores, int64_t k) {
    if (k < 0) throw py::value_error("k must be >= 0");
    std::vector<int64_t> out;
    if (is_float_dtype(scores, 4)) {
        auto s = expect_1d<float>(scores, "scores");
        py::gil_scoped_release nogil;
        out = topk_impl(s.data(), s.shape(0), k);
    } else {
        auto s = expect_1d<double>(scores, "scores");
        py::gil_scoped_release nogil;
        out = topk_impl(s.data(), s.shape(0), k);
    }
    return to_numpy(std::move(out));
}

py::array_t<int64_t> topk_per_cluster(const py::array& scores, const py::array& labels,
                                      int64_t n_per_cluster, int64_t n_clusters) {
    if (n_per_cluster < 0) throw py::value_error("n_per_cluster must be >= 0");
    const bool i32 = py::isinstance<py::array_t<int32_t>>(labels);
    const int64_t top_label = i32 ? max_label<int32_t>(labels) : max_label<int64_t>(labels);
    if (n_clusters < 0) n_clusters = top_label + 1;
    if (top_label >= n_clusters)
        throw py::value_error("labels: found label " + std::to_string(top_label) +
                              " but n_clusters is " + std::to_string(n_clusters));
    if (n_per_cluster == 0 || n_clusters == 0) return to_numpy({});
    if (n_clusters * n_per_cluster > (int64_t{1} << 31))
        throw py::value_error("n_clusters * n_per_cluster is too large (> 2^31 slots)");
    auto out = is_float_dtype(scores, 4)
                   ? per_cluster_dispatch<float>(scores, labels, n_per_cluster, n_clusters)
                   : per_cluster_dispatch<double>(scores, labels, n_per_cluster, n_clusters);
    return to_numpy(std::move(out));
}

}  // namespace car
