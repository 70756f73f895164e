"""`car-engine cluster`: PCA + k-means over an embeddings .npy, one cluster per record id."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from car_engine.commands import options
from car_engine.config import ClusterParams, check_table_out
from car_engine.errors import CorpusError

if TYPE_CHECKING:
    import numpy as np

NPY_MAGIC = b"\x93NUMPY"  # how every .npy file starts


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``cluster`` subcommand."""
    p = sub.add_parser(
        "cluster",
        help="PCA + k-means over an embeddings .npy (SPEC §3)",
        description="PCA to the fewest components reaching --pca-var of the variance (or "
        "--pca-dim), then seeded k-means (k-means++ starts, FAISS Lloyd) with "
        "k = int(sqrt(n/2)) unless --k. Writes id, cluster, distance (squared L2 to the "
        "cluster's centroid in PCA space); ids come from EMB.ids.parquet, else row positions.",
    )
    p.add_argument("embeddings", help="embeddings file (.npy, e.g. from `car-engine embed`)")
    p.add_argument("--out", required=True, help="clusters file (.parquet or .jsonl)")
    options.add_cluster_flags(p)
    options.add_device(p)
    p.set_defaults(func=run)


def _load(path: str) -> np.ndarray:
    """The memory-mapped [n, d] float array in ``path``, or a clear error."""
    import numpy as np

    if Path(path).is_dir():
        raise CorpusError(f"{path}: is a directory, not a .npy file")
    if not Path(path).is_file():
        raise CorpusError(f"{path}: no such file")
    with open(path, "rb") as f:  # np.load takes anything else for a pickle, and says so
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise CorpusError(f"{path}: not a .npy file (embeddings come from `car-engine "
                              "embed`)")
    try:
        vectors = np.load(path, mmap_mode="r")
    except ValueError as err:
        raise CorpusError(f"{path}: not a .npy array ({err})") from None
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise CorpusError(f"{path}: expected a 2-D float array, got {vectors.dtype} "
                          f"{vectors.shape}")
    return vectors


def run(args: argparse.Namespace) -> int:
    """Cluster the vectors and write one row per id."""
    import pyarrow as pa

    from car_engine.cluster import cluster
    from car_engine.embed_ids import ids_path, read_ids
    from car_engine.io import write_table

    check_table_out(args.out)
    ClusterParams(k=args.k, pca_var=args.pca_var, pca_dim=args.pca_dim, seed=args.seed,
                  device=args.device, n_init=args.n_init,
                  refine_rounds=args.refine_rounds).check()
    vectors = _load(args.embeddings)  # --k against the vectors: cluster() checks it first
    ids = read_ids(args.embeddings)
    if ids is None:
        ids = [str(i) for i in range(vectors.shape[0])]
    elif len(ids) != vectors.shape[0]:
        raise CorpusError(f"{ids_path(args.embeddings)}: {len(ids)} ids for "
                          f"{vectors.shape[0]} vectors")
    result = cluster(vectors, k=args.k, pca_var=args.pca_var, pca_dim=args.pca_dim,
                     seed=args.seed, n_init=args.n_init, refine_rounds=args.refine_rounds,
                     progress=sys.stderr.isatty(), device=args.device)
    write_table(args.out, pa.table({"id": pa.array(ids, pa.string()),
                                    "cluster": result.labels, "distance": result.distances}))
    print(f"wrote {len(ids)} rows to {args.out}: k = {result.k}, PCA {vectors.shape[1]} -> "
          f"{result.n_components} dims ({result.explained_variance:.1%} of the variance), "
          f"inertia {result.inertia:.6g} ({result.runtime})")
    return 0
