"""`nas export --format onnx` of a trial, the docs' plain-onnxruntime example, refusals,
and a search whose latency is measured in ONNX Runtime."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import nas
from nas.results import load_results

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _docs_example() -> str:
    text = (ROOT / "docs" / "usage.md").read_text()
    block = re.search(r"<!-- onnxruntime example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "docs/usage.md lost its onnxruntime example"
    return block.group(1)


def test_export_onnx_reloads_in_plain_onnxruntime(tiny_study, run_nas, tmp_path):
    study, _ = tiny_study
    out = tmp_path / "t0"
    proc = run_nas("export", str(study), "--trial", "0", "--format", "onnx", "--out",
                   str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "model.onnx (verified with ONNX Runtime)" in proc.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["onnx"]["max_abs_diff"] <= 1e-4 and config["onnx"]["input"] == "images"
    model = nas.load_exported(out)  # the PyTorch path is unchanged
    namespace = {"EXPORT": str(out)}
    exec(_docs_example(), namespace)  # the docs' snippet, as a user runs it
    x = namespace["x"]
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(namespace["logits"], expected, atol=1e-4, rtol=0)


def test_an_onnx_export_of_a_halting_point_is_refused(tmp_path, run_nas, halting_study):
    study = halting_study
    frame = load_results(study)
    trial = int(frame.loc[frame["knobs"] != "{}", "trial"].iloc[0])
    out = tmp_path / "refused"
    proc = run_nas("export", str(study), "--trial", str(trial), "--format", "onnx",
                   "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "is adaptive" in proc.stderr and "PyTorch export" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".export-*"))  # nothing half-written


@pytest.fixture(scope="module")
def halting_study(tmp_path_factory, run_nas):
    work = tmp_path_factory.mktemp("onnx-halting")
    proc = run_nas("search", str(ROOT / "configs" / "vit_halting.yaml"), "--name", "h",
                   "--results-dir", str(work), "--set", "trials=1", "--set",
                   "space.dims.token_policy=halting", "--set", "data.train_size=200",
                   "--set", "data.val_size=50", "--set", "train.epochs=1", "--set",
                   "budget.points=2", "--set", "space.dims.embed_dim=48", "--set",
                   "space.dims.depth=2", "--set", "latency.repeats=2", "--set",
                   "latency.rounds=1", "--set", "importance.batches=0", cwd=work)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return work / "h"


def test_a_search_timed_in_onnx_runtime(tmp_path, run_nas):
    proc = run_nas("search", str(ROOT / "configs" / "quick.yaml"), "--name", "ort",
                   "--results-dir", str(tmp_path), "--set", "trials=2", "--set",
                   "latency.runtime=onnxruntime", "--set", "data.train_size=200", "--set",
                   "data.val_size=50", "--set", "train.epochs=1", "--set",
                   "space.dims.num_stages=2", "--set", "latency.repeats=3", "--set",
                   "latency.rounds=1", "--set", "sampler.population_size=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    frame = load_results(tmp_path / "ort")
    assert set(frame["status"]) == {"complete"} and (frame["latency_ms"] > 0).all()
    assert set(frame["prov_runtime"]) == {"onnxruntime"}
    assert set(frame["prov_provider"]) == {"CPUExecutionProvider"}
