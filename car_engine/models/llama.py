"""A Llama-style causal LM body over packed (unpadded) token sequences, for CPU inference.

The IFD engine needs the final hidden states at answer positions of many short sequences.
The transformers forward takes a padded [batch, tokens] block with an attention mask; on CPU
this module is faster because:
- every dense layer is one GEMM over only the real tokens of the batch, query/key/value are
  one GEMM, and so are the gate and up projections;
- the elementwise work rides inside the GEMMs (oneDNN post-ops): SiLU on the gate, the
  gate x up product, and both residual adds, so no [tokens, 1536] temporary is read twice;
- attention runs per sequence, causal, so there is no mask and no padded key: on CPUs with
  AVX512-BF16 in the fused native kernel (car_engine.fused_attention, bf16 and fp32), else
  PyTorch's scaled_dot_product_attention per sequence;
- a batch of a few thousand tokens keeps the activations in the L3 cache.

Only the plain Llama architecture (SmolLM2, Llama 2/3 without rope scaling) is handled;
:func:`supports` says why a model is not, and the caller falls back to the transformers
forward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from car_engine.kernels import attention as fused_attention
from car_engine.kernels import linear as cpu_linear
from car_engine.kernels import rms_norm as cpu_rms_norm

from car_engine.batching import packed_ids
from car_engine.models.folder import WEIGHTS_FILE, body_from_folder, config_of, read_config

BODY_PREFIX = "model."  # LlamaForCausalLM keeps the body under it
HEAD_WEIGHT = "lm_head.weight"  # absent when tied to the input embeddings


class _Layer(TypedDict):
    """One decoder layer's weights, cast (see :class:`PackedCausalLM`)."""

    attn_norm: torch.Tensor
    qkv: torch.Tensor
    out: torch.Tensor
    mlp_norm: torch.Tensor
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor


def supports(model: Any) -> str | None:
    """None when ``model`` (a ``LlamaForCausalLM`` or its body, or its config as a dict) is
    computed exactly by :class:`PackedCausalLM`, else the reason it is not."""
    config = config_of(model)
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    checks = {
        "model type is not llama": config.get("model_type") != "llama",
        "activation is not silu": config.get("hidden_act") != "silu",
        "attention has biases": bool(config.get("attention_bias", False)),
        "mlp has biases": bool(config.get("mlp_bias", False)),
        "rope is scaled": rope.get("rope_type", "default") != "default",
        "tensor-parallel pretraining split": config.get("pretraining_tp", 1) != 1,
    }
    return next((reason for reason, failed in checks.items() if failed), None)


def packs(folder: Path) -> bool:
    """Whether :meth:`PackedCausalLM.from_folder` reads this model folder (a supported
    config and a safetensors file)."""
    return ((folder / "config.json").is_file() and (folder / WEIGHTS_FILE).is_file()
            and supports(read_config(folder)) is None)


def _rope_theta(config: Mapping[str, Any]) -> float:
    rope = config.get("rope_parameters") or {}
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


class PackedCausalLM:
    """The body weights of a transformers Llama model, cast once to ``dtype``, and a forward
    that returns the final (normed) hidden states of chosen positions of packed sequences."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> None:
        """Take the weights of ``model`` (``LlamaForCausalLM`` or ``LlamaModel``), cast to
        ``dtype``; query/key/value concatenated."""
        weights = {name.removeprefix(BODY_PREFIX): w for name, w in model.state_dict().items()}
        self._load(config_of(model), weights, dtype)

    @classmethod
    def from_folder(cls, folder: Path, dtype: torch.dtype = torch.float32) -> PackedCausalLM:
        """Read a transformers Llama folder (``config.json``, ``model.safetensors``) straight
        into the packed body, without building the transformers model (its import and
        construction were 1.5 s of a 33 s IFD run, profiled)."""
        return body_from_folder(cls, folder, dtype, BODY_PREFIX, "Llama")

    def _load(self, config: Mapping[str, Any], weights: Mapping[str, torch.Tensor],
              dtype: torch.dtype) -> None:
        reason = supports(config)
        if reason is not None:
            raise ValueError(f"not a plain Llama model: {reason}")
        self.heads: int = config["num_attention_heads"]
        self.kv_heads: int = config.get("num_key_value_heads") or self.heads
        self.head_dim: int = config.get("head_dim") or config["hidden_size"] // self.heads
        self.eps: float = config["rms_norm_eps"]
        self.max_positions: int = config["max_position_embeddings"]
        self.dtype = dtype
        self.inv_freq = 1.0 / _rope_theta(config) ** (
            torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)

        def w(name: str) -> torch.Tensor:
            return weights[name].detach()

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(dtype).contiguous()

        # The softmax scale folded into the query weights (rotary embedding is linear, so it
        # commutes): one less pass per layer, and exact in bf16 when head_dim is a power of 4.
        scale = self.head_dim ** -0.5
        self.embed = cast(w("embed_tokens.weight"))
        # The output projection, for the loss: the embeddings themselves when tied.
        tied = HEAD_WEIGHT not in weights and config.get("tie_word_embeddings", True)
        self.head = self.embed if tied else cast(w(HEAD_WEIGHT))
        self.final_norm = cast(w("norm.weight"))
        self.layers: list[_Layer] = []
        for i in range(config["num_hidden_layers"]):
            at = f"layers.{i}."
            att, mlp = at + "self_attn.", at + "mlp."
            self.layers.append({
                "attn_norm": cast(w(at + "input_layernorm.weight")),
                "qkv": cast(torch.cat([w(att + "q_proj.weight") * scale, w(att + "k_proj.weight"),
                                       w(att + "v_proj.weight")])),
                "out": cast(w(att + "o_proj.weight")),
                "mlp_norm": cast(w(at + "post_attention_layernorm.weight")),
                "gate": cast(w(mlp + "gate_proj.weight")),
                "up": cast(w(mlp + "up_proj.weight")),
                "down": cast(w(mlp + "down_proj.weight")),
            })

    def __call__(self, token_ids: Sequence[Sequence[int]], positions: torch.Tensor
                 ) -> torch.Tensor:
        """Final hidden states ``[len(positions), hidden]`` at ``positions``, indices into
        the concatenation of ``token_ids`` (each sequence attends causally to itself only)."""
        ids, lengths = packed_ids(token_ids, self.max_positions)
        cos, sin = self._rope_tables(lengths)
        x = self.embed[ids]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            qkv = cpu_linear.linear(self._norm(x, layer["attn_norm"]), layer["qkv"])
            context = self._attention(qkv, lengths, cos, sin)
            x = cpu_linear.linear_add(context, layer["out"], x)
            if i == last:  # later positions only feed the loss through attention, done now
                x = x[positions]
            h = self._norm(x, layer["mlp_norm"])
            gated = cpu_linear.linear_silu_mul(h, layer["gate"], layer["up"])
            x = cpu_linear.linear_add(gated, layer["down"], x)
        return self._norm(x, self.final_norm)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # One fused pass, fp32 inside (the native kernel: 5x PyTorch's in bf16). transformers
        # rounds the normalised bf16 value before scaling it; this rounds once, after
        # (identical in fp32).
        return cpu_rms_norm.rms_norm(x, weight, self.eps)

    def _rope_tables(self, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[tokens, 1, head_dim / 2]`` for each token's position in its
        sequence, rounded to the model dtype as transformers does."""
        positions = torch.cat([torch.arange(n, dtype=torch.float32) for n in lengths])
        angles = positions[:, None] * self.inv_freq[None, :]
        return (angles.cos().to(self.dtype).unsqueeze(1), angles.sin().to(self.dtype).unsqueeze(1))

    def _rotate_in_place(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                         ) -> None:
        """Rotary embedding of the query and key heads of ``qkv`` (halves rotated, as Llama)."""
        rotated = qkv[:, :(self.heads + self.kv_heads) * self.head_dim]
        first, second = rotated.unflatten(1, (-1, self.head_dim)).chunk(2, dim=-1)
        new_first = first * cos - second * sin
        second.mul_(cos).addcmul_(first, sin)
        first.copy_(new_first)

    def _attention(self, qkv: torch.Tensor, lengths: list[int], cos: torch.Tensor,
                   sin: torch.Tensor) -> torch.Tensor:
        """Causal attention of each sequence over its own tokens: [tokens, heads * head_dim]."""
        self._rotate_in_place(qkv, cos, sin)
        if fused_attention.runs(qkv, self.head_dim):
            return fused_attention.fused_attention(qkv, lengths, self.heads, self.kv_heads,
                                                   causal=True)
        q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = (part.unflatten(1, (-1, self.head_dim)).transpose(0, 1)
                   for part in qkv.split([q_width, kv_width, kv_width], dim=1))
        group = self.heads // self.kv_heads
        context = qkv.new_empty((qkv.shape[0], q_width))
        start = 0
        for n in lengths:
            span = slice(start, start + n)
            # Key/value heads repeated for their query heads: with enable_gqa PyTorch falls
            # back to its unfused math path on CPU (1.7x slower on SmolLM2's shapes, measured).
            keys, values = (t[:, span].repeat_interleave(group, dim=0) for t in (k, v))
            out = F.scaled_dot_product_attention(q[:, span].unsqueeze(0), keys.unsqueeze(0),
                                                 values.unsqueeze(0), is_causal=True, scale=1.0)
            context[span].view(n, self.heads, self.head_dim).copy_(out[0].transpose(0, 1))
            start += n
        return context
