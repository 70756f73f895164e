// Shared helpers for the native routines: argument checks and the "better" order.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

namespace py = pybind11;

namespace car {

// A candidate in a ranking: higher score first, then lower index (input order).
template <typename S>
struct Candidate {
    S score;
    int64_t index;
};

template <typename S>
inline bool better(const Candidate<S>& a, const Candidate<S>& b) {
    return a.score > b.score || (a.score == b.score && a.index < b.index);
}

// Heap comparator that keeps the *worst* kept candidate on top, so a newcomer only
// has to beat heap.front() to get in.
template <typename S>
struct WorstOnTop {
    bool operator()(const Candidate<S>& a, const Candidate<S>& b) const { return better(a, b); }
};

// Threads worth using for a scan over n elements: one per 2M elements, capped by the machine.
inline int threads_for(int64_t n) {
    const int64_t hw = std::max(1u, std::thread::hardware_concurrency());
    const int64_t wanted = std::max<int64_t>(1, n / 2'000'000);
    return static_cast<int>(std::min(hw, wanted));
}

// Threads for a caller's request (0: the machine's), never more than units of work.
inline int pick_threads(int threads, int64_t work) {
    const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int t = threads > 0 ? threads : hw;
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(t, work)));
}

// Run work(t) for t in [0, threads): t = 0 on the calling thread, the rest on new ones.
template <typename F>
void run_threads(int threads, F work) {
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
    work(0);
    for (auto& th : pool) th.join();
}

// Run body(i) for i in [0, n) on `threads` threads, handing out chunks of `chunk` as each
// thread finishes its last (items of uneven cost balance themselves).
template <typename F>
void parallel_for(int64_t n, int threads, int64_t chunk, F body) {
    std::atomic<int64_t> next{0};
    run_threads(threads, [&](int) {
        for (int64_t lo; (lo = next.fetch_add(chunk)) < n;) {
            const int64_t hi = std::min(n, lo + chunk);
            for (int64_t i = lo; i < hi; ++i) body(i);
        }
    });
}

// A 1-D, C-contiguous numpy array of exactly dtype T, or ValueError naming the argument.
template <typename T>
py::array_t<T> expect_1d(const py::array& arr, const char* name) {
    // isinstance<array_t<T>> compares dtypes by equivalence (numpy's EquivTypes), not by
    // identity: arrays from pickles or Ray's object store carry equal, distinct dtype objects.
    if (!py::isinstance<py::array_t<T>>(arr)) {
        throw py::value_error(std::string(name) + ": expected dtype " +
                              std::string(py::str(py::dtype::of<T>())) + ", got " +
                              std::string(py::str(arr.dtype())));
    }
    if (arr.ndim() != 1) {
        throw py::value_error(std::string(name) + ": expected a 1-D array, got " +
                              std::to_string(arr.ndim()) + " dimensions");
    }
    if (!(arr.flags() & py::array::c_style)) {
        throw py::value_error(std::string(name) + ": expected a contiguous array");
    }
    return py::reinterpret_borrow<py::array_t<T>>(arr);
}

inline bool is_float_dtype(const py::array& arr, char kind_size) {
    return arr.dtype().kind() == 'f' && arr.dtype().itemsize() == kind_size;
}

inline py::array_t<int64_t> to_numpy(std::vector<int64_t>&& v) {
    auto* heap = new std::vector<int64_t>(std::move(v));
    py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<int64_t>*>(p); });
    return py::array_t<int64_t>(static_cast<py::ssize_t>(heap->size()), heap->data(), owner);
}

}  // namespace car
