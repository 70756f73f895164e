"""Superfiltering's and Cherry LLM's IFD procedures restated plainly, one record at a time (the
way their scripts run them), for the tests and ``benchmarks/bench_ifd.py`` to hold
:mod:`car_engine.ifd_compat` to.

Each function follows its script step by step: the same texts, the same tokenizer calls
(``tokenizer.encode`` with its defaults, special tokens included), the same truncation
lengths, a full Hugging Face forward per text, and the same label mask, loss slicing and skip
rules. It reads none of the engine's token ids. A record the script scores gets status
``"ok"``; otherwise the status says what the script does with it: ``"empty"`` (Superfiltering
writes ``{}``), ``"zero"`` (its bare ``except`` returns 0), ``"nan"`` (a loss over no token),
``"skipped"`` (one of Cherry's ``continue``s).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import torch

COLUMNS = ["id", "loss_cond", "loss_direct", "ifd_ppl", "ifd_loss", "status"]
_HEADER = "### Response:"
_NONE_INPUT, _NONE = "{instruction}\n{input}\n", "{instruction}\n"
_ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
_ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")


def _encode(tokenizer, text: str, max_length: int | None = None) -> list[int]:
    if max_length is None:
        return tokenizer.encode(text)
    return tokenizer.encode(text, truncation=True, max_length=max_length)


@torch.inference_mode()
def _hf_loss(model, ids: list[int], labels: list[int]) -> float:
    """``model(input_ids, labels=labels).loss`` at batch 1 (HF shifts the labels)."""
    input_ids = torch.tensor([ids], device=model.device)
    return float(model(input_ids, labels=torch.tensor([labels], device=model.device)).loss)


@torch.inference_mode()
def _token_losses(model, ids: list[int]) -> list[float]:
    """Cherry's per-token list: entry ``i - 1`` is the NLL of token ``i`` given tokens
    ``< i``, for ``i`` in ``1..len(ids) - 1`` (its loop, as one log-softmax over the rows)."""
    logits = model(torch.tensor([ids], device=model.device)).logits[0, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    return (-logp.gather(1, torch.tensor(ids[1:], device=model.device)[:, None])[:, 0]).tolist()


def superfiltering_record(model, tokenizer, instruction: str, input: str, output: str,
                          max_length: int) -> dict:
    """code_ifd/data_analysis.py for one item, then ifd_ppl as put_analysis_to_data.py."""
    prompt = (_NONE_INPUT if input else _NONE).format(instruction=instruction, input=input)
    whole = prompt + output
    n_ins = len(_encode(tokenizer, prompt, max_length))
    if output == "":
        return {"status": "empty"}

    def whole_text(text: str, length: int) -> tuple[float, float]:
        try:
            ids = _encode(tokenizer, text, length)
            loss = _hf_loss(model, ids, ids)
        except Exception:  # the script's bare except
            return 0.0, 0.0
        return math.exp(loss), loss

    def part_text(text: str, span: str, length: int) -> tuple[float, float]:
        try:
            ids = _encode(tokenizer, text, length)
            start = len(_encode(tokenizer, text[:text.rfind(span)]))
            labels = [-100 if t < start else i for t, i in enumerate(ids)]
            loss = _hf_loss(model, ids, labels)
        except Exception:
            return 0.0, 0.0
        return math.exp(loss), loss

    ppl_direct, loss_direct = whole_text(output, max_length - n_ins + 1)
    ppl_cond, loss_cond = part_text(whole, output, max_length)
    row = {"loss_cond": loss_cond, "loss_direct": loss_direct}
    if ppl_direct == 0 or ppl_cond == 0:
        return {**row, "status": "zero"}
    if math.isnan(ppl_direct) or math.isnan(ppl_cond):
        return {**row, "status": "nan"}
    return {**row, "ifd_ppl": ppl_cond / ppl_direct, "status": "ok"}


def cherry_record(model, tokenizer, instruction: str, input: str, output: str,
                  max_length: int, prompt: str = "alpaca") -> dict:
    """cherry_seletion/data_analysis.py --mod cherry (the token losses), then data_by_IFD.py's
    slices and skip rules for one item (its ``mean_rate`` is ifd_loss)."""
    direct_text = _HEADER + output
    # data_analysis.py's texts
    if prompt == "wiz":
        instruct = instruction
        whole = instruction + "\n\n" + _HEADER + output
        if input != "":
            whole = instruction + "\nInput:" + input + "\n\n" + _HEADER + output
    else:
        instruct = (_ALPACA_INPUT if input else _ALPACA).format(instruction=instruction,
                                                                input=input)
        whole = instruct + output
    n_ins = len(_encode(tokenizer, instruct, max_length))
    losses_direct = _token_losses(model, _encode(tokenizer, direct_text,
                                                 max_length - n_ins + 4))
    losses_cond = _token_losses(model, _encode(tokenizer, whole, max_length))
    # data_by_IFD.py: its wiz text has no input
    whole_select = instruction + "\n\n" + _HEADER + output if prompt == "wiz" else whole

    def loss_part(text: str, span: str, length: int, losses: list[float]
                  ) -> tuple[int, np.ndarray]:
        end = len(_encode(tokenizer, text, length))
        start = len(_encode(tokenizer, text[:text.rfind(span)]))
        return end - start, np.array(losses[start - 1:end - 1])

    if not max_length - n_ins > 0:
        return {"status": "skipped"}
    len_direct, part_direct = loss_part(direct_text, output, max_length - n_ins + 4,
                                        losses_direct)
    len_cond, part_cond = loss_part(whole_select, output, max_length, losses_cond)
    if len_direct <= 0 or len_cond <= 0:
        return {"status": "skipped"}
    if n_ins + len_direct > max_length:
        return {"status": "skipped"}
    if part_direct.size == 0 or part_cond.size == 0:
        return {"status": "nan"}  # the mean of an empty slice
    mean_direct, mean_cond = float(part_direct.mean()), float(part_cond.mean())
    return {"loss_cond": mean_cond, "loss_direct": mean_direct,
            "ifd_loss": mean_cond / mean_direct if mean_direct else math.inf, "status": "ok"}


def reference_compat_scores(model, tokenizer, records: pa.Table, compat: str, *,
                            max_length: int, prompt: str = "alpaca") -> pa.Table:
    """COLUMNS for every record, batch 1, the script's way (``prompt``: Cherry's alpaca|wiz)."""
    rows = []
    for rec in records.to_pylist():
        args = (model, tokenizer, rec["instruction"], rec["input"] or "", rec["output"],
                max_length)
        row = superfiltering_record(*args) if compat == "superfiltering" else \
            cherry_record(*args, prompt=prompt)
        rows.append({**dict.fromkeys(COLUMNS), **row, "id": str(rec["id"])})
    schema = pa.schema([("id", pa.string()), *((c, pa.float64()) for c in COLUMNS[1:-1]),
                        ("status", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)
