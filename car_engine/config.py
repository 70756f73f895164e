"""The one home of every default and every choice list.

Plain dataclasses and tuples, importing nothing heavy: the pipeline, the stages, the Python
API and the CLI all read their defaults and choices from here (the CLI builds its flags from
these fields), so a default is changed in exactly one place. The duplicates' settings (SPEC §9)
sit beside it in dedup_params.py, which imports only the error classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Any

from car_engine.dedup_params import NEAR_DUP_THRESHOLD, SEMDEDUP_EPS, NearDupParams, check_dedup
from car_engine.errors import UsageError
from car_engine.field_spec import parse_fields

DEFAULT_MODEL = "default"  # the shipped model of a stage (see models/registry.py)

# Choice lists.
METHODS = ("car", "ifd", "car+ifd", "pre-experience")
STRATEGIES = ("n1+k*n2", "k*topn")
BACKENDS = ("local", "ray")
IFD_TEMPLATES = ("none", "alpaca", "vicuna", "chat", "wiz")
IFD_COMPAT = ("superfiltering", "cherry")
IFD_DTYPES = ("fp32", "bf16")
EMBED_DTYPES = ("fp32", "bf16", "fp16")
IQS_RUNTIMES = ("onnx", "torch")
IQS_PRECISIONS = ("fp32", "fp16", "int8")  # ONNX Runtime; eager torch takes fp32|fp16|bf16
IQS_TORCH_PRECISIONS = ("fp32", "fp16", "bf16")
# The prompts each IFD compat preset takes (SPEC §7), its default first: Superfiltering's
# script has one, Cherry LLM's data_analysis.py --prompt alpaca|wiz.
IFD_COMPAT_PROMPTS = {"superfiltering": ("none",), "cherry": ("alpaca", "wiz")}
# The template each IFD compat preset implies when --template is not given.
IFD_COMPAT_TEMPLATES = {name: prompts[0] for name, prompts in IFD_COMPAT_PROMPTS.items()}
# How IFD selection reads a compat preset's scores (SPEC §7): its IFD column, and whether
# exactly 1 is kept (Cherry's data_by_IFD.py drops only > 1; Superfiltering keeps < 1).
IFD_COMPAT_SELECTION = {"superfiltering": ("ifd_ppl", False), "cherry": ("ifd_loss", True)}
IQS_HEAD_INPUTS = ("mean", "segments", "composite")  # CaR | + segment pools | expert - penalties
TABLE_SUFFIXES = (".parquet", ".pq", ".jsonl", ".ndjson")  # what io.write_table can write
SEED_MAX = 2**31 - 1  # FAISS takes the k-means seed as a C int
# --device: auto (a GPU when every library of the stage can use one, else the CPU), cpu, cuda
# (GPU 0) or cuda:N. Asking for CUDA and not getting it is an error (exit 5), never a fallback.
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DEFAULT_DEVICE = "auto"

# Batch sizes that depend on the device: (CPU, GPU). Measured in benchmarks/RESULTS.md. On a
# GPU a batch is also cut at a token budget (rows x longest row), which is what sizes it there.
IQS_BATCH = (4, 1024)
EMBED_BATCH = (16, 1024)
GPU_BATCH_TOKENS = 32768  # IQS and embedding batches on a GPU: tens of thousands of tokens
# "auto" by device: (CPU, GPU). CPU bf16 stays opt-in, even where it is native: see RESULTS.md,
# "Fast defaults" (96.6% of the exact selection; batch-dependent rounding).
AUTO = "auto"
DEVICE_PRECISION = {"iqs": ("fp32", "fp16"), "ifd": ("fp32", "bf16"), "embed": ("fp32", "fp16")}
EMBED_MAX_SEQ_LENGTH = 256
KMEANS_RESTARTS = 1
# split/merge rounds after k-means converges (car_engine/cluster_refine.py; 0: none)
KMEANS_REFINE_ROUNDS = 8
WORKERS = 2  # Ray actors per scoring stage
SCORE_CACHE = "score-cache"  # the score cache's folder inside RUN_DIR, unless one is named
# Output records and field names (SPEC §6): selected.jsonl gives the items back as they came
# ("original"), or converted; --fields names the keys of other single-turn schemas.
OUTPUT_FORMATS = ("original", "alpaca", "sharegpt", "messages")
OUTPUT_FORMAT = "original"
INPUT_DIR = "input"  # where `run` keeps in-memory data it was given, inside RUN_DIR
# Conversations (SPEC §5): score every turn, or the first only (the behaviour before #16), and
# how a conversation's IQS comes from its turns'.
TURNS = ("all", "first")
DEFAULT_TURNS = "all"  # every stage's (IQS, IFD, embeddings): one default for all three
TURN_AGGREGATES = ("mean", "min", "first")


@dataclass(frozen=True)
class IQSParams:
    """The IQS stage: which scorer, on which runtime, at which precision."""

    model: str = DEFAULT_MODEL
    runtime: str = "onnx"
    precision: str = AUTO  # fp32 on CPU, fp16 on GPU; one pass: the embedding's
    batch_size: int | None = None  # None: IQS_BATCH for the device
    device: str = DEFAULT_DEVICE
    turns: str = DEFAULT_TURNS
    turn_aggregate: str = "mean"

    def check(self) -> None:
        """Refuse, before the scorer loads, a runtime, precision or batch size it cannot take."""
        parse_device(self.device)
        check_turns(self.turns, self.turn_aggregate)
        _check_choice("--iqs-runtime", self.runtime, IQS_RUNTIMES)
        precisions = IQS_PRECISIONS if self.runtime == "onnx" else IQS_TORCH_PRECISIONS
        if self.precision not in (AUTO, *precisions):
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
    dtype: str = AUTO  # fp32 on CPU, bf16 on GPU (DEVICE_PRECISION)
    batch_tokens: int = 8192
    device: str = DEFAULT_DEVICE
    turns: str = DEFAULT_TURNS  # a compat preset scores the first turn (its script scores pairs)

    def check(self) -> None:
        """Refuse, before the causal LM loads, a template, preset or size it cannot take."""
        parse_device(self.device)
        check_turns(self.turns)
        _check_choice("--template", self.template, IFD_TEMPLATES)
        if self.compat is not None:
            _check_choice("--compat", self.compat, IFD_COMPAT)
            prompts = IFD_COMPAT_PROMPTS[self.compat]
            if self.template not in ("none", *prompts):
                raise UsageError(f"--compat {self.compat} implies --template "
                                 f"{' or '.join(prompts)}, not '{self.template}'")
        _check_choice("--ifd-dtype", self.dtype, (AUTO, *IFD_DTYPES))
        _check_at_least("--max-length", self.max_length, 2)
        _check_at_least("--batch-tokens", self.batch_tokens, 1)


@dataclass(frozen=True)
class EmbedParams:
    """The embedding stage: the sentence encoder and its precision."""

    model: str = DEFAULT_MODEL
    dtype: str = AUTO  # fp32 on CPU, fp16 on GPU (DEVICE_PRECISION)
    batch_size: int | None = None  # None: EMBED_BATCH for the device
    compile: bool = False
    device: str = DEFAULT_DEVICE
    turns: str = DEFAULT_TURNS

    def check(self) -> None:
        """Refuse, before the encoder loads, a dtype or batch size it cannot take."""
        parse_device(self.device)
        check_turns(self.turns)
        _check_choice("--embed-dtype", self.dtype, (AUTO, *EMBED_DTYPES))
        _check_at_least("--embed-batch-size", self.batch_size, 1)


@dataclass(frozen=True)
class EncodeParams:
    """One encoder pass for IQS and embeddings (SPEC §10): the IQS model whose head reads the
    embedder's hidden states, and the embedder (its precision, batch and device serve both)."""

    iqs_model: str = DEFAULT_MODEL
    embed: EmbedParams = field(default_factory=EmbedParams)
    turn_aggregate: str = IQSParams.turn_aggregate


@dataclass(frozen=True)
class ClusterParams:
    """PCA + k-means (SPEC §3)."""

    k: int | None = None  # None: int(sqrt(n / 2))
    pca_var: float = 0.95
    pca_dim: int | None = None
    seed: int = 42
    device: str = DEFAULT_DEVICE  # where FAISS (and the PCA and k-means++ seeding) run
    n_init: int = KMEANS_RESTARTS
    refine_rounds: int = KMEANS_REFINE_ROUNDS

    def check(self) -> None:
        """Refuse what no clustering can use; --k against the records is :func:`check_k`."""
        parse_device(self.device)
        _check_at_least("--k", self.k, 1)
        if not 0 < self.pca_var <= 1:
            raise UsageError(f"--pca-var must be in (0, 1], got {self.pca_var}")
        _check_at_least("--pca-dim", self.pca_dim, 1)
        _check_at_least("--n-init", self.n_init, 1)
        _check_at_least("--refine-rounds", self.refine_rounds, 0)
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
class PreParams:
    """Cherry LLM's pre-experience subset (SPEC §8): k-means on instruction vectors, then
    ``per_cluster`` records from each cluster's middle perplexity band."""

    k: int = 100
    per_cluster: int = 10
    low: float = 25.0
    high: float = 75.0

    def check(self) -> None:
        """Refuse a k, count or percentile band no sampling can use."""
        _check_at_least("--pre-k", self.k, 1)
        _check_at_least("--pre-per-cluster", self.per_cluster, 1)
        if not 0 <= self.low <= self.high <= 100:
            raise UsageError(f"--pre-percentiles {self.low:g},{self.high:g}: need "
                             "0 <= low <= high <= 100")


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
    n_init: int = ClusterParams.n_init
    refine_rounds: int = ClusterParams.refine_rounds
    iqs: IQSParams = field(default_factory=IQSParams)
    ifd: IFDParams = field(default_factory=IFDParams)
    embed: EmbedParams = field(default_factory=EmbedParams)
    pre: PreParams = field(default_factory=PreParams)
    device: str = DEFAULT_DEVICE  # the clustering's; the scoring stages carry their own
    near_dup: bool = False
    near_dup_threshold: float = NEAR_DUP_THRESHOLD
    semdedup_eps: float | None = SEMDEDUP_EPS
    near: NearDupParams = field(default_factory=NearDupParams)
    exact: bool = False  # fp32 on every stage and device (--exact), whatever auto would pick
    fields: str | None = None  # --fields instruction=KEY,input=KEY,output=KEY
    output_format: str = OUTPUT_FORMAT
    quality_guard: bool = True  # ifd, car+ifd: noise dropped first (quality_guard.py; no compat)
    # the guard's relevance bound (answer vs its own instruction); False
    # (--no-relevance-floor) keeps context-less follow-ups ("continue") and non-English pairs
    relevance_floor: bool = True
    # car, car+ifd: IQS and embeddings from one encoder forward when the IQS backbone is the
    # embedding model (car_engine/one_pass.py; same scores); False (--two-pass): IQS in a
    # pass of its own on its runtime
    one_pass: bool = True

    def check(self) -> None:
        """Refuse, before any model loads, every value that cannot work; with ``exact``, pin
        every precision left at auto to fp32 (and refuse one set to anything else)."""
        if self.exact:
            self._pin_fp32()
        if self.fields is not None:
            parse_fields(self.fields)
        _check_choice("--output-format", self.output_format, OUTPUT_FORMATS)
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
        if self.uses_ifd or self.uses_pre:
            self.ifd.check()
        if self.uses_pre:
            self.pre.check()
            if not 0 <= self.seed <= SEED_MAX:
                raise UsageError(f"--seed must be in 0..{SEED_MAX}, got {self.seed}")

    def _pin_fp32(self) -> None:
        for flag, stage, name in (("--iqs-precision", "iqs", "precision"),
                                  ("--ifd-dtype", "ifd", "dtype"),
                                  ("--embed-dtype", "embed", "dtype")):
            params = getattr(self, stage)
            value = getattr(params, name)
            if value not in (AUTO, "fp32"):
                raise UsageError(f"--exact runs fp32 everywhere, but {flag} is {value}: "
                                 f"drop one of the two")
            setattr(self, stage, replace(params, **{name: "fp32"}))

    @property
    def uses_car(self) -> bool:
        return self.method in ("car", "car+ifd")

    @property
    def uses_ifd(self) -> bool:
        return self.method in ("ifd", "car+ifd")

    @property
    def uses_pre(self) -> bool:
        """Cherry's pre-experience subset: the instruction-only pass on the IFD model."""
        return self.method == "pre-experience"

    @property
    def select(self) -> SelectParams:
        """The selection part of the run."""
        return SelectParams(n1=self.n1, n2=self.n2, strategy=self.strategy,
                            ifd_frac=self.ifd_frac, keep_equal_one=self.keep_equal_one,
                            dedup=self.dedup)

    @property
    def encode(self) -> EncodeParams:
        """The one-pass encoder's part of the run (the IQS model, the embedder's settings)."""
        return EncodeParams(iqs_model=self.iqs.model, embed=self.embed,
                            turn_aggregate=self.iqs.turn_aggregate)

    @property
    def cluster(self) -> ClusterParams:
        """The clustering part of the run."""
        return ClusterParams(k=self.k, pca_var=self.pca_var, pca_dim=self.pca_dim, seed=self.seed,
                             device=self.device, n_init=self.n_init,
                             refine_rounds=self.refine_rounds)


def parse_device(device: str | None) -> tuple[str, int | None]:
    """``(kind, index)`` of a --device value: kind auto|cpu|cuda, index the GPU number of
    ``cuda:N`` (None for plain ``cuda``, meaning GPU 0); None means auto."""
    text = DEFAULT_DEVICE if device is None else str(device).strip().lower()
    if text in ("auto", "cpu", "cuda"):
        return text, None
    kind, _, number = text.partition(":")
    if kind == "cuda" and number.isdigit():
        return "cuda", int(number)
    raise UsageError(f"--device {device}: choose from {'|'.join(DEVICES)} (N a GPU number)")


def resolve_precision(stage: str, value: str, on_gpu: bool) -> str:
    """``value``, or for ``auto`` the stage's precision on this device (DEVICE_PRECISION)."""
    return DEVICE_PRECISION[stage][int(on_gpu)] if value == AUTO else value


def check_turns(turns: str, aggregate: str = "mean") -> None:
    """Refuse a --turns or --turn-aggregate value that is not a choice."""
    _check_choice("--turns", turns, TURNS)
    _check_choice("--turn-aggregate", aggregate, TURN_AGGREGATES)


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
