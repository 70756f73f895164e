"""A BERT encoder forward over packed (unpadded) token sequences, for CPU inference.

The transformers forward takes a padded [batch, tokens] block. On CPU this is faster
(all-MiniLM-L6-v2, 200 ShareGPT texts, 2 cores: 1.6x in bf16, 1.1x in fp32, measured):
- every dense layer is one GEMM over only the real tokens of the batch ([tokens, hidden]),
  and query, key and value are one GEMM with the three weights side by side;
- attention runs per text, so there is no mask and no padded key: in bf16 on CPUs with
  AVX512-BF16 in one fused native kernel (csrc/attention.cpp; scores stay in L1; +10%),
  else per group of equal-length texts with matmul + softmax, groups capped so that their
  scores stay in the L2 cache;
- a batch of ~4k tokens keeps the FFN activations in the L3 cache;
- dense layers go through oneDNN with bias and GELU fused (car_engine.cpu_linear).

Only the plain BERT architecture is handled (:func:`supports` says which); everything
else, and GPUs, use the transformers forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from car_engine.kernels import attention as fused_attention
from car_engine.kernels.linear import linear

from car_engine.batching import packed_ids
from car_engine.devices import cpu_has_amx
from car_engine.models.folder import body_from_folder, config_of

# Attention scores (heads x n x n) held at once: two 256-token texts of a 12-head model.
# Larger groups spill out of L2 and slowed the softmax by half (measured).
MAX_GROUP_SCORES = 2 ** 21


class _Layer(TypedDict):
    """One encoder layer's weights, cast (see :class:`PackedBert`)."""

    qkv_w: torch.Tensor
    qkv_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    out_norm: tuple[torch.Tensor, torch.Tensor]
    up_w: torch.Tensor
    up_b: torch.Tensor
    down_w: torch.Tensor
    down_b: torch.Tensor
    down_norm: tuple[torch.Tensor, torch.Tensor]


def supports(model: Any) -> str | None:
    """None when ``model`` (a transformers model, or its config as a dict) is a BERT encoder
    this module computes exactly, else the reason."""
    config = config_of(model)
    checks = {
        "model type is not bert": config.get("model_type") != "bert",
        "position embeddings are not absolute":
            config.get("position_embedding_type", "absolute") != "absolute",
        "activation is not exact gelu": config.get("hidden_act") != "gelu",
        "model is a decoder": bool(config.get("is_decoder", False)),
    }
    return next((reason for reason, failed in checks.items() if failed), None)


class PackedBert:
    """The weights of a BERT encoder, cast once to ``dtype``, and a forward over a batch of
    texts given as token ids (no padding anywhere)."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> None:
        """Copy the weights of ``model`` (a transformers ``BertModel``, see :func:`supports`)."""
        self._load(config_of(model), model.state_dict(), dtype)

    @classmethod
    def from_folder(cls, folder: Path, dtype: torch.dtype = torch.float32) -> PackedBert:
        """Read a transformers BERT folder (``config.json``, ``model.safetensors``) straight
        into the packed body, without building the transformers model (its import and
        construction were 2.6 s of a 21 s run, profiled)."""
        return body_from_folder(cls, folder, dtype, "bert.", "BERT")  # BertForX: under bert.

    def _load(self, config: Mapping[str, Any], weights: Mapping[str, torch.Tensor],
              dtype: torch.dtype) -> None:
        reason = supports(config)
        if reason is not None:
            raise ValueError(f"not a plain BERT encoder: {reason}")
        self.heads: int = config["num_attention_heads"]
        self.head_dim: int = config["hidden_size"] // self.heads
        self.eps: float = config.get("layer_norm_eps", 1e-12)
        self.max_positions: int = config["max_position_embeddings"]

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(dtype).contiguous()

        def w(name: str) -> torch.Tensor:
            return weights[name].detach().float()

        def norm(name: str) -> tuple[torch.Tensor, torch.Tensor]:
            return cast(w(f"{name}.weight")), cast(w(f"{name}.bias"))

        self.word = cast(w("embeddings.word_embeddings.weight"))
        self.position = cast(w("embeddings.position_embeddings.weight"))
        self.token_type = cast(w("embeddings.token_type_embeddings.weight")[0])  # all type 0
        self.embed_norm = norm("embeddings.LayerNorm")
        scale = self.head_dim ** -0.5  # folded into the query weights: one less pass per layer
        self.layers: list[_Layer] = []
        for i in range(config["num_hidden_layers"]):
            at = f"encoder.layer.{i}."
            att = at + "attention.self."
            self.layers.append({
                "qkv_w": cast(torch.cat([w(att + "query.weight") * scale, w(att + "key.weight"),
                                         w(att + "value.weight")])),
                "qkv_b": cast(torch.cat([w(att + "query.bias") * scale, w(att + "key.bias"),
                                         w(att + "value.bias")])),
                "out_w": cast(w(at + "attention.output.dense.weight")),
                "out_b": cast(w(at + "attention.output.dense.bias")),
                "out_norm": norm(at + "attention.output.LayerNorm"),
                "up_w": cast(w(at + "intermediate.dense.weight")),
                "up_b": cast(w(at + "intermediate.dense.bias")),
                "down_w": cast(w(at + "output.dense.weight")),
                "down_b": cast(w(at + "output.dense.bias")),
                "down_norm": norm(at + "output.LayerNorm"),
            })

    def __call__(self, token_ids: Sequence[Sequence[int]], *, every_layer: bool = False
                 ) -> list[torch.Tensor]:
        """Last hidden states ``[len(ids), hidden]`` of every text, or with ``every_layer``
        ``[layers, len(ids), hidden]`` (the embeddings' output, then each block's: what an IQS
        layer mix reads, SPEC §10). Texts of equal length next to each other share their
        attention GEMMs, so pass them sorted by length."""
        states, lengths = self.forward_packed(token_ids, every_layer=every_layer)
        return list(states.split(lengths, dim=-2))

    def forward_packed(self, token_ids: Sequence[Sequence[int]], *, every_layer: bool = False
                       ) -> tuple[torch.Tensor, list[int]]:
        """The texts' tokens one after another: last hidden states ``[tokens, hidden]`` (or
        with ``every_layer`` ``[layers, tokens, hidden]``), and each text's length."""
        ids, lengths = packed_ids(token_ids, self.max_positions)
        positions = torch.cat([torch.arange(n) for n in lengths])
        x = self.word[ids] + self.position[positions] + self.token_type
        x = self._norm(x, self.embed_norm)
        states = [x]
        attend = self._attention_for(lengths, x)
        for layer in self.layers:
            context = attend(linear(x, layer["qkv_w"], layer["qkv_b"]))
            x = self._norm(linear(context, layer["out_w"], layer["out_b"]).add_(x),
                           layer["out_norm"])
            up = linear(x, layer["up_w"], layer["up_b"], gelu=True)
            x = self._norm(linear(up, layer["down_w"], layer["down_b"]).add_(x),
                           layer["down_norm"])
            if every_layer:
                states.append(x)
        return (torch.stack(states) if every_layer else x), lengths

    def _attention_for(self, lengths: list[int], x: torch.Tensor
                       ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The attention every layer of this batch uses, with its per-batch layout computed
        once: the fused kernel on CPUs with AVX512-BF16 (bf16 and fp32; in bf16 with AMX,
        PyTorch's flash kernel instead), else matmul + softmax."""
        if fused_attention.runs(x, self.head_dim):
            if x.dtype == torch.bfloat16 and cpu_has_amx():
                runs = self._attention_groups(lengths, capped=False)
                return lambda qkv: self._attention_amx(qkv, runs)
            # fp32: as fast as matmul + softmax at 256 tokens, and the whole one-pass encode
            # of 600 ShareGPT pairs 1.5x faster with the 512-token reads (scores in L1, not
            # 12 x 512 x 512 of them through memory); the same values to 1e-6
            return lambda qkv: fused_attention.fused_attention(qkv, lengths, self.heads)
        groups = self._attention_groups(lengths)
        return lambda qkv: self._attention(qkv, groups)

    def _norm(self, x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), *weights, self.eps)

    def _attention_groups(self, lengths: list[int], capped: bool = True
                          ) -> list[tuple[int, int, int]]:
        """(first token, texts, length) of each run of equal-length texts, cut to
        MAX_GROUP_SCORES unless not ``capped``."""
        groups, start, i = [], 0, 0
        while i < len(lengths):
            n = lengths[i]
            cap = max(1, MAX_GROUP_SCORES // (self.heads * n * n)) if capped else len(lengths)
            j = i + 1
            while j < len(lengths) and lengths[j] == n and j - i < cap:
                j += 1
            groups.append((start, j - i, n))
            start += (j - i) * n
            i = j
        return groups

    def _attention_amx(self, qkv: torch.Tensor, runs: list[tuple[int, int, int]]
                       ) -> torch.Tensor:
        """bf16 attention on a CPU with AMX: each run of equal-length texts (a single text
        too) as one batch of PyTorch's flash kernel, whose AMX tiles beat the fused
        AVX512-BF16 kernel at every length: 1.1-2.7x on one text of 40-500 tokens, 2x on 32
        texts of 512 (benchmarks/RESULTS.md)."""
        hidden = qkv.shape[1] // 3
        context = qkv.new_empty((qkv.shape[0], hidden))
        for start, count, n in runs:
            block = qkv[start:start + count * n].view(count, n, 3, self.heads, self.head_dim)
            q, k, v = block.permute(2, 0, 3, 1, 4).unbind(0)  # each [count, heads, n, head_dim]
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2)
            context[start:start + count * n].view(count, n, self.heads, self.head_dim).copy_(out)
        return context

    def _attention(self, qkv: torch.Tensor, groups: list[tuple[int, int, int]]) -> torch.Tensor:
        """Softmax attention of each text over its own tokens: [tokens, hidden]."""
        hidden = qkv.shape[1] // 3
        context = qkv.new_empty((qkv.shape[0], hidden))
        for start, count, n in groups:
            block = qkv[start:start + count * n].view(count, n, 3, self.heads, self.head_dim)
            q, k, v = block.permute(2, 0, 3, 1, 4).unbind(0)  # each [count, heads, n, head_dim]
            probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1)
            out = torch.matmul(probs, v).transpose(1, 2)  # [count, n, heads, head_dim]
            context[start:start + count * n].view(count, n, self.heads, self.head_dim).copy_(out)
        return context

