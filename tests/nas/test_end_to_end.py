"""What users do: search, show, pareto, export, reload — through the CLI in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

import nas
from nas.results import load_results

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_search_writes_the_study_layout(tiny_study):
    study, proc = tiny_study
    for name in ("spec.yaml", "study.db", "trials.parquet", "ray", "trials", "pareto.png"):
        assert (study / name).exists(), name
    frame = load_results(study)
    assert list(frame["trial"]) == [0, 1, 2]
    assert set(frame["status"]) == {"complete"}
    assert frame["accuracy"].between(0.0, 1.0).all() and (frame["latency_ms"] > 0).all()
    assert (frame["params"] > 0).all() and (frame["macs"] > 0).all()
    assert (frame["prov_threads"] == 1).all() and (frame["prov_batch_size"] == 16).all()
    for n in frame["trial"]:
        assert (study / "trials" / str(n) / "model.safetensors").is_file()
    assert "[3/3] trial" in proc.stdout and "Pareto front" in proc.stdout  # progress + table


def test_optuna_study_agrees_with_results_table(tiny_study):
    study, _ = tiny_study
    frame = load_results(study)
    ot = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study / 'study.db'}")
    assert len(ot.trials) == 3
    for t in ot.trials:
        row = frame[frame["trial"] == t.number].iloc[0]
        assert t.values == pytest.approx([row["accuracy"], row["latency_ms"]])
        assert t.user_attrs["params"] == row["params"]
    front = nas.pareto_front(frame, ["accuracy:max", "latency_ms:min"])
    assert sorted(front["trial"]) == sorted(t.number for t in ot.best_trials)


def test_show_and_pareto_cli(tiny_study, tmp_path, run_nas):
    study, _ = tiny_study
    shown = run_nas("show", str(study), cwd=tmp_path)
    assert shown.returncode == 0 and "3 complete" in shown.stdout
    out = run_nas("pareto", str(study), "--format", "json", "--plot", str(tmp_path / "f.png"),
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    expected = nas.pareto_front(load_results(study), ["accuracy:max", "latency_ms:min"])
    assert [r["trial"] for r in rows] == list(expected["trial"])
    assert (tmp_path / "f.png").stat().st_size > 1000
    csv = run_nas("pareto", str(study), "--objectives", "accuracy:max", "params:min",
                  "--where", "params > 0", "--format", "csv", cwd=tmp_path)
    assert csv.returncode == 0 and csv.stdout.startswith("trial,accuracy,params")


def test_export_then_reload_gives_same_logits(tiny_study, tmp_path, run_nas):
    study, _ = tiny_study
    out = tmp_path / "exported"
    proc = run_nas("export", str(study), "--trial", "1", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["input"]["img_size"] == 28 and config["input"]["in_chans"] == 1
    assert len(config["input"]["class_names"]) == 10 and len(config["input"]["mean"]) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trial"] == 1 and len(metrics["history"]) == 1
    model = nas.load_exported(out)
    # same logits as the trial's own weights loaded into a fresh build
    from safetensors.torch import load_file

    from nas.export import build_model
    ref = build_model(config["space"], config["config"], config["input"])
    ref.load_state_dict(load_file(str(study / "trials" / "1" / "model.safetensors")))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), ref.eval()(x), atol=1e-5)
    # tampered weights are caught by the probe
    weights = load_file(str(out / "model.safetensors"))
    first = next(k for k, v in weights.items() if v.is_floating_point())
    weights[first] = weights[first] + 1.0
    from safetensors.torch import save_file
    save_file(weights, str(out / "model.safetensors"))
    with pytest.raises(nas.export.ExportError, match="differs"):
        nas.load_exported(out)


def test_user_mistakes_exit_2_with_one_line(tiny_study, tmp_path, run_nas):
    study, _ = tiny_study
    cases = [
        ("search", str(ROOT / "configs" / "quick.yaml"), "--set", "train.epochs=0"),
        ("search", str(tmp_path / "missing.yaml")),
        ("search", "--name", "tiny", "--results-dir", str(study.parent)),  # exists
        ("pareto", str(tmp_path)),
        ("pareto", str(study), "--where", "nonsense >"),
        ("export", str(study), "--trial", "99", "--out", str(tmp_path / "x")),
        ("export", str(study), "--trial", "0", "--out", str(study)),  # not empty
        ("search", str(ROOT / "configs" / "quick.yaml"), "--set", "storage=ftp://x/y",
         "--results-dir", str(tmp_path / "r")),  # a scheme Ray's storage cannot use
    ]
    with ThreadPoolExecutor(2) as pool:  # two CLI processes at a time: one per core
        procs = list(pool.map(lambda args: run_nas(*args, cwd=tmp_path), cases))
    for args, proc in zip(cases, procs, strict=True):
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nas: error: "), (args, proc.stderr)
    assert not (tmp_path / "x").exists() and not (tmp_path / "r").exists()
    assert len(pd.read_parquet(study / "trials.parquet")) == 3  # nothing lost


def test_import_nas_starts_no_ray(tmp_path):
    code = ("import sys, nas; nas.load_exported; nas.load_results; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
