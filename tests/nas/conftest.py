"""One real search, shared by the end-to-end tests: `nas search` in a subprocess, real local
Ray, real Optuna SQLite storage, real Fashion-MNIST (a small subset, one epoch)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "trials=3", "--set", "concurrent_trials=2", "--set", "data.train_size=300",
        "--set", "data.val_size=100", "--set", "train.epochs=1", "--set", "train.batch_size=50",
        "--set", "latency.repeats=3", "--set", "latency.rounds=2",
        "--set", "space.dims.num_stages=2", "--set", "sampler.population_size=2"]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def nas(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _session_processes(sid: int) -> list[str]:
    """Command lines of the live (not zombie) processes of process group ``sid``, except
    Ray's per-node agents: they wait up to a minute for their dead raylet, holding nothing."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgid = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if int(pgid) != sid or state == "Z":
                continue
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
        if not (cmd.startswith("ray::") and cmd.split()[0].endswith("Agent")):
            found.append(cmd)
    return found


def start_search(args: list[str], cwd: Path) -> subprocess.Popen:
    """`nas search ARGS` in its own session, stdout and stderr as one text stream."""
    return subprocess.Popen([sys.executable, "-m", "nas", "search", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def read_until(proc: subprocess.Popen, marker: str, lines: list[str]) -> list[str]:
    """Read ``proc``'s output into ``lines`` until a line containing ``marker`` (asserted)."""
    deadline = time.monotonic() + 400
    for line in proc.stdout:
        lines.append(line)
        if marker in line or time.monotonic() > deadline:
            break
    assert any(marker in ln for ln in lines), "".join(lines[-40:])
    return lines


def kill_driver(proc: subprocess.Popen) -> None:
    """SIGKILL a `nas search` driver started in its own session (Ray's processes share its
    fate), then wait until Ray's own processes of that session are gone: the next driver
    meets what a crash leaves, without a fixed sleep."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 60
    while (left := _session_processes(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes of the killed driver's session still run: {left}"


@pytest.fixture(scope="session")
def driver():
    """A `nas search` driver's life: ``start(args, cwd)`` (:func:`start_search`),
    ``read_until(proc, marker, lines)`` (:func:`read_until`), ``kill(proc)``
    (:func:`kill_driver`)."""
    return SimpleNamespace(start=start_search, read_until=read_until, kill=kill_driver)


def _export_point(study: Path, trial: int, point: int, out: Path) -> dict:
    import json

    proc = nas("export", str(study), "--trial", str(trial), "--point", str(point), "--out",
               str(out), cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "config.json").read_text())


@pytest.fixture(scope="session")
def export_point():
    """``export_point(study, trial, point, out)``: `nas export` of a budget point (must
    succeed); returns its config.json."""
    return _export_point


def _trial_configs(frame) -> dict[int, dict]:
    import json

    return {t: json.loads(c) for t, c in zip(frame["trial"], frame["config"], strict=True)}


@pytest.fixture(scope="session")
def trial_configs():
    """``trial_configs(frame)``: each results row's config (a dict) by trial number."""
    return _trial_configs


def _prune_policy_trial(study: Path, policy: str, out: Path) -> tuple[dict, dict]:
    """`nas prune --keep 0.5` of the study's first trial of token policy ``policy`` into
    ``out`` (must succeed); returns that trial's config and the pruned config."""
    import json

    from nas.results import load_results

    configs = _trial_configs(load_results(study))
    trial = next(t for t, c in configs.items() if c["token_policy"] == policy)
    proc = nas("prune", str(study), "--trial", str(trial), "--keep", "0.5", "--out", str(out),
               cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    return configs[trial], json.loads((out / "config.json").read_text())["config"]


@pytest.fixture(scope="session")
def prune_policy_trial():
    """``prune_policy_trial(study, policy, out)``: `nas prune --keep 0.5` of the first trial
    of that token policy; returns (its config, the pruned config)."""
    return _prune_policy_trial


@pytest.fixture(scope="session")
def run_nas():
    """``run_nas(*args, cwd=...)``: the CLI in a subprocess."""
    return nas


def _search_study(work: Path, config: Path, name: str,
                  args: list[str]) -> tuple[Path, subprocess.CompletedProcess]:
    proc = nas("search", str(config), "--name", name, "--results-dir", str(work), *args,
               cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work / name, proc


@pytest.fixture(scope="session")
def search_study():
    """``search_study(work, config, name, args)``: `nas search` of a spec file into ``work``
    (must succeed); returns the study folder and the finished process."""
    return _search_study


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("study")
    proc = nas("search", str(ROOT / "configs" / "quick.yaml"), "--name", "tiny",
               "--results-dir", str(work), *TINY, cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work / "tiny", proc


@pytest.fixture(scope="session")
def parent_export(tmp_path_factory) -> Path:
    """A static vit (parents.PARENT) trained one epoch on 300 Fashion-MNIST images, as an
    export folder."""
    import torch
    from parents import PARENT

    import search_spaces
    from nas.export import write_export
    from trainers.data import load_data
    from trainers.loop import FitSettings, fit

    data = load_data("fashion-mnist", train_size=300, val_size=100, seed=0)
    torch.manual_seed(0)
    model = search_spaces.get("vit").build(PARENT, num_classes=10, in_chans=1)
    fit(model, data, FitSettings(epochs=1, batch_size=50, lr=3e-3, warmup_epochs=0))
    inputs = {"img_size": 28, "in_chans": 1, "mean": list(data.mean), "std": list(data.std),
              "num_classes": 10, "class_names": list(data.class_names),
              "dataset": "fashion-mnist"}
    out = tmp_path_factory.mktemp("parent") / "export"
    return write_export(out, model.eval(), space="vit", candidate=PARENT.to_dict(),
                        inputs=inputs, source={"test": "parent"}, metrics={})
