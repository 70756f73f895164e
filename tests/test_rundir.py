"""The run folder under stress, end to end on real data: a second run on a busy folder, a lock
left by kill -9, shards damaged after they were recorded, and a Ray actor killed mid-stage.

Every case ends byte-identical to one clean local run (the module's reference)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus_files import RUN_ARGS

from car_engine.cli import main

OUTPUTS = ("selected.jsonl", "scores.parquet", "rejected.jsonl")
CLI = [sys.executable, "-m", "car_engine.cli"]
RUN_TIMEOUT = 600  # seconds: far above a run here (~1 min; ~2 min on Ray), so never a hang


@pytest.fixture(scope="module")
def reference(reference_run) -> Path:
    """One clean, solo, local run (conftest's, shared with test_pipeline): what every case
    here must reproduce byte for byte."""
    return reference_run


def run_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(corpus), "--out", str(out), *RUN_ARGS, *extra]


def start_run(args: list[str], log: Path) -> subprocess.Popen:
    """`car-engine run` in a child process, its output in ``log``; never on a Ray cluster
    someone else set up."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(log, "wb") as out:
        return subprocess.Popen([*CLI, *args], stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_for(what: Callable[[], object], proc: subprocess.Popen, log: Path,
             timeout: float = RUN_TIMEOUT) -> object:
    """Poll ``what()`` until it is truthy; fail if ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        assert proc.poll() is None, f"run ended early ({proc.returncode}):\n{tail(log)}"
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else ""


def manifest(run_dir: Path, stage: str) -> dict:
    path = run_dir / "stages" / stage / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {"files": {}, "complete": False}


def recorded(run_dir: Path, stage: str) -> dict[str, dict]:
    """The files a stage's manifest records as done (written atomically, so read any time)."""
    return manifest(run_dir, stage)["files"]


def matches_record(run_dir: Path, stage: str, name: str) -> bool:
    record = recorded(run_dir, stage)[name]
    data = (run_dir / "stages" / stage / name).read_bytes()
    return len(data) == record["size"] and hashlib.sha256(data).hexdigest() == record["sha256"]


def mtimes(run_dir: Path, stage: str, names: list[str]) -> dict[str, int]:
    return {n: (run_dir / "stages" / stage / n).stat().st_mtime_ns for n in names}


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``folder``: (size, mtime, SHA-256)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def lock_is_held(run_dir: Path) -> bool:
    fd = os.open(run_dir / ".lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases it if we got it
    return False


def temp_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "stages").rglob(".*.tmp"))


def assert_same_outputs(run_dir: Path, reference: Path) -> None:
    for name in OUTPUTS:
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name


def test_second_run_on_a_busy_folder_exits_2_and_touches_nothing(tmp_path, corpus, reference,
                                                                  capfd):
    out, log = tmp_path / "busy", tmp_path / "first.log"
    first = start_run(run_args(corpus, out), log)
    try:
        wait_for(lambda: recorded(out, "encode"), first, log)  # holds the lock, mid-stage
        assert (out / ".lock").read_text().strip() == str(first.pid)
        os.kill(first.pid, signal.SIGSTOP)  # frozen, so the folder only changes if we change it
        try:
            before = snapshot(out)
            capfd.readouterr()
            code = main(run_args(corpus, out))
            err = capfd.readouterr().err
            after = snapshot(out)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("car-engine run: error: ") and str(out) in lines[0]
        assert f"pid {first.pid}" in lines[0]
        assert after == before  # not one byte or timestamp changed: nothing lost
        assert first.wait(timeout=RUN_TIMEOUT) == 0, tail(log)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert_same_outputs(out, reference)


def test_lock_left_by_kill_9_is_taken_over(tmp_path, corpus, reference):
    out, log = tmp_path / "stale", tmp_path / "victim.log"
    victim = start_run(run_args(corpus, out), log)
    try:
        done = wait_for(lambda: recorded(out, "encode"), victim, log)  # mid-stage
        assert lock_is_held(out)
        victim.kill()  # SIGKILL: no cleanup of any kind
        assert victim.wait(timeout=60) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert (out / ".lock").read_text().strip() == str(victim.pid)  # left behind...
    assert not lock_is_held(out)  # ...but the kernel dropped the flock with its process
    assert not manifest(out, "encode")["complete"] and not (out / "selected.jsonl").exists()
    kept = mtimes(out, "encode", list(done))
    assert main(run_args(corpus, out)) == 0
    assert (out / ".lock").read_text().strip() == str(os.getpid())
    assert mtimes(out, "encode", list(done)) == kept  # what the victim finished is kept
    assert not temp_files(out)
    assert_same_outputs(out, reference)


def test_damaged_shards_are_recomputed(tmp_path, corpus, reference, capfd):
    out = tmp_path / "damaged"
    shutil.copytree(reference, out)
    stages = out / "stages"
    records = stages / "read" / "records-00001.parquet"
    iqs = stages / "iqs" / "iqs-00002.parquet"
    embed = stages / "embed" / "embed-00003.npy"
    for path in (records, iqs):  # truncated: before checksums, "Parquet magic bytes not found"
        os.truncate(path, path.stat().st_size // 2)
        with pytest.raises(pa.ArrowInvalid):
            pq.read_table(path)
    data = bytearray(embed.read_bytes())
    data[-1] ^= 0x40  # one bit of one float: same size, still a valid .npy, silently wrong
    embed.write_bytes(bytes(data))
    leftover = stages / "iqs" / ".iqs-00004.parquet.k9x2mq.tmp"  # a write a kill cut short
    leftover.write_bytes(b"PAR1 half")
    scoring = {s: [n for n in recorded(out, s) if stages / s / n not in (iqs, embed)]
               for s in ("iqs", "embed", "cluster")}
    kept = {s: mtimes(out, s, names) for s, names in scoring.items()}

    capfd.readouterr()
    assert main(run_args(corpus, out)) == 0
    err = capfd.readouterr().err
    flagged = [line for line in err.splitlines() if "does not match its manifest" in line]
    assert len(flagged) == 3, err
    for path in (records, iqs, embed):
        stage = path.parent.name
        assert any(str(path) in line and "recomputing" in line for line in flagged), err
        assert matches_record(out, stage, path.name)  # rewritten, and recorded again
        assert path.read_bytes() == (reference / "stages" / stage / path.name).read_bytes()
    # the read stage recomputes as a whole; of the scoring stages, only the damaged shards
    for name in recorded(out, "read"):
        assert matches_record(out, "read", name)
    assert {s: mtimes(out, s, names) for s, names in scoring.items()} == kept
    assert not leftover.exists()
    assert_same_outputs(out, reference)


def _children() -> dict[int, list[int]]:
    """pid -> its child pids, from /proc."""
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(stat.parent.name))
    return kids


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (a local Ray cluster lives under the driver's raylet)."""
    kids, found, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def busy_shard_actors(driver: int) -> list[int]:
    """This run's scoring actors, those running a shard first ("ray::MapWorker(...).submit")."""
    actors = [p for p in descendants(driver) if "_ShardActor" in title(p)]
    return sorted(actors, key=lambda p: not title(p).endswith(".submit"))


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_ray_actor_killed_mid_stage_costs_only_its_shard(tmp_path, corpus, reference):
    pytest.importorskip("ray")
    out, log = tmp_path / "ray", tmp_path / "ray.log"
    driver = start_run(run_args(corpus, out, "--backend", "ray", "--workers", "2"), log)
    cluster: list[int] = []
    try:
        done = wait_for(lambda: recorded(out, "encode"), driver, log)
        shards = manifest(out, "read")["info"]["shards"]
        assert len(done) < len(shards)  # mid-stage: shards are still to come
        kept = mtimes(out, "encode", list(done))
        victim = wait_for(lambda: busy_shard_actors(driver.pid), driver, log, 60)[0]
        cluster = descendants(driver.pid)
        os.kill(victim, signal.SIGKILL)
        assert driver.wait(timeout=RUN_TIMEOUT) == 0, tail(log)
    finally:
        if driver.poll() is None:
            cluster += descendants(driver.pid)
            driver.kill()
            driver.wait()
        deadline = time.monotonic() + 60  # the driver's ray.shutdown() stops its cluster
        while any(map(alive, cluster)) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [p for p in cluster if alive(p)]
        kill_all(left)
    assert not left, f"Ray processes left running: {[title(p) for p in left]}"
    assert not alive(victim)
    encode = manifest(out, "encode")
    assert encode["complete"] and sorted(encode["files"]) == sorted(encode["info"]["shards"])
    assert mtimes(out, "encode", list(done)) == kept  # finished shards were not redone
    assert not temp_files(out)
    assert_same_outputs(out, reference)


def test_clearing_an_earlier_runs_outputs_takes_its_svg_plots_and_older_pngs(tmp_path, capsys):
    from car_engine.rundir import clear_outputs

    earlier = ["report.html", "answer_lengths.svg", "cluster_map.svg", "turns.svg",
               "iqs_hist.png", "turns.png"]  # the PNGs: written by versions before the SVGs
    for name in [*earlier, "notes.svg"]:
        (tmp_path / name).write_text("x")
    assert sorted(clear_outputs(tmp_path, "fingerprint")) == sorted(earlier)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.svg"]  # not a run's file: kept
    assert "removed" in capsys.readouterr().err
