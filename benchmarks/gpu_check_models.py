"""benchmarks/gpu_check.py's model sections: IFD end to end with a random-init SmolLM2-135M, and
the embedder and the IQS torch runtime with a random-init all-MiniLM-L6-v2, each against its
exact twin. No files or network: configs carry the published dimensions, weights are seeded
random, inputs are random token ids (a word vocabulary written on the fly for the encoders)."""

from __future__ import annotations

import copy
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# SmolLM2-135M (HuggingFaceTB/SmolLM2-135M config.json) and a tiny stand-in for CPU runs.
SMOLLM2 = {"full": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                        max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
           "tiny": dict(vocab_size=1024, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=1024, tie_word_embeddings=True,
                        bos_token_id=1, eos_token_id=2)}
# all-MiniLM-L6-v2 (sentence-transformers/all-MiniLM-L6-v2 config.json) and a tiny stand-in.
MINILM = {"full": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                       num_attention_heads=12, intermediate_size=1536,
                       max_position_embeddings=512),
          "tiny": dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)}
# IFD: records, the batch-1 parity subset, token budgets, the batch-1 speed subset.
IFD_SIZES = {"full": dict(records=1500, parity=48, budgets=(8192, 32768, 65536), batch1=64,
                          profile_budget=32768, max_length=1024),
             "tiny": dict(records=6, parity=6, budgets=(512,), batch1=4,
                          profile_budget=512, max_length=64)}
ENCODER_SIZES = {"full": dict(texts=4096, words=(32, 250)), "tiny": dict(texts=8, words=(4, 24))}
# Parity: losses of the batched forward against the batch-1 HF forward (fp32 twin of the model).
IFD_TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2}
COSINE_MIN = {"fp16": 0.999, "bf16": 0.99}
# IQS scores: the largest fp32-vs-low difference over the fp32 scores' spread (a random head
# spreads them little, so this is strict), and their rank correlation.
IQS_DIFF_OVER_STD = {"fp16": 0.05, "bf16": 0.2}
IQS_SPEARMAN_MIN = {"fp16": 0.99, "bf16": 0.9}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_sequences(n_records: int, vocab: int, max_length: int, seed: int) -> list[Any]:
    """Both passes of ``n_records`` random pairs (BOS + prompt + answer; BOS + answer), as the
    IFD scorer plans them (ifd._Sequence)."""
    from car_engine.ifd import _Sequence

    rng = random.Random(seed)
    sequences = []
    for record in range(n_records):
        prompt_len = rng.randint(8, max_length // 4)
        answer_len = rng.randint(4, max_length - prompt_len - 1)
        prompt = [rng.randrange(3, vocab) for _ in range(prompt_len)]
        answer = [rng.randrange(3, vocab) for _ in range(answer_len)]
        sequences.append(_Sequence(record, False, [1, *prompt, *answer], answer_len))
        sequences.append(_Sequence(record, True, [1, *answer], answer_len))
    return sequences


def _ifd_losses(forward: Any, batches: list[list[Any]]) -> dict[tuple[int, bool], float]:
    losses = {}
    for batch, means in zip(batches, forward.losses(batches)):
        for seq, loss in zip(batch, means):
            losses[(seq.record, seq.direct)] = loss
    return losses


def _model_flops(model: Any, sequences: list[Any]) -> float:
    """Forward FLOPs: 2 x non-embedding parameters per token, causal attention
    (2 x layers x L^2 x hidden per sequence), the head on scored tokens only."""
    cfg = model.config
    embed = cfg.vocab_size * cfg.hidden_size
    body = sum(p.numel() for p in model.model.parameters()) - embed
    tokens = sum(len(s.ids) for s in sequences)
    attention = sum(2 * cfg.num_hidden_layers * len(s.ids) ** 2 * cfg.hidden_size
                    for s in sequences)
    head = sum(2 * s.n_score * embed for s in sequences)
    return 2.0 * body * tokens + attention + head


def check_ifd(device: torch.device, tiny: bool, peak_tflops: float) -> dict[str, Any]:
    """Parity (fp32, bf16) with the batch-1 reference, tokens/s at several token budgets, MFU,
    the speed-up over the batch-1 procedure, and a profiler split of one pass."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from car_engine.ifd import plan_batches
    from car_engine.ifd_gpu import PaddedForward
    from car_engine.reference.ifd import sequence_loss

    size = IFD_SIZES["tiny" if tiny else "full"]
    torch.manual_seed(0)
    config = LlamaConfig(**SMOLLM2["tiny" if tiny else "full"])
    config._attn_implementation = "sdpa"
    reference = LlamaForCausalLM(config).eval().to(device)
    models = {"fp32": reference, "bf16": copy.deepcopy(reference).to(torch.bfloat16)}
    sequences = random_sequences(size["records"], config.vocab_size, size["max_length"], 1)
    parity_set = [s for s in sequences if s.record < size["parity"]]
    want = {(s.record, s.direct): sequence_loss(reference, s.ids, s.n_score) for s in parity_set}
    result: dict[str, Any] = {"model": "random-init SmolLM2-135M dims" if not tiny else "tiny",
                              "records": size["records"], "ok": True, "dtypes": {}}
    for name, model in models.items():
        forward = PaddedForward(model.model, model.lm_head.weight, device, pad_id=2)
        got = _ifd_losses(forward, plan_batches(parity_set, size["budgets"][0]))
        err = max(abs(got[k] - v) for k, v in want.items())
        row: dict[str, Any] = {"parity_max_abs_err": err,
                               "parity_ok": err <= IFD_TOLERANCE[name], "budgets": {}}
        result["ok"] &= row["parity_ok"]
        tokens = sum(len(s.ids) for s in sequences)
        flops = _model_flops(model, sequences)
        for budget in size["budgets"]:
            batches = plan_batches(sequences, budget)
            _ifd_losses(forward, batches[:2])  # warm-up: kernels, autotuning
            _sync(device)
            start = time.perf_counter()
            _ifd_losses(forward, batches)
            _sync(device)
            seconds = time.perf_counter() - start
            row["budgets"][budget] = {
                "batches": len(batches), "tokens_per_s": tokens / seconds,
                "model_tflops": flops / seconds / 1e12,
                "mfu": flops / seconds / 1e12 / peak_tflops if device.type == "cuda" else None}
        batch1 = sequences[:size["batch1"]]
        start = time.perf_counter()
        for s in batch1:
            sequence_loss(model, s.ids, s.n_score)
        _sync(device)
        batch1_rate = sum(len(s.ids) for s in batch1) / (time.perf_counter() - start)
        best = max(b["tokens_per_s"] for b in row["budgets"].values())
        row.update({"batch1_tokens_per_s": batch1_rate, "speedup_vs_batch1": best / batch1_rate,
                    "profile": _profile(forward, plan_batches(sequences, size["profile_budget"]),
                                        device)})
        result["dtypes"][name] = row
    return result


def _profile(forward: Any, batches: list[list[Any]], device: torch.device) -> dict[str, Any]:
    """One pass under torch.profiler: time in the forward, the loss, and everything else."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        _ifd_losses(forward, batches)
        _sync(device)
    wall = time.perf_counter() - start
    split: dict[str, Any] = {"wall_s": wall}
    for event in prof.key_averages():
        if event.key in ("ifd.forward", "ifd.loss"):
            on_device = getattr(event, "device_time_total", 0.0) or 0.0
            split[event.key] = {"host_s": event.cpu_time_total / 1e6,
                                "device_s": on_device / 1e6}
    busy = sum(v["device_s"] if device.type == "cuda" else v["host_s"]
               for k, v in split.items() if k.startswith("ifd."))
    split["other_s"] = max(wall - busy, 0.0)  # host work outside the two ranges, and idle
    return split


def _encoder_folder(tiny: bool, folder: Path) -> Path:
    """A random-init BERT with all-MiniLM-L6-v2's dimensions and a word-piece vocabulary of
    ``w<i>`` tokens (so random "words" are random token ids), saved to ``folder``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    config = BertConfig(**MINILM["tiny" if tiny else "full"])
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(config.vocab_size - len(specials))]
    (folder / "vocab.txt").write_text("\n".join(specials + words) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


def _texts(n: int, words: tuple[int, int], vocab: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(vocab - 5)}" for _ in range(rng.randint(*words)))
            for _ in range(n)]


def check_encoders(device: torch.device, tiny: bool) -> dict[str, Any]:
    """The embedder and the IQS torch runtime at the GPU's low precision against fp32."""
    from transformers import AutoModel, AutoTokenizer

    from car_engine.batching import length_batches, pad_batch, tokenize
    from car_engine.embed import Embedder
    from car_engine.iqs.model import IQSConfig, IQSModel
    from car_engine.iqs.score import TorchRunner, spearman

    low = "fp16" if device.type == "cuda" else "bf16"  # fp16 is refused on CPU
    size = ENCODER_SIZES["tiny" if tiny else "full"]
    result: dict[str, Any] = {"low_precision": low, "ok": True}
    with tempfile.TemporaryDirectory() as tmp:
        folder = _encoder_folder(tiny, Path(tmp))
        texts = _texts(size["texts"], size["words"], MINILM["full"]["vocab_size"], 2)
        vectors, rates = {}, {}
        for dtype in ("fp32", low):
            embedder = Embedder(str(folder), dtype=dtype, device=str(device), pack=False)
            embedder.embed(texts[:8], progress=False)  # warm-up
            _sync(device)
            start = time.perf_counter()
            vectors[dtype] = embedder.embed(texts, progress=False)
            _sync(device)
            rates[dtype] = len(texts) / (time.perf_counter() - start)
        cosine = (vectors["fp32"] * vectors[low]).sum(axis=1)
        result["embed"] = {"cosine_min": float(cosine.min()), "texts_per_s": rates,
                           "ok": bool(cosine.min() >= COSINE_MIN[low])}
        tokenizer = AutoTokenizer.from_pretrained(folder)
        encoder = AutoModel.from_pretrained(folder)
        cfg = IQSConfig(num_layers=encoder.config.num_hidden_layers + 1,
                        hidden_size=encoder.config.hidden_size, max_length=256)
        torch.manual_seed(1)
        model = IQSModel(encoder, cfg).eval()
        ids = tokenize(tokenizer, texts, 256)
        scores, rates = {}, {}
        for dtype in ("fp32", low):
            runner = TorchRunner(copy.deepcopy(model), str(device), dtype)
            out = np.empty(len(texts))
            start = time.perf_counter()
            for rows in length_batches(ids, 64):
                out[rows] = runner(*pad_batch(ids, rows, tokenizer.pad_token_id or 0))
            rates[dtype] = len(texts) / (time.perf_counter() - start)
            scores[dtype] = out
        diff = float(np.abs(scores["fp32"] - scores[low]).max())
        spread = float(scores["fp32"].std()) or 1.0
        rank = spearman(scores["fp32"], scores[low]) if len(texts) > 2 else 1.0
        result["iqs_torch"] = {"max_abs_diff": diff, "diff_over_std": diff / spread,
                               "spearman": rank, "texts_per_s": rates,
                               "ok": diff / spread <= IQS_DIFF_OVER_STD[low]
                               and rank >= IQS_SPEARMAN_MIN[low]}
    result["ok"] = result["embed"]["ok"] and result["iqs_torch"]["ok"]
    return result
