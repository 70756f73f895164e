// car_engine._native: the selection arithmetic, in C++ with the GIL released.
#include "attention.hpp"
#include "dedup.hpp"
#include "merge.hpp"
#include "minhash.hpp"
#include "rmsnorm.hpp"
#include "semdedup.hpp"
#include "topk.hpp"

PYBIND11_MODULE(_native, m) {
    m.doc() = "Native top-k, per-cluster top-k, sharded merge, text hashing and dedup.";
    m.def("topk", &car::topk, py::arg("scores"), py::arg("k"),
          "Indices of the k highest scores (float32/float64), best first; ties by lower index; "
          "NaN never selected.");
    m.def("topk_per_cluster", &car::topk_per_cluster, py::arg("scores"), py::arg("labels"),
          py::arg("n_per_cluster"), py::arg("n_clusters") = -1,
          "Indices of the top n of every cluster, grouped by cluster ascending, best first "
          "within a cluster. Negative labels and NaN scores are skipped.");
    m.def("merge_topk", &car::merge_topk, py::arg("scores_lists"), py::arg("id_lists"),
          py::arg("k"),
          "Merge per-shard (scores float64, ids int64) lists, each sorted best-first, into the "
          "global top k. Returns (scores, ids).");
    m.def("hash_texts", &car::hash_texts, py::arg("texts"),
          "64-bit hashes of texts after collapsing whitespace (callers NFC-normalise and "
          "case-fold first).");
    m.def("hash_bytes", [](const py::bytes& b) {
              std::string s = b;
              return car::hash_bytes(s.data(), s.size());
          }, py::arg("data"), "The 64-bit hash of raw bytes (no normalisation).");
    m.def("dedup", &car::dedup, py::arg("hashes"), py::arg("scores") = py::none(),
          "Sorted indices that survive dedup over uint64 hashes: the first occurrence, or with "
          "scores the best-scored one (ties by lower index; NaN ranks last).");
    m.def("attention_supported", &car::attention_supported,
          "Whether attention_bf16 can run here (built in and the CPU has AVX512-BF16).");
    m.def("attention_bf16", &car::attention_bf16, py::arg("qkv"), py::arg("starts"),
          py::arg("lengths"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"),
          py::arg("causal"), py::arg("out"), py::arg("threads"),
          "Softmax attention of every text over its own tokens (causal: earlier ones only): "
          "qkv [tokens, (heads + 2 * kv_heads) * head_dim] bf16 bits as int16 (query "
          "pre-scaled; grouped key/value heads), texts at starts/lengths; writes out "
          "[tokens, heads * head_dim].");
    m.def("attention_f32", &car::attention_f32, py::arg("qkv"), py::arg("starts"),
          py::arg("lengths"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"),
          py::arg("causal"), py::arg("out"), py::arg("threads"),
          "attention_bf16 for fp32 qkv and out.");
    m.def("rms_norm_bf16", &car::rms_norm_bf16, py::arg("x"), py::arg("weight"), py::arg("eps"),
          py::arg("out"), py::arg("threads"),
          "RMSNorm of every row of x [n, d] (bf16 bits as int16) times weight [d], fp32 "
          "inside, rounded once; writes out [n, d].");
    m.def("rms_norm_f32", &car::rms_norm_f32, py::arg("x"), py::arg("weight"), py::arg("eps"),
          py::arg("out"), py::arg("threads"), "rms_norm_bf16 for fp32 x, weight and out.");
    m.def("minhash_signatures", &car::minhash_signatures, py::arg("texts"), py::arg("num_perm"),
          py::arg("seed"), py::arg("ngram"), py::arg("threads") = 0,
          "MinHash signatures [n, num_perm] uint32 over the word n-gram shingles of texts "
          "(whitespace collapsed here; callers case-fold and NFC-normalise); an empty text "
          "is all 0xFFFFFFFF. threads 0: every core.");
    m.def("lsh_groups", &car::lsh_groups, py::arg("signatures"), py::arg("bands"),
          py::arg("rows"), py::arg("threshold"), py::arg("threads") = 0,
          "Banded LSH over signatures, candidates verified by estimated Jaccard >= threshold, "
          "connected components. Returns (groups: smallest index of each row's component, "
          "pair_i, pair_j, pair_similarity) with every candidate pair checked.");
    m.def("union_pairs", &car::union_pairs, py::arg("parent"), py::arg("left"),
          py::arg("right"), "Join pairs (left[k], right[k]) in the union-find forest parent "
          "(int64, in place; roots are the smallest index of their set).");
    m.def("flatten_forest", &car::flatten_forest, py::arg("parent"),
          "Point every entry of a union-find forest straight at its root (in place).");
    m.def("cluster_means", &car::cluster_means, py::arg("x"), py::arg("order"),
          py::arg("offsets"), py::arg("threads") = 0,
          "Mean (float64) of the rows order[offsets[c]:offsets[c+1]] of x, for every c.");
    m.def("semdedup_pairs", &car::semdedup_pairs, py::arg("x"), py::arg("z"),
          py::arg("centres"), py::arg("centres_z"), py::arg("order"), py::arg("offsets"), py::arg("reach"),
          py::arg("cut"), py::arg("tol"), py::arg("threads") = 0, py::arg("plain") = false,
          "SemDeDup pairs of every cluster (members order[offsets[c]:offsets[c+1]], centre "
          "centres[c], z = x B - centres_z[c]): pairs whose bound |w_i - w_j|^2 (w = (z, residual norm)) is within "
          "reach get their full cosine x_i.x_j; returns (left, right, cosine) of those with "
          "cosine >= cut, sorted, and a dict of counts.");
    m.def("union_ordered", &car::union_ordered, py::arg("index_arrays"),
          "Union of int64 index arrays in order of first appearance.");
}
