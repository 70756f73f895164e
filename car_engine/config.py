"""The one home of every default and every choice list.

Plain dataclasses and tuples, importing nothing heavy: the pipeline, the stages, the Python
API and the CLI all read their defaults and choices from here (the CLI builds its flags from
these fields), so a default is changed in exactly one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from car_engine.errors import UsageError

DEFAULT_MODEL = "default"  # the shipped model of a stage (see models/registry.py)

# Choice lists.
METHODS = ("car", "ifd", "car+ifd")
STRATEGIES = ("n1+k*n2", "k*topn")
BACKENDS = ("local", "ray")
IFD_TEMPLATES = ("none", "alpaca", "vicuna", "chat")
IFD_COMPAT = ("superfiltering", "cherry")
IFD_DTYPES = ("fp32", "bf16")
EMBED_DTYPES = ("fp32", "bf16", "fp16")
IQS_RUNTIMES = ("onnx", "torch")
IQS_PRECISIONS = ("fp32", "fp16", "int8")  # ONNX Runtime; eager torch takes fp32|fp16|bf16
IQS_TORCH_PRECISIONS = ("fp32", "fp16", "bf16")
# The template each IFD compat preset implies (car_engine.ifd.COMPAT adds the direct header).
IFD_COMPAT_TEMPLATES = {"superfiltering": "none", "cherry": "alpaca"}
TABLE_SUFFIXES = (".parquet", ".pq", ".jsonl", ".ndjson")  # what io.write_table can write
SEED_MAX = 2**31 - 1  # FAISS takes the k-means seed as a C int

# Batch sizes that depend on the device: (CPU, GPU). Measured in benchmarks/RESULTS.md.
IQS_BATCH = (4, 32)
EMBED_BATCH = (16, 64)
EMBED_MAX_SEQ_LENGTH = 256
KMEANS_RESTARTS = 3
WORKERS = 2  # Ray actors per scoring stage


@dataclass(frozen=True)
class IQSParams:
    """The IQS stage: which scorer, on which runtime, at which precision."""

    model: str = DEFAULT_MODEL
    runtime: str = "onnx"
    precision: str = "fp32"
    batch_size: int | None = None  # None: IQS_BATCH for the device

    def check(self) -> None:
        """Refuse, before the scorer loads, a runtime, precision or batch size it cannot take."""
        _check_choice("--iqs-runtime", self.runtime, IQS_RUNTIMES)
        precisions = IQS_PRECISIONS if self.runtime == "onnx" else IQS_TORCH_PRECISIONS
        if self.precision not in precisions:
            raise UsageError(f"--iqs-precision {self.precision}: the {self.runtime} runtime "
                             f"takes {'|'.join(precisions)}")
        _check_at_least("--iqs-batch-size", self.batch_size, 1)


@dataclass(frozen=True)
class IFDParams:
    """The IFD stage: the causal LM, its prompt, and how sequences are cut and batched."""

    model: str = DEFAULT_MODEL
    template: str = "none"
    compat: str | None = None
    max_length: int = 512
    dtype: str = "fp32"
    batch_tokens: int = 8192

    def check(self) -> None:
        """Refuse, before the causal LM loads, a template, preset or size it cannot take."""
        _check_choice("--template", self.template, IFD_TEMPLATES)
        if self.compat is not None:
            _check_choice("--compat", self.compat, IFD_COMPAT)
            implied = IFD_COMPAT_TEMPLATES[self.compat]
            if self.template not in ("none", implied):
                raise UsageError(f"--compat {self.compat} implies --template {implied}, "
                                 f"not '{self.template}'")
        _check_choice("--ifd-dtype", self.dtype, IFD_DTYPES)
        _check_at_least("--max-length", self.max_length, 2)
        _check_at_least("--batch-tokens", self.batch_tokens, 1)


@dataclass(frozen=True)
class EmbedParams:
    """The embedding stage: the sentence encoder and its precision."""

    model: str = DEFAULT_MODEL
    dtype: str = "fp32"
    batch_size: int | None = None  # None: EMBED_BATCH for the device
    compile: bool = False

    def check(self) -> None:
        """Refuse, before the encoder loads, a dtype or batch size it cannot take."""
        _check_choice("--embed-dtype", self.dtype, EMBED_DTYPES)
        _check_at_least("--embed-batch-size", self.batch_size, 1)


@dataclass(frozen=True)
class ClusterParams:
    """PCA + k-means (SPEC §3)."""

    k: int | None = None  # None: int(sqrt(n / 2))
    pca_var: float = 0.95
    pca_dim: int | None = None
    seed: int = 42

    def check(self) -> None:
        """Refuse what no clustering can use; --k against the records is :func:`check_k`."""
        _check_at_least("--k", self.k, 1)
        if not 0 < self.pca_var <= 1:
            raise UsageError(f"--pca-var must be in (0, 1], got {self.pca_var}")
        _check_at_least("--pca-dim", self.pca_dim, 1)
        if not 0 <= self.seed <= SEED_MAX:
            raise UsageError(f"--seed must be in 0..{SEED_MAX}, got {self.seed}")


@dataclass(frozen=True)
class SelectParams:
    """The selection rules (SPEC §2, §4)."""

    n1: int = 1000
    n2: int = 1
    strategy: str = "n1+k*n2"
    ifd_frac: float = 0.05
    keep_equal_one: bool = False
    dedup: bool = True


@dataclass(frozen=True)
class NearDupParams:
    """MinHash signatures for near duplicates (SPEC §9): NeMo Curator's 20 bands x 13 rows
    (260 permutations; the LSH S-curve crosses 1/2 at Jaccard ~0.79) over word 5-grams. The
    signature stage's fingerprint is these, so a rerun with another threshold reuses it."""

    num_perm: int = 260
    bands: int = 20
    rows: int = 13
    ngram: int = 5
    seed: int = 42


# Near and semantic duplicates (SPEC §9). Both are off by default: measured on
# builtin:sharegpt (benchmarks/RESULTS.md, "Near and semantic duplicates"), and turning either
# on would change the golden outputs.
NEAR_DUP_THRESHOLD = 0.8
SEMDEDUP_EPS: float | None = None  # e.g. 0.05: cosine >= 0.95 inside a k-means cluster


def check_dedup(near_dup_threshold: float, semdedup_eps: float | None) -> None:
    """Refuse a Jaccard threshold outside (0, 1] or an eps outside (0, 1) (usage errors)."""
    if not 0 < near_dup_threshold <= 1:
        raise UsageError(f"--near-dup-threshold must be in (0, 1], got {near_dup_threshold}")
    if semdedup_eps is not None and not 0 < semdedup_eps < 1:
        raise UsageError(f"--semdedup-eps must be in (0, 1), got {semdedup_eps}")


@dataclass
class RunConfig:
    """Everything that decides a run's output (the CLI maps its flags onto these)."""

    method: str = "car"
    n1: int = SelectParams.n1
    n2: int = SelectParams.n2
    strategy: str = SelectParams.strategy
    ifd_frac: float = SelectParams.ifd_frac
    keep_equal_one: bool = SelectParams.keep_equal_one
    limit: int | None = None
    strict: bool = False
    dedup: bool = SelectParams.dedup
    shard_size: int = 2000
    k: int | None = ClusterParams.k
    pca_var: float = ClusterParams.pca_var
    pca_dim: int | None = ClusterParams.pca_dim
    seed: int = ClusterParams.seed
    iqs: IQSParams = field(default_factory=IQSParams)
    ifd: IFDParams = field(default_factory=IFDParams)
    embed: EmbedParams = field(default_factory=EmbedParams)
    near_dup: bool = False
    near_dup_threshold: float = NEAR_DUP_THRESHOLD
    semdedup_eps: float | None = SEMDEDUP_EPS
    near: NearDupParams = field(default_factory=NearDupParams)

    def check(self) -> None:
        """Refuse, before any model loads, every value that cannot work."""
        check_dedup(self.near_dup_threshold, self.semdedup_eps)
        if (self.near_dup or self.semdedup_eps is not None) and not self.uses_car:
            raise UsageError("--near-dup and --semdedup-eps apply to the car and car+ifd "
                             "methods (they collapse duplicates before the CaR picks)")
        if self.method not in METHODS:
            raise UsageError(f"unknown method '{self.method}' (choose from {', '.join(METHODS)})")
        if self.strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy '{self.strategy}' "
                             f"(choose from {', '.join(STRATEGIES)})")
        if self.shard_size < 1:
            raise UsageError("--shard-size must be >= 1")
        if not 0 <= self.ifd_frac <= 1:
            raise UsageError("--ifd-frac must be in [0, 1]")
        if self.n1 < 0 or self.n2 < 0:
            raise UsageError("--n1 and --n2 must be >= 0")
        check_limit(self.limit)
        # Only the stages the method runs: a flag of a stage that does not run changes nothing.
        if self.uses_car:
            self.iqs.check()
            self.embed.check()
            self.cluster.check()
        if self.uses_ifd:
            self.ifd.check()

    @property
    def uses_car(self) -> bool:
        return self.method in ("car", "car+ifd")

    @property
    def uses_ifd(self) -> bool:
        return self.method in ("ifd", "car+ifd")

    @property
    def select(self) -> SelectParams:
        """The selection part of the run."""
        return SelectParams(n1=self.n1, n2=self.n2, strategy=self.strategy,
                            ifd_frac=self.ifd_frac, keep_equal_one=self.keep_equal_one,
                            dedup=self.dedup)

    @property
    def cluster(self) -> ClusterParams:
        """The clustering part of the run."""
        return ClusterParams(k=self.k, pca_var=self.pca_var, pca_dim=self.pca_dim, seed=self.seed)


def check_limit(limit: int | None) -> None:
    """Refuse a negative --limit (a usage error, before anything is read)."""
    _check_at_least("--limit", limit, 0)


def check_k(k: int | None, n_records: int) -> None:
    """Refuse a --k above the number of records to cluster: call it as soon as that number is
    known (right after reading, before any model loads), not when k-means starts."""
    if k is not None and k > n_records:
        raise UsageError(f"--k {k} is more than the {n_records} records read (k-means needs "
                         "at least k records)")


def check_table_out(path: str) -> None:
    """Refuse, before any work, an --out that io.write_table cannot write."""
    if not str(path).endswith(TABLE_SUFFIXES):
        raise UsageError(f"--out {path}: must end in .parquet or .jsonl")


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{flag} {value}: choose from {', '.join(choices)}")


def _check_at_least(flag: str, value: int | None, least: int) -> None:
    """``value`` (None: the default, always fine) must be >= ``least``."""
    if value is not None and value < least:
        raise UsageError(f"{flag} must be >= {least}, got {value}")


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass field ``name`` of ``cls`` (what the CLI shows and uses)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.default
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def params_dict(params: Any) -> dict[str, Any]:
    """A stage's parameters as a plain dict (what its fingerprint is made of)."""
    return dataclasses.asdict(params)
