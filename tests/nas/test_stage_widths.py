"""Per-stage widths through the whole path: a real search drawing key_dim, v_ratio and
ffn_ratio per stage (``stage_widths``), then `nas importance`, `nas prune` (--keep and
--macs) and `nas export`, each export reloading with its probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nas
from nas import load_results

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["trials=2", "concurrent_trials=2", "data.train_size=300", "data.val_size=100",
        "train.epochs=1", "train.batch_size=50", "latency.repeats=3", "latency.rounds=2",
        "space.dims.num_stages=2", "sampler.population_size=2", "space.dims.stage_widths=true",
        "space.dims.key_dim_1=[4, 8]", "space.dims.key_dim_2=[16]",
        "space.dims.ffn_ratio_1=[1.0]", "space.dims.ffn_ratio_2=[3.0]"]


@pytest.mark.slow
def test_per_stage_widths_search_prune_and_export(tmp_path, run_nas, search_study):
    args = [a for kv in ARGS for a in ("--set", kv)]
    study, _ = search_study(tmp_path, ROOT / "configs" / "quick.yaml", "stages", args)
    frame = load_results(study)
    assert (frame["status"] == "complete").all()
    config = json.loads(frame["config"].iloc[0])
    assert config["key_dim"][1] == 16 and config["ffn_ratio"] == [1.0, 3.0]
    trial = str(int(frame["trial"].iloc[0]))
    shown = run_nas("importance", str(study), "--trial", trial, cwd=tmp_path)
    assert shown.returncode == 0 and "qk" in shown.stdout, shown.stderr
    out = tmp_path / "half"
    proc = run_nas("prune", str(study), "--trial", trial, "--keep", "0.5", "--out", str(out),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pruned = json.loads((out / "config.json").read_text())["config"]
    assert pruned["key_dim"] == [max(1, round(k / 2)) for k in config["key_dim"]]
    assert pruned["ffn_ratio"] == [0.5, 1.5]  # each stage keeps half of its own FFN
    nas.load_exported(out)
    macs = tmp_path / "macs"
    assert run_nas("prune", str(study), "--trial", trial, "--macs", "0.7", "--out", str(macs),
                   cwd=tmp_path).returncode == 0
    nas.load_exported(macs)
    exported = tmp_path / "export"
    assert run_nas("export", str(study), "--trial", trial, "--out", str(exported),
                   cwd=tmp_path).returncode == 0
    assert json.loads((exported / "config.json").read_text())["config"]["ffn_ratio"] == [1.0,
                                                                                       3.0]
    nas.load_exported(exported)
