// k-way merge of per-shard top-k lists that are each already sorted best-first.
#include "merge.hpp"

#include <algorithm>
#include <queue>

namespace car {

py::tuple merge_topk(const py::list& scores_lists, const py::list& id_lists, int64_t k) {
    if (k < 0) throw py::value_error("k must be >= 0");
    if (scores_lists.size() != id_lists.size())
        throw py::value_error("merge_topk: got " + std::to_string(scores_lists.size()) +
                              " score lists but " + std::to_string(id_lists.size()) + " id lists");
    const size_t L = scores_lists.size();
    std::vector<py::array_t<double>> scores;
    std::vector<py::array_t<int64_t>> ids;
    for (size_t l = 0; l < L; ++l) {
        const std::string tag = "[" + std::to_string(l) + "]";
        auto s = expect_1d<double>(scores_lists[l].cast<py::array>(), ("scores" + tag).c_str());
        auto d = expect_1d<int64_t>(id_lists[l].cast<py::array>(), ("ids" + tag).c_str());
        if (s.shape(0) != d.shape(0))
            throw py::value_error("list " + tag + ": scores and ids differ in length");
        for (py::ssize_t i = 0; i < s.shape(0); ++i) {
            if (std::isnan(s.data()[i]))
                throw py::value_error("scores" + tag + ": NaN at position " + std::to_string(i));
            if (i > 0 && better(Candidate<double>{s.data()[i], d.data()[i]},
                                Candidate<double>{s.data()[i - 1], d.data()[i - 1]}))
                throw py::value_error("list " + tag + " is not sorted best-first at position " +
                                      std::to_string(i));
        }
        scores.push_back(s);
        ids.push_back(d);
    }
    std::vector<double> out_scores;
    std::vector<int64_t> out_ids;
    {
        py::gil_scoped_release nogil;
        // Heap of list heads, best on top: (candidate, list, position).
        struct Head {
            Candidate<double> c;
            size_t list;
            py::ssize_t pos;
        };
        auto worse = [](const Head& a, const Head& b) { return better(b.c, a.c); };
        std::priority_queue<Head, std::vector<Head>, decltype(worse)> heads(worse);
        for (size_t l = 0; l < L; ++l)
            if (scores[l].shape(0) > 0) heads.push({{scores[l].data()[0], ids[l].data()[0]}, l, 0});
        while (!heads.empty() && static_cast<int64_t>(out_ids.size()) < k) {
            Head h = heads.top();
            heads.pop();
            out_scores.push_back(h.c.score);
            out_ids.push_back(h.c.index);
            if (++h.pos < scores[h.list].shape(0)) {
                h.c = {scores[h.list].data()[h.pos], ids[h.list].data()[h.pos]};
                heads.push(h);
            }
        }
    }
    py::array_t<double> s_out(static_cast<py::ssize_t>(out_scores.size()));
    std::copy(out_scores.begin(), out_scores.end(), s_out.mutable_data());
    return py::make_tuple(s_out, to_numpy(std::move(out_ids)));
}

}  // namespace car
