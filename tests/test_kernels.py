"""Fused cross-entropy kernels: the Triton kernels (run by the interpreter on the CPU, in a
subprocess so TRITON_INTERPRET=1 is set before triton is imported) and the PyTorch twin, each
held to ``torch.nn.functional.cross_entropy`` on materialised logits and to each other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from car_engine import kernels

reference = kernels.cross_entropy_torch  # the PyTorch twin, called directly (no dispatch)

# name -> (dtype, N, V, H, segment lengths); sizes stay small: the interpreter is slow.
CASES = {
    "fp32-odd-vocab": ("float32", 37, 301, 40, [5, 0, 15, 17]),
    "bf16-odd-vocab": ("bfloat16", 37, 301, 40, [5, 0, 15, 17]),
    "fp16": ("float16", 20, 257, 32, [20]),
    "fp32-n0": ("float32", 0, 129, 16, [0]),
    "bf16-n0-no-segments": ("bfloat16", 0, 129, 16, []),
    "fp32-n1": ("float32", 1, 999, 64, [1]),
    "bf16-n1": ("bfloat16", 1, 999, 64, [1]),
    "fp32-many-segments": ("float32", 64, 1000, 64, [3, 0, 7, 1, 1, 0, 12, 4, 9, 0, 2, 25]),
    "bf16-many-segments": ("bfloat16", 64, 1000, 64, [3, 0, 7, 1, 1, 0, 12, 4, 9, 0, 2, 25]),
}
TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-4, "float16": 2e-3}


def make_case(name: str) -> dict[str, torch.Tensor]:
    """Deterministic inputs for one case (logits of a realistic spread, ~N(0, 4^2))."""
    dtype, n, vocab, width, lengths = CASES[name]
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    hidden = torch.randn(n, width, generator=gen)
    weight = torch.randn(vocab, width, generator=gen) * (4 / width**0.5)
    targets = torch.randint(0, vocab, (n,), generator=gen)
    offsets = torch.tensor([0, *torch.tensor(lengths, dtype=torch.long).cumsum(0).tolist()])
    assert offsets[-1] == n
    dt = getattr(torch, dtype)
    return {"hidden": hidden.to(dt), "weight": weight.to(dt), "targets": targets,
            "offsets": offsets}


def expected(case: dict[str, torch.Tensor], logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-token NLL and per-segment means from materialised fp32 logits."""
    nll = F.cross_entropy(logits.float(), case["targets"], reduction="none")
    off = case["offsets"].tolist()
    means = [nll[a:b].mean() if b > a else torch.tensor(float("nan")) for a, b in
             zip(off, off[1:])]
    return nll, torch.stack(means) if means else torch.empty(0)


def exact_logits(case: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits with fp32 products and accumulation (what the Triton kernel computes)."""
    return case["hidden"].float() @ case["weight"].float().T


def close(got: torch.Tensor, want: torch.Tensor, atol: float) -> None:
    torch.testing.assert_close(got, want.float(), atol=atol, rtol=0, equal_nan=True)


@pytest.fixture(scope="module")
def triton_results(tmp_path_factory) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Run every case through the Triton kernels in one interpreter subprocess."""
    folder = tmp_path_factory.mktemp("triton")
    torch.save({name: make_case(name) for name in CASES}, folder / "cases.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CAR_ENGINE_KERNELS": "triton"}
    proc = subprocess.run([sys.executable, __file__, str(folder)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(folder / "results.pt")


@pytest.mark.parametrize("name", CASES)
def test_triton_matches_cross_entropy(triton_results, name):
    case = make_case(name)
    nll, means = triton_results[name]
    want_nll, want_means = expected(case, exact_logits(case))
    close(nll, want_nll, TOLERANCE[CASES[name][0]])
    close(means, want_means, TOLERANCE[CASES[name][0]])
    assert torch.isnan(means).tolist() == [b == 0 for b in CASES[name][4]]


SPLIT_CASES = {"fp32-odd-vocab": 2, "bf16-many-segments": 4, "fp32-n1": 3}


@pytest.mark.parametrize("name", SPLIT_CASES)
def test_triton_vocabulary_splits_merge_exactly(triton_results, name):
    """The 2-D grid: the vocabulary cut into splits whose partial log-sum-exps are merged."""
    case = make_case(name)
    nll = triton_results[f"{name}/splits"]
    want_nll, _ = expected(case, exact_logits(case))
    close(nll, want_nll, TOLERANCE[CASES[name][0]])
    close(nll, triton_results[name][0], 1e-5)  # the same as one split, to rounding


def test_vocab_split_fills_the_gpu_and_aligns():
    from car_engine.kernels import cross_entropy as plan

    cpu = torch.device("cpu")
    size, splits = plan.vocab_split(1, 49152, cpu)
    assert size % plan.SPLIT_ALIGN == 0 and (splits - 1) * size < 49152 <= splits * size
    assert splits > 1  # one token: the vocabulary is what spreads over the SMs
    assert plan.vocab_split(16384, 49152, cpu)[1] == 1  # many tokens fill the SMs alone
    assert plan.vocab_split(5, 301, cpu, splits=2) == (256, 2)


@pytest.mark.parametrize("name", CASES)
def test_torch_matches_cross_entropy(name):
    case = make_case(name)
    nll, means = reference.linear_cross_entropy(**case)
    # The twin runs the matmul in the input dtype (the CPU's bf16 GEMM rounds its output to
    # bf16), so its oracle is cross_entropy on logits computed the same way.
    logits = (case["hidden"] @ case["weight"].T).float()
    want_nll, want_means = expected(case, logits)
    close(nll, want_nll, TOLERANCE[CASES[name][0]])
    close(means, want_means, TOLERANCE[CASES[name][0]])


@pytest.mark.parametrize("name", CASES)
def test_torch_and_triton_agree(triton_results, name):
    case = make_case(name)
    nll, means = reference.linear_cross_entropy(**case)
    t_nll, t_means = triton_results[name]
    # Equal to fp32 precision in fp32; within bf16/fp16 logit rounding otherwise.
    atol = 1e-4 if CASES[name][0] == "float32" else 0.15
    close(nll, t_nll, atol)
    close(means, t_means, atol)


@pytest.mark.parametrize("vocab_block", [7, 64, 300, 301, 4096])
@pytest.mark.parametrize("row_block", [1, 5, 256])
def test_torch_tiling_does_not_change_results(row_block, vocab_block):
    case = make_case("fp32-odd-vocab")
    got = reference.token_nll(case["hidden"], case["weight"], case["targets"],
                              row_block=row_block, vocab_block=vocab_block)
    close(got, expected(case, exact_logits(case))[0], 1e-4)


def test_dispatch_defaults_to_torch_on_cpu_and_obeys_the_env(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.delenv("CAR_ENGINE_KERNELS", raising=False)
    assert kernels.backend_for(x) == "torch"
    monkeypatch.setenv("CAR_ENGINE_KERNELS", "triton")
    assert kernels.backend_for(x) == "triton"
    monkeypatch.setenv("CAR_ENGINE_KERNELS", "cuda-magic")
    with pytest.raises(ValueError, match="CAR_ENGINE_KERNELS"):
        kernels.backend_for(x)


def test_dispatch_runs_the_torch_path_and_checks_inputs(monkeypatch):
    monkeypatch.setenv("CAR_ENGINE_KERNELS", "torch")
    case = make_case("fp32-many-segments")
    nll, means = kernels.linear_cross_entropy(**case)
    close(means, expected(case, exact_logits(case))[1], 1e-4)
    with pytest.raises(ValueError, match="targets must lie"):
        kernels.token_nll(case["hidden"], case["weight"], case["targets"] + 1000)
    with pytest.raises(ValueError, match="must be"):
        kernels.token_nll(case["hidden"], case["weight"][:, :3], case["targets"])


def _run_triton_cases(folder: Path) -> None:
    """Subprocess entry: the Triton kernels on every saved case (needs TRITON_INTERPRET=1)."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    cases = torch.load(folder / "cases.pt")
    results = {name: kernels.linear_cross_entropy(**case) for name, case in cases.items()}
    from car_engine.kernels import cross_entropy

    for name, splits in SPLIT_CASES.items():
        case = cases[name]
        results[f"{name}/splits"] = cross_entropy.token_nll(
            case["hidden"], case["weight"], case["targets"], splits=splits)
    torch.save(results, folder / "results.pt")


if __name__ == "__main__":
    _run_triton_cases(Path(sys.argv[1]))
