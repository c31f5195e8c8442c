"""Durable searches: a driver killed (SIGKILL) and resumed, one driver per study, a private
local Ray beside stale or foreign clusters, unreachable addresses, and the dashboard."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from nas.results import load_results

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 4
SMALL = {"trials": TRIALS, "concurrent_trials": 2, "train": {"epochs": 2, "batch_size": 50},
         "data": {"name": "fashion-mnist", "train_size": 300, "val_size": 100},
         "latency": {"repeats": 3, "rounds": 2}, "sampler": {"population_size": 2}}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


def _spec(tmp: Path, name: str, **changes) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "quick.yaml").read_text())
    raw["space"]["dims"]["num_stages"] = 2
    for key, value in {**SMALL, **changes}.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and key in raw else value
    raw.update(name=name, results_dir=str(tmp))
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _nas(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600):
    return subprocess.run([sys.executable, "-m", "nas", *args], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def _check_agreement(study: Path) -> pd.DataFrame:
    ot = optuna.load_study(study_name=study.name, storage=f"sqlite:///{study / 'study.db'}")
    states = [t.state.name for t in ot.trials]
    assert states == ["COMPLETE"] * TRIALS, states  # exactly `trials` finished, none left
    assert [t.number for t in ot.trials] == list(range(TRIALS))
    frame = load_results(study)
    assert sorted(frame["trial"]) == list(range(TRIALS))  # row for row
    for t in ot.trials:
        row = frame[frame["trial"] == t.number].iloc[0]
        assert row["status"] == "complete" and row["epochs"] == 2
        assert t.values == pytest.approx([row["accuracy"], row["latency_ms"]])
        assert json.loads(row["config"]) == json.loads(t.user_attrs["candidate"])
    return frame


def _recorded(study: Path) -> pd.DataFrame | None:
    return load_results(study) if (study / "trials.parquet").exists() else None


def _unchanged(before: pd.DataFrame, frame: pd.DataFrame, moment: str) -> None:
    """Every trial recorded before a kill keeps its row: it was not run again."""
    for _, row in before.iterrows():
        again = frame[frame["trial"] == row["trial"]].iloc[0]
        assert again["train_time_s"] == row["train_time_s"], moment


@pytest.mark.slow
def test_a_driver_killed_at_three_moments_resumes_each_time(driver, tmp_path):
    """One study's driver is killed (SIGKILL) three times: before any trial completed,
    mid-search (one trial recorded, others running) and after the last trial was recorded.
    Each resume runs only what is left; a second driver of a live study is refused."""
    data = {"name": "fashion-mnist", "train_size": 1000, "val_size": 100}  # time to act
    study = tmp_path / "killed"
    proc = driver.start([str(_spec(tmp_path, "killed", data=data))], tmp_path)
    driver.read_until(proc, "trial 0 epoch 1/2", [])
    driver.kill(proc)  # 1. before any trial completed
    first = _recorded(study)
    assert first is None or first.empty, first

    resumed = driver.start(["--resume", str(study)], tmp_path)
    lines = driver.read_until(resumed, "resuming:", [])
    second = _nas("search", "--resume", str(study), cwd=tmp_path)  # the resumed one lives
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert f"a driver (pid {resumed.pid}) is running this study" in second.stderr
    assert "to run again from their checkpoints" in "".join(lines)
    driver.read_until(resumed, f"[1/{TRIALS}] trial", lines)
    driver.kill(resumed)  # 2. mid-search
    mid = _recorded(study)
    assert mid is not None and len(mid) >= 1, "".join(lines[-40:])

    last = driver.start(["--resume", str(study)], tmp_path)
    driver.read_until(last, f"[{TRIALS}/{TRIALS}] trial", [])
    driver.kill(last)  # 3. after the last trial was recorded
    before = load_results(study)

    done = _nas("search", "--resume", str(study), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"all {TRIALS} trials finished; nothing to run" in done.stdout
    frame = _check_agreement(study)
    _unchanged(mid, frame, "mid-search")
    _unchanged(before, frame, "after the last trial")


def test_resume_needs_a_study_and_nothing_else(tmp_path):
    proc = _nas("search", "--resume", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert proc.returncode == 2 and "--resume" in proc.stderr and "no spec.yaml" in proc.stderr
    proc = _nas("search", "--resume", str(tmp_path), "--set", "trials=3", cwd=tmp_path)
    assert proc.returncode == 2 and "--set cannot be given with it" in proc.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_local_search_ignores_a_stale_address_file(tmp_path):
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_closed_port()}")
    env = _env(RAY_TMPDIR=str(ray_tmp))
    started = time.monotonic()
    auto = _nas("search", str(_spec(tmp_path, "auto", ray_address="auto")), cwd=tmp_path,
                env=env)
    assert auto.returncode == 2 and auto.stderr.count("\n") == 1, auto.stderr
    assert "ray_address = 'auto': no Ray cluster answers" in auto.stderr
    assert time.monotonic() - started < 30 and not (tmp_path / "auto").exists()
    local = _nas("search", str(_spec(tmp_path, "local", trials=1)), cwd=tmp_path, env=env)
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]
    assert set(load_results(tmp_path / "local")["status"]) == {"complete"}


def test_an_unreachable_address_fails_within_seconds(tmp_path):
    started = time.monotonic()
    address = f"127.0.0.1:{_closed_port()}"
    proc = _nas("search", str(_spec(tmp_path, "far", ray_address=address)), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"ray_address = {address!r}: no Ray cluster answers" in proc.stderr
    assert time.monotonic() - started < 30 and not (tmp_path / "far").exists()


@pytest.mark.slow
def test_the_dashboard_serves_the_study(tiny_study, tmp_path):
    pytest.importorskip("optuna_dashboard")
    study, _ = tiny_study
    port = _closed_port()
    proc = subprocess.Popen([sys.executable, "-m", "nas", "dashboard", str(study), "--port",
                             str(port)], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        studies = None
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=2) as answer:
                    studies = json.loads(answer.read())["study_summaries"]
                break
            except OSError:
                time.sleep(0.5)
        assert studies, proc.stdout.read() if proc.poll() is not None else "no answer"
        (entry,) = studies
        assert entry["study_name"] == "tiny"
        assert entry["directions"] == ["maximize", "minimize"]  # accuracy:max, latency:min
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/"
                                    f"{entry['study_id']}", timeout=5) as answer:
            detail = json.loads(answer.read())
        assert len(detail["trials"]) == len(load_results(study))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_run_resumed_from_its_checkpoint_ends_as_one_never_stopped(tmp_path):
    import torch

    import search_spaces
    from nas.candidate import load_progress, save_checkpoint
    from trainers.data import load_data
    from trainers.loop import FitSettings, build_optimizer, fit

    space = search_spaces.get("vit")
    config = space.config_cls(img_size=28, patch_size=7, embed_dim=48, depth=2, num_heads=2)
    data = load_data("fashion-mnist", train_size=200, val_size=50, seed=0)
    settings = FitSettings(epochs=3, batch_size=50, lr=3e-3, warmup_epochs=1)

    def fresh():
        torch.manual_seed(0)
        return space.build(config, num_classes=10, in_chans=1)

    straight = fresh()
    fit(straight, data, settings)
    first = fresh()
    optimizer = build_optimizer(first, settings)
    done = []

    def stop_after_one(metrics):
        done.append(metrics)
        save_checkpoint(tmp_path, first, config.to_dict(), {}, optimizer=optimizer,
                        history=done)
        return True  # the driver dies here
    fit(first, data, settings, report=stop_after_one, optimizer=optimizer)
    progress = load_progress(tmp_path)
    assert progress.epoch == 1 and progress.history == done
    again = fresh()
    again.load_state_dict(progress.weights)
    optimizer = build_optimizer(again, settings)
    optimizer.load_state_dict(progress.optimizer)
    result = fit(again, data, settings, optimizer=optimizer, start_epoch=progress.epoch)
    assert [h["epoch"] for h in result.history] == [2, 3]
    for (name, a), b in zip(straight.state_dict().items(), again.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def cluster():
    """A real multi-node Ray cluster on this machine: a head with no CPUs, two 1-CPU
    workers (stopped by its handle), shared by the tests below (the node-loss test, which
    replaces a node, comes last)."""
    from ray.cluster_utils import Cluster

    handle = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    handle.workers = [handle.add_node(num_cpus=1) for _ in range(2)]
    handle.wait_for_nodes()
    yield handle
    handle.shutdown()


@pytest.mark.slow
def test_a_local_search_beside_a_live_cluster_does_not_attach(cluster, tmp_path):
    import ray
    from ray._private import state

    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    (ray_tmp / "ray").mkdir()  # as `ray start` leaves it: the live cluster's address
    (ray_tmp / "ray" / "ray_current_cluster").write_text(cluster.address)
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        jobs = len(state.jobs())
        local = _nas("search", str(_spec(tmp_path, "beside", trials=1)), cwd=tmp_path,
                     env=_env(RAY_TMPDIR=str(ray_tmp), RAY_ADDRESS=cluster.address))
        assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]
        assert len(state.jobs()) == jobs  # no driver of the search joined that cluster
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_several_nodes_need_shared_storage(cluster, tmp_path):
    spec = _spec(tmp_path, "nodes", ray_address=cluster.address)
    proc = _nas("search", str(spec), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "storage = None: the cluster has 3 nodes" in proc.stderr
    assert not (tmp_path / "nodes").exists()


@pytest.mark.slow
def test_a_trial_survives_the_loss_of_its_node(cluster, driver, tmp_path):
    data = {"name": "fashion-mnist", "train_size": 1500, "val_size": 100}
    spec = _spec(tmp_path, "lost", ray_address=cluster.address, trials=2, retries=2,
                 data=data, train={"epochs": 3, "batch_size": 50},
                 storage=f"file://{tmp_path / 'shared'}")
    proc = driver.start([str(spec)], tmp_path)
    lines = driver.read_until(proc, "epoch 1/3", [])
    cluster.remove_node(cluster.workers[0], allow_graceful=False)  # mid-trial
    cluster.add_node(num_cpus=1)
    out = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=600) == 0, out[-3000:]
    assert "its worker died; retrying (1 of 2) from its last checkpoint" in out
    frame = load_results(tmp_path / "lost")
    assert sorted(frame["trial"]) == [0, 1] and set(frame["status"]) == {"complete"}
    assert set(frame["epochs"]) == {3}  # the retried trial kept its epoch count
    ot = optuna.load_study(study_name="lost", storage=f"sqlite:///{tmp_path / 'lost'}/study.db")
    assert [(t.number, t.state.name) for t in ot.trials] == [(0, "COMPLETE"), (1, "COMPLETE")]
    ours = ("  trial ", "[", "search ", "Pareto front", "hypervolume", "results:", "plot:")
    table = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith(ours)]
    assert all(ln.startswith((" ", "trial")) for ln in table), table  # no Ray log lines
