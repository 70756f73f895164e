"""The CaR/COMET IQS estimator (SPEC §1) over any Hugging Face encoder.

encoder (all hidden states) -> scalar layer mix (sparsemax or softmax, times gamma)
-> mean pooling over non-padding tokens -> feed-forward head (Tanh, dropout) -> score.

``head_input="segments"`` (issue #21) also pools the prompt
(instruction + input), the response and the response's last END_TOKENS tokens of the same
forward on their own and gives the head ``[all, response, prompt * response,
|prompt - response|, end]``: a relevance signal and a "did the answer finish" signal at no extra
encoder cost. The response starts after the ``Response:`` marker's tokens (the first one
after the ``Input:`` marker), found from the token ids inside the model, so every runtime
(eager, ONNX) takes the same two inputs.

``head_input="composite"`` (issue #21) keeps an expert model's mean head and layer mix as
they are (copied in, frozen while training) and subtracts relu-gated penalties: a second
(softmax) layer mix of the same hidden states, pooled the ``order_pools`` ways (the segments
pools plus the response's start, halves and middle third, and [CLS]), into a feed-forward
head with ``penalty_outputs`` outputs, ``score = expert - sum(relu(outputs))``. On a real
answer every output is below 0, so the expert's ranking of real answers is kept exactly;
an output above 0 flags a corruption family (nonsense, wrong topic, cut, reordered). With
``token_stat_ids`` the outputs also add a linear term of the token statistics
(``token_stats.py``: repeated n-grams, the answer's ending, its word overlap with the prompt).

Mean pooling and the layer mix are both linear, so ``pool(mix(h)) == mix(pool(h))``: the
trainer uses that to cache pooled per-layer vectors of frozen layers (see ``train.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from car_engine.config import IQS_HEAD_INPUTS
from car_engine.errors import ModelError
from car_engine.iqs.token_stats import STAT_NAMES, TokenStatistics

LAYER_TRANSFORMS = ("sparsemax", "softmax")
HEAD_INPUTS = IQS_HEAD_INPUTS
END_TOKENS = 8  # the response's last tokens ([SEP] included) pooled as its ending
POOLS = 4  # all tokens, prompt, response, the response's end
ORDER_POOL_NAMES = ("all", "prompt", "response", "end", "start", "first-half", "second-half",
                    "cls", "middle")
ORDER_POOLS = len(ORDER_POOL_NAMES)  # what the feature cache holds (order_pools)
PENALTY_WIDTH = ORDER_POOLS + 2  # penalty_features: hidden-sized blocks
ACTIVATIONS = {"Tanh": nn.Tanh, "ReLU": nn.ReLU, "GELU": nn.GELU, "Sigmoid": nn.Sigmoid}
# Roberta-style encoders count positions from padding_idx + 1, so two positions are unusable.
_POSITION_OFFSET_MODELS = {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"}


def sparsemax(scores: torch.Tensor) -> torch.Tensor:
    """Sparsemax over a 1-D tensor (Martins & Astudillo, 2016): the Euclidean projection onto
    the probability simplex, so low-scoring layers get exactly zero weight."""
    sorted_scores, _ = torch.sort(scores, descending=True)
    ranks = torch.arange(1, scores.numel() + 1, dtype=scores.dtype, device=scores.device)
    cumulative = torch.cumsum(sorted_scores, dim=0)
    in_support = (1 + ranks * sorted_scores) > cumulative
    support = in_support.to(torch.int64).sum()  # the support is a prefix of the sorted scores
    tau = (cumulative[support - 1] - 1) / support.to(scores.dtype)
    return torch.clamp(scores - tau, min=0)


class LayerMix(nn.Module):
    """``gamma * sum_k w_k * tensor_k`` with ``w = sparsemax(s)`` (or softmax): the COMET
    layer-wise attention without layer norm (CaR trains with ``layer_norm: False``)."""

    def __init__(self, num_layers: int, transform: str = "sparsemax") -> None:
        super().__init__()
        if transform not in LAYER_TRANSFORMS:
            raise ModelError(f"layer transform must be one of {LAYER_TRANSFORMS}, "
                             f"not {transform!r}")
        self.transform = transform
        self.scalar_parameters = nn.Parameter(torch.zeros(num_layers))
        self.gamma = nn.Parameter(torch.ones(1))

    def weights(self) -> torch.Tensor:
        """The normalised layer weights (they sum to 1)."""
        if self.transform == "sparsemax":
            return sparsemax(self.scalar_parameters)
        return torch.softmax(self.scalar_parameters, dim=0)

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        """Mix a ``[layers, ...]`` stack along its first axis."""
        weights = self.weights().view(-1, *([1] * (stacked.dim() - 1)))
        return self.gamma * (weights * stacked).sum(dim=0)


def build_head(in_dim: int, hidden_sizes: list[int], activation: str,
               dropout: float, outputs: int = 1) -> nn.Sequential:
    """The COMET feed-forward estimator: (Linear, activation, Dropout) per hidden size, then a
    Linear to ``outputs`` unbounded outputs. Module indices match COMET's ``estimator.ff``."""
    if activation not in ACTIVATIONS:
        raise ModelError(f"activation must be one of {sorted(ACTIVATIONS)}, not {activation!r}")
    layers: list[nn.Module] = []
    width = in_dim
    for size in hidden_sizes:
        layers += [nn.Linear(width, size), ACTIVATIONS[activation](), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the non-padding tokens of ``states[..., batch, tokens, hidden]``."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=-2) / weights.sum(dim=-2).clamp(min=1.0)


def encoder_blocks(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's list of transformer blocks (BERT's ``encoder.layer`` and its kin)."""
    for _, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return module
    raise ModelError(f"{type(encoder).__name__}: cannot find its list of transformer blocks")


def run_blocks(blocks: Iterable[nn.Module], states: torch.Tensor, mask: torch.Tensor,
               response: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Run encoder ``blocks`` on hidden ``states`` (the trainer's cached lower layers) and
    return each block's mean-pooled output (with a ``response`` mask: :func:`order_pools`)."""
    additive = (1.0 - mask[:, None, None, :].to(states.dtype)) * torch.finfo(states.dtype).min
    pooled = []
    for block in blocks:
        out = block(states, attention_mask=additive)
        states = out[0] if isinstance(out, tuple) else out
        pooled.append(masked_mean(states, mask) if response is None
                      else order_pools(states, mask, response))
    return pooled


def marker_hits(input_ids: torch.Tensor, marker: list[int]) -> torch.Tensor:
    """``[batch, tokens]`` bool: the token sequence ``marker`` starts at that position."""
    length = input_ids.shape[1]
    padded = nn.functional.pad(input_ids, (0, len(marker)), value=-1)
    hits = torch.ones_like(input_ids, dtype=torch.bool)
    for k, token in enumerate(marker):
        hits = hits & (padded[:, k:k + length] == token)
    return hits


def response_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  markers: list[list[int]]) -> torch.Tensor:
    """``[batch, tokens]`` bool, true on the response tokens: those after the first response
    marker (``markers[1]``) that follows the first input marker (``markers[0]``, when
    present). No response marker (cut off by truncation): no response tokens. Plain tensor
    ops (no data-dependent shapes), so the ONNX export computes it in the graph."""
    input_marker, response_marker = markers
    positions = torch.cumsum(torch.ones_like(input_ids), dim=1) - 1
    first_input = marker_hits(input_ids, input_marker).float().argmax(dim=1, keepdim=True)
    hits = (marker_hits(input_ids, response_marker) & (positions > first_input)).float()
    first = hits.argmax(dim=1, keepdim=True)
    found = hits.amax(dim=1, keepdim=True) > 0
    return (positions >= first + len(response_marker)) & found & attention_mask.bool()


def segment_pools(states: torch.Tensor, mask: torch.Tensor, response: torch.Tensor
                  ) -> torch.Tensor:
    """``[..., batch, POOLS, hidden]``: the mean over all tokens, the prompt's, the
    response's and that of the response's last END_TOKENS tokens."""
    return torch.stack([masked_mean(states, m) for m in pool_masks(mask, response)], dim=-2)


def order_pools(states: torch.Tensor, mask: torch.Tensor, response: torch.Tensor
                ) -> torch.Tensor:
    """``[..., batch, ORDER_POOLS, hidden]``: :func:`segment_pools` first, then the
    order-sensitive pools the composite head reads (``ORDER_POOL_NAMES[POOLS:]``): the
    response's first END_TOKENS tokens, its first and second half, the first token ([CLS])
    and the response's middle third. Same-length masks of one forward, so still no extra
    encoder cost and no data-dependent shapes."""
    return torch.stack([masked_mean(states, m) for m in pool_masks(mask, response, True)],
                       dim=-2)


def pool_masks(mask: torch.Tensor, response: torch.Tensor, ordered: bool = False
               ) -> list[torch.Tensor]:
    """The ``[batch, tokens]`` masks behind :func:`segment_pools` (and, when ``ordered``,
    :func:`order_pools`)."""
    mask = mask.bool()
    positions = torch.cumsum(torch.ones_like(mask, dtype=torch.int64), dim=1)
    length = mask.to(torch.int64).sum(dim=1, keepdim=True)
    end = response & (positions > length - END_TOKENS)
    masks = [mask, mask & ~response, response, end]
    if ordered:
        inside = torch.cumsum(response.to(torch.int64), dim=1)  # 1.. within the response
        size = response.to(torch.int64).sum(dim=1, keepdim=True)
        masks += [response & (inside <= END_TOKENS),
                  response & (2 * inside <= size), response & (2 * inside > size),
                  mask & (positions == 1),
                  response & (3 * inside > size) & (3 * inside <= 2 * size)]
    return masks


def head_features(pools: torch.Tensor, head_input: str) -> torch.Tensor:
    """What the head reads from ``[batch, POOLS, hidden]`` pools (:func:`segment_pools`)."""
    full, prompt, answer, end = (pools[..., i, :] for i in range(POOLS))
    if head_input in ("mean", "composite"):  # the composite's expert head is a mean head
        return full
    return torch.cat([full, answer, prompt * answer, (prompt - answer).abs(), end], dim=-1)


def penalty_features(pools: torch.Tensor) -> torch.Tensor:
    """What the composite's penalty heads read from ``[batch, ORDER_POOLS, hidden]`` pools
    (:func:`order_pools`): the segments features, the response's start, both halves and
    their difference, [CLS] and the middle third (PENALTY_WIDTH hidden-sized blocks)."""
    full, prompt, answer, end, start, first, second, cls, middle = (
        pools[..., i, :] for i in range(ORDER_POOLS))
    return torch.cat([full, answer, prompt * answer, (prompt - answer).abs(), end, start,
                      first, second, first - second, cls, middle], dim=-1)


def encoder_max_length(config: Any, tokenizer: Any = None) -> int:
    """The longest input (specials included) the encoder's position table allows."""
    limit = int(getattr(config, "max_position_embeddings", 512))
    if getattr(config, "model_type", "") in _POSITION_OFFSET_MODELS:
        pad = getattr(config, "pad_token_id", None)
        limit -= (1 if pad is None else int(pad)) + 1
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < limit:
        limit = tokenizer_limit
    return limit


@dataclass
class IQSConfig:
    """Everything needed to rebuild an :class:`IQSModel` besides its weights (stored as JSON)."""

    backbone: str = "default"  # "default" (all-MiniLM-L6-v2) or a local HF folder
    num_layers: int = 0  # hidden states mixed: embeddings + every block
    hidden_size: int = 0
    hidden_sizes: list[int] = field(default_factory=list)  # empty: [2H, H] for an H-wide encoder
    activation: str = "Tanh"
    dropout: float = 0.1
    layer_transform: str = "sparsemax"
    max_length: int = 512
    trained_encoder_layers: list[int] = field(default_factory=list)  # blocks stored with the head
    train_embeddings: bool = False
    head_input: str = "mean"  # "mean" (CaR), "segments" or "composite" (module docstring)
    segment_markers: list[list[int]] = field(default_factory=list)  # input, response ids
    # composite only: the penalty heads' widths (empty: [H]) and how many gated outputs
    penalty_hidden_sizes: list[int] = field(default_factory=list)
    penalty_outputs: int = 0
    token_stat_ids: dict[str, list[int]] = field(default_factory=dict)  # empty: no statistics
    metrics: dict = field(default_factory=dict)

    def to_json(self) -> str:
        """The config as indented JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_file(cls, path: str | Path) -> IQSConfig:
        """Read a config file, naming unknown fields clearly."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelError(f"{path}: unknown IQS config fields {sorted(unknown)}")
        return cls(**data)


class IQSModel(nn.Module):
    """Scores tokenized pairs: ``forward(input_ids, attention_mask) -> [batch]`` scores."""

    def __init__(self, encoder: nn.Module, config: IQSConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = config
        self.layer_mix = LayerMix(config.num_layers, config.layer_transform)
        if not config.hidden_sizes:  # the reference's 1024 -> 2048 -> 1024 shape, scaled
            config.hidden_sizes = [2 * config.hidden_size, config.hidden_size]
        if config.head_input not in HEAD_INPUTS:
            raise ModelError(f"head_input must be one of {HEAD_INPUTS}, not {config.head_input!r}")
        if config.head_input != "mean" and len(config.segment_markers) != 2:
            raise ModelError(f"head_input {config.head_input!r} needs segment_markers: the "
                             "token ids of the input and the response markers")
        width = config.hidden_size * (POOLS + 1 if config.head_input == "segments" else 1)
        self.head = build_head(width, config.hidden_sizes, config.activation, config.dropout)
        self.composite = config.head_input == "composite"
        if self.composite:  # expert score - sum(relu(penalty outputs)), see model docstring
            if config.penalty_outputs < 1:
                raise ModelError("head_input 'composite' needs penalty_outputs >= 1")
            self.penalty_mix = LayerMix(config.num_layers, "softmax")
            self.penalty = build_head(config.hidden_size * PENALTY_WIDTH,
                                      config.penalty_hidden_sizes or [config.hidden_size],
                                      config.activation, config.dropout, config.penalty_outputs)
        self.token_stats = (TokenStatistics(config.token_stat_ids)
                            if self.composite and config.token_stat_ids else None)
        self.stat_penalty = (nn.Linear(len(STAT_NAMES), config.penalty_outputs)
                             if self.token_stats is not None else None)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """All hidden states (embeddings + every block), stacked as
        ``[layers, batch, tokens, hidden]``."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           output_hidden_states=True, return_dict=True)
        return torch.stack(out.hidden_states, dim=0)

    def response_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                      ) -> torch.Tensor:
        """The response tokens (:func:`response_mask`); none for a ``mean`` head."""
        if self.config.head_input == "mean":
            return torch.zeros_like(attention_mask, dtype=torch.bool)
        return response_mask(input_ids, attention_mask, self.config.segment_markers)

    def mixes(self) -> list[LayerMix]:
        """The layer mixes, in the order :meth:`score_mixes` takes their outputs (the
        composite has a second one for its penalty heads)."""
        return [self.layer_mix, self.penalty_mix] if self.composite else [self.layer_mix]

    def penalty_logits(self, pools: torch.Tensor, stats: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """The composite's raw penalty outputs ``[batch, penalty_outputs]`` from the
        penalty-mixed order pools (and the token statistics, for a model that reads them);
        each counts only above 0 (relu)."""
        logits = self.penalty(penalty_features(pools))
        if self.stat_penalty is not None:
            if stats is None:
                raise ModelError("this IQS model reads token statistics: pass them")
            logits = logits + self.stat_penalty(stats)
        return logits

    def statistics(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   response: torch.Tensor) -> torch.Tensor | None:
        """The token statistics the penalties read (None for a model without them)."""
        if self.token_stats is None:
            return None
        return self.token_stats(input_ids, attention_mask, response)

    def score_pooled(self, pooled_layers: torch.Tensor, stats: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """Scores from per-layer pools ``[layers, batch, pools, hidden]`` (the feature
        cache's order pools; mean and segments heads read the first of them) and, for a
        composite that reads them, the texts' token statistics."""
        scores = self.score_pools(self.layer_mix(pooled_layers))
        if self.composite:
            scores = scores - torch.relu(
                self.penalty_logits(self.penalty_mix(pooled_layers), stats)).sum(dim=-1)
        return scores

    def score_pools(self, pools: torch.Tensor) -> torch.Tensor:
        """Scores from the mixed pools ``[batch, POOLS, hidden]`` (a composite's expert
        score only)."""
        return self.head(head_features(pools, self.config.head_input)).squeeze(-1)

    def score_mixes(self, mixed: list[torch.Tensor], input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores from the layer-mixed token states ``[batch, tokens, hidden]``, one per
        :meth:`mixes` (what the ONNX export computes after its constant mixes)."""
        if not self.composite:
            return self.score_mixed(mixed[0], input_ids, attention_mask)
        expert = self.head(masked_mean(mixed[0], attention_mask)).squeeze(-1)
        response = self.response_mask(input_ids, attention_mask)
        pools = order_pools(mixed[1], attention_mask, response)
        stats = self.statistics(input_ids, attention_mask, response)
        return expert - torch.relu(self.penalty_logits(pools, stats)).sum(dim=-1)

    def score_mixed(self, mixed: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores from the layer-mixed token states ``[batch, tokens, hidden]`` (heads with
        one mix; a composite takes :meth:`score_mixes`)."""
        if self.composite:
            raise ModelError("a composite IQS head mixes the layers twice: use score_mixes")
        if self.config.head_input == "mean":  # the reference's graph, op for op
            return self.head(masked_mean(mixed, attention_mask)).squeeze(-1)
        response = self.response_mask(input_ids, attention_mask)
        return self.score_pools(segment_pools(mixed, attention_mask, response))

    def score_states(self, states: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores from every hidden state ``[layers, batch, tokens, hidden]`` (what an encoder
        forward run elsewhere, e.g. the one-pass encoder, hands over)."""
        # Mix first, pool second: the order of the reference (same result, less memory).
        return self.score_mixes([mix(states) for mix in self.mixes()], input_ids,
                                attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unbounded quality scores, higher is better."""
        states = self.hidden_states(input_ids, attention_mask)
        return self.score_states(states, input_ids, attention_mask)
