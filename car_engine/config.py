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


@dataclass(frozen=True)
class IFDParams:
    """The IFD stage: the causal LM, its prompt, and how sequences are cut and batched."""

    model: str = DEFAULT_MODEL
    template: str = "none"
    compat: str | None = None
    max_length: int = 512
    dtype: str = "fp32"
    batch_tokens: int = 8192


@dataclass(frozen=True)
class EmbedParams:
    """The embedding stage: the sentence encoder and its precision."""

    model: str = DEFAULT_MODEL
    dtype: str = "fp32"
    batch_size: int | None = None  # None: EMBED_BATCH for the device
    compile: bool = False


@dataclass(frozen=True)
class ClusterParams:
    """PCA + k-means (SPEC §3)."""

    k: int | None = None  # None: int(sqrt(n / 2))
    pca_var: float = 0.95
    pca_dim: int | None = None
    seed: int = 42


@dataclass(frozen=True)
class SelectParams:
    """The selection rules (SPEC §2, §4)."""

    n1: int = 1000
    n2: int = 1
    strategy: str = "n1+k*n2"
    ifd_frac: float = 0.05
    keep_equal_one: bool = False
    dedup: bool = True


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

    def check(self) -> None:
        """Refuse, before any model loads, every value that cannot work."""
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


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass field ``name`` of ``cls`` (what the CLI shows and uses)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.default
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def params_dict(params: Any) -> dict[str, Any]:
    """A stage's parameters as a plain dict (what its fingerprint is made of)."""
    return dataclasses.asdict(params)
