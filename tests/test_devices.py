"""Devices are honest: CUDA asked for and not usable (no GPU for torch, no CUDA provider in
onnxruntime, a provider that fails to load, FAISS without GPU support) is exit 5 with one line
naming what is missing, never a fallback; cuda:N reaches GPU N; Ray's GPU share fits every actor;
and the GPU twins of the PCA and k-means++ seeding compute what the CPU path does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from car_engine import cluster, cluster_torch
from car_engine.backends.ray import gpu_fraction
from car_engine.config import parse_device
from car_engine.devices import torch_device
from car_engine.errors import DeviceError, UsageError
from car_engine.iqs import onnx as iqs_onnx

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = not torch.cuda.is_available()


def test_device_values_parse_and_bad_ones_are_usage_errors():
    assert parse_device(None) == ("auto", None)
    assert parse_device("cuda") == ("cuda", None)
    assert parse_device("CUDA:3") == ("cuda", 3)
    for bad in ("gpu", "cuda:", "cuda:x", "mps"):
        with pytest.raises(UsageError, match="--device"):
            parse_device(bad)


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU answer")
def test_torch_device_refuses_cuda_without_a_gpu():
    assert torch_device("auto").type == "cpu"
    with pytest.raises(DeviceError, match="sees no CUDA GPU"):
        torch_device("cuda:1")


def test_torch_device_maps_cuda_n_to_gpu_n(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert torch_device("cuda:1") == torch.device("cuda", 1)
    assert torch_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match="sees 2 GPU"):
        torch_device("cuda:2")


def _providers(monkeypatch, available: list[str]) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: available)


def test_onnxruntime_without_a_cuda_provider_is_refused(monkeypatch):
    _providers(monkeypatch, ["CPUExecutionProvider"])
    with pytest.raises(DeviceError, match="no CUDAExecutionProvider"):
        iqs_onnx.providers("cuda")
    assert iqs_onnx.providers("auto") == ["CPUExecutionProvider"]


def test_cuda_n_sets_the_provider_device_id(monkeypatch):
    _providers(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert iqs_onnx.providers("cuda:1") == [("CUDAExecutionProvider", {"device_id": 1}),
                                            "CPUExecutionProvider"]
    assert iqs_onnx.providers("cpu") == ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def tiny_scorer(tmp_path_factory) -> Path:
    """A real two-input ONNX graph (score = number of real tokens) with the scorer's I/O."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["b", "s"])
              for name in iqs_onnx.INPUT_NAMES]
    out = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["b"])
    nodes = [helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["m", "axes"], ["score"], keepdims=0)]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(nodes, "tiny", inputs, [out], initializer=[axes])
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_cuda_provider_that_fails_to_load_is_refused_not_run_on_cpu(monkeypatch, tiny_scorer):
    """onnxruntime lists CUDA but cannot load it (here: a CPU build told it has one), so it
    would quietly run on the CPU: asked for cuda, that is an error; under auto it is recorded."""
    _providers(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(DeviceError, match="did not load"):
        iqs_onnx.OrtRunner(tiny_scorer, "cuda")
    runner = iqs_onnx.OrtRunner(tiny_scorer, "auto")
    assert (runner.provider, runner.on_gpu, runner.device) == ("CPUExecutionProvider", False,
                                                               "cpu")
    ids = np.zeros((2, 3), np.int64)
    mask = np.array([[1, 1, 1], [1, 0, 0]], np.int64)
    assert runner(ids, mask).tolist() == [3.0, 1.0]


def test_faiss_without_gpu_support_is_refused(monkeypatch):
    import faiss

    if hasattr(faiss, "StandardGpuResources"):
        monkeypatch.delattr(faiss, "StandardGpuResources")
    with pytest.raises(DeviceError, match="CPU-only build"):
        cluster.faiss_gpu("cuda")
    assert cluster.faiss_gpu("auto") is None and cluster.faiss_gpu("cpu") is None


def test_faiss_gpu_numbers(monkeypatch):
    import faiss

    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    assert cluster.faiss_gpu("cuda:1") == 1
    assert cluster.faiss_gpu("auto") == cluster.ALL_GPUS
    with pytest.raises(DeviceError, match="FAISS sees 2 GPU"):
        cluster.faiss_gpu("cuda:2")


@pytest.mark.parametrize(("gpus", "workers", "share", "fit"), [
    (2, 3, 0.5, 4), (1, 2, 0.5, 2), (2, 2, 1.0, 2), (4, 2, 1.0, 4), (3, 7, 1 / 3, 9),
    (0, 3, 0.0, 0), (0.5, 2, 0.0, 0),
])
def test_ray_gpu_share_fits_every_actor(gpus, workers, share, fit):
    got = gpu_fraction(gpus, workers)
    assert got == pytest.approx(share)
    if got:  # how many actors of that share Ray packs onto the whole GPUs: at least workers
        per_gpu = int(1 / got + 1e-9)
        assert per_gpu * int(gpus) == fit >= workers


def test_ray_backend_reads_the_cluster_gpus(monkeypatch):
    from car_engine.backends.ray import RayBackend

    backend = RayBackend.__new__(RayBackend)  # no cluster: the resources are the mocked ones
    backend.workers = 3
    backend.ray = type("FakeRay", (), {"cluster_resources": staticmethod(
        lambda: {"CPU": 32.0, "GPU": 2.0})})
    assert backend.gpu_fraction() == 0.5


def test_cli_cuda_without_gpu_is_one_line_and_exit_5(tmp_path):
    if not NO_GPU:
        pytest.skip("this machine has a GPU")
    vectors = tmp_path / "emb.npy"
    np.save(vectors, np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32))
    proc = subprocess.run([sys.executable, "-m", "car_engine.cli", "cluster", str(vectors),
                           "--out", str(tmp_path / "c.parquet"), "--device", "cuda"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 5, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "CPU-only build" in proc.stderr


def test_torch_kmeans_plus_plus_picks_the_numpy_seeds():
    points = np.random.default_rng(3).standard_normal((600, 12)).astype(np.float32)
    want = cluster.kmeans_plus_plus(points, 9, np.random.default_rng(5))
    got = cluster_torch.kmeans_plus_plus(points, 9, np.random.default_rng(5),
                                         torch.device("cpu"))
    np.testing.assert_array_equal(got, want)


def test_torch_pca_matches_faiss_pca():
    rng = np.random.default_rng(1)
    vectors = (rng.standard_normal((800, 16)) * np.linspace(3, 0.1, 16)).astype(np.float32)
    want = cluster.fit_pca(vectors, pca_var=0.9)
    got = cluster.fit_pca(vectors, pca_var=0.9, torch_device=torch.device("cpu"))
    assert got.n_components == want.n_components
    np.testing.assert_allclose(got.eigenvalues / got.eigenvalues.sum(),
                               want.eigenvalues / want.eigenvalues.sum(), atol=1e-5)
    # Components agree up to sign, so the projections agree up to per-column sign.
    a, b = got.transform(vectors), want.transform(vectors)
    signs = np.sign((a * b).sum(axis=0))
    np.testing.assert_allclose(a * signs, b, atol=2e-3)


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU, reason="needs a CUDA GPU")
def test_gpu_clustering_matches_the_cpu_one():
    vectors = np.random.default_rng(2).standard_normal((4000, 32)).astype(np.float32)
    cpu = cluster.cluster(vectors, k=20, progress=False, device="cpu")
    gpu = cluster.cluster(vectors, k=20, progress=False, device="cuda")
    assert gpu.n_components == cpu.n_components
    assert gpu.inertia == pytest.approx(cpu.inertia, rel=0.02)


def test_a_shard_reports_where_its_worker_ran(tmp_path):
    """What summary.json's "runtimes" is built from: each shard job comes back with its
    worker's describe()."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from car_engine.backends.base import ShardJob, process_shard

    class Worker:
        def __call__(self, records: pa.Table) -> pa.Table:
            return records.select(["id"])

        def describe(self) -> str:
            return "torch cuda:1 (H200) bf16"

    source = tmp_path / "records.parquet"
    pq.write_table(pa.table({"id": ["a", "b"]}), source)
    done = process_shard(Worker(), ShardJob(str(source), str(tmp_path / "out.parquet")))
    assert done.runtime == "torch cuda:1 (H200) bf16"
