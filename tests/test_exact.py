"""`--exact`: fp32 on every stage whatever auto would pick, refused beside another precision,
and the same bytes on every run."""

from __future__ import annotations

import pytest

from car_engine.cli import main
from car_engine.config import AUTO, EmbedParams, IFDParams, IQSParams, RunConfig
from car_engine.errors import UsageError


def test_exact_pins_every_auto_precision_to_fp32():
    cfg = RunConfig(method="car+ifd", exact=True)
    assert (cfg.iqs.precision, cfg.ifd.dtype, cfg.embed.dtype) == (AUTO, AUTO, AUTO)
    cfg.check()
    assert (cfg.iqs.precision, cfg.ifd.dtype, cfg.embed.dtype) == ("fp32", "fp32", "fp32")
    plain = RunConfig(method="car+ifd")
    plain.check()
    assert plain.ifd.dtype == AUTO  # without --exact, auto stays for the device to decide


@pytest.mark.parametrize(("params", "flag"), [
    ({"iqs": IQSParams(precision="int8")}, "--iqs-precision is int8"),
    ({"ifd": IFDParams(dtype="bf16")}, "--ifd-dtype is bf16"),
    ({"embed": EmbedParams(dtype="fp16")}, "--embed-dtype is fp16"),
])
def test_exact_beside_another_precision_is_a_usage_error(params, flag):
    with pytest.raises(UsageError, match=flag):
        RunConfig(method="car+ifd", exact=True, **params).check()


def test_exact_on_the_command_line_refuses_before_any_model_loads(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"instruction": "Name a colour.", "input": "", "output": "Blue."}\n')
    code = main(["run", str(corpus), "--out", str(tmp_path / "run"), "--method", "ifd",
                 "--exact", "--ifd-dtype", "bf16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--exact" in err[0], err
    assert not (tmp_path / "run").exists()


def test_exact_runs_give_the_same_bytes(tmp_path):
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["run", "builtin:sharegpt", "--limit", "12", "--out", str(out), "--method",
                     "ifd", "--exact", "--max-length", "64", "--ifd-frac", "0.25", "--quiet",
                     "--no-report", "--no-score-cache"]) == 0
        outputs.append({f: (out / f).read_bytes() for f in ("selected.jsonl", "scores.parquet")})
    assert outputs[0] == outputs[1]
