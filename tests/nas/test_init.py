"""The spec's ``init`` section: the weights fix the architecture, conflicts and misfits are one
clear error before anything is written, and a warm-started search records its provenance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from parents import PARENT
from safetensors.torch import save_file

import search_spaces
from nas import spec as specs
from nas.init import check_init_weights
from nas.results import load_results
from nas.sections import SpecError
from search_spaces.dims import Replay
from trainers.data import load_data
from trainers.loop import evaluate
from trainers.warmstart import read_init, warm_start

VIT = search_spaces.get("vit")
FMNIST = {"name": "fashion-mnist", "train_size": 300, "val_size": 100, "seed": 0}


def _vit_spec(weights: Path, **changes) -> dict:
    raw = {"name": "warm", "space": {"name": "vit"}, "data": dict(FMNIST),
           "init": {"weights": str(weights)}, "trials": 2}
    raw.update(changes)
    return raw


def test_the_weights_fix_the_architecture_dims(parent_export):
    spec = specs.from_dict(_vit_spec(parent_export, space={"name": "vit", "dims": {
        "token_policy": ["static", "halting"], "embed_dim": [48, 96]}}))
    dims = spec.space.dims
    for name, value in VIT.architecture_of(PARENT).items():
        assert dims[name].values() == (value,), name
    assert dims["token_policy"].values() == ("static", "halting")  # not architecture
    assert spec.init.weights == str(parent_export.resolve())


def test_a_conflicting_dim_names_both(parent_export):
    with pytest.raises(SpecError, match=r"^space.dims.embed_dim = \[96, 144\]: conflicts with "
                                        r"init.weights .*embed_dim=48"):
        specs.from_dict(_vit_spec(parent_export, space={"name": "vit", "dims": {
            "embed_dim": [96, 144]}}))
    with pytest.raises(SpecError, match=r"^data.img_size = 32: conflicts with init.weights "
                                        r".*img_size=28"):
        specs.from_dict(_vit_spec(parent_export, data={**FMNIST, "img_size": 32}))


def test_a_bare_state_dict_needs_the_heads_fixed(tmp_path):
    torch.manual_seed(0)
    deit = VIT.build(VIT.presets["deit_tiny"], num_classes=1000, in_chans=3)
    path = tmp_path / "deit.safetensors"
    save_file({k: v.contiguous() for k, v in deit.state_dict().items()}, str(path))
    data = {"name": "synthetic", "img_size": 224, "num_classes": 1000, "train_size": 8,
            "val_size": 4}
    raw = _vit_spec(path, data=data)
    with pytest.raises(SpecError, match=r"^space.dims.num_heads = \[1, 2, 3, 4, 6\]: "
                                        r"init.weights .* does not say it"):
        specs.from_dict(raw)
    raw["space"] = {"name": "vit", "dims": {"num_heads": 3}}
    spec = specs.from_dict(raw)  # DeiT-tiny's architecture, the heads from the spec
    assert {n: spec.space.dims[n].values()[0] for n in ("patch_size", "embed_dim", "depth")} \
        == {"patch_size": 16, "embed_dim": 192, "depth": 12}
    assert check_init_weights("vit", spec.space.dims, spec.init, num_classes=1000,
                              in_chans=3) == []


def test_a_misfit_tensor_is_one_line_and_writes_nothing(tmp_path, run_nas):
    torch.manual_seed(0)  # a head for 5 classes; the data has 10
    model = VIT.build(PARENT, num_classes=5, in_chans=1)
    path = tmp_path / "five.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    spec = tmp_path / "spec.yaml"
    heads = {"name": "vit", "dims": {"num_heads": 2}}  # a bare state dict does not say them
    spec.write_text(yaml.safe_dump(_vit_spec(path, space=heads,
                                             results_dir=str(tmp_path / "results"))))
    proc = run_nas("search", str(spec), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "init.weights" in proc.stderr and "'head.weight' has shape (5, 48)" in proc.stderr
    assert not (tmp_path / "results").exists()
    fresh = _vit_spec(path, space=heads, init={"weights": str(path), "fresh": ["head.*"]})
    parsed = specs.from_dict(fresh)
    assert check_init_weights("vit", parsed.space.dims, parsed.init, num_classes=10,
                              in_chans=1) == ["head.weight", "head.bias"]


def test_a_static_candidate_from_an_exported_trial_starts_at_its_accuracy(tiny_study, run_nas,
                                                                          tmp_path):
    study, _ = tiny_study
    row = load_results(study).iloc[0]
    out = tmp_path / "t0"
    assert run_nas("export", str(study), "--trial", str(row["trial"]), "--out", str(out),
                   cwd=tmp_path).returncode == 0
    raw = yaml.safe_load((study / "spec.yaml").read_text())
    raw["init"] = {"weights": str(out)}
    spec = specs.from_dict(raw)
    space = search_spaces.get(spec.space.name)
    merged = {**space.dims, **spec.space.dims}
    candidate = space.suggest(Replay({n: d.values()[0] for n, d in merged.items()}), merged)
    assert candidate.to_dict() == json.loads(row["config"])  # the architecture is fixed
    data = load_data(spec.data)
    torch.manual_seed(1)
    model = space.build(candidate, num_classes=data.num_classes, in_chans=data.in_chans)
    warm_start(model, read_init(spec.init.weights), adaptive=space.adaptive(candidate))
    val = evaluate(model, data.val_batches(spec.train.eval_batch()))
    assert val["accuracy"] == pytest.approx(row["accuracy"])


@pytest.mark.slow
def test_a_warm_started_search_records_its_weights(parent_export, tmp_path, run_nas):
    raw = _vit_spec(parent_export, space={"name": "vit", "dims": {
        "token_policy": ["static", "halting"]}}, results_dir=str(tmp_path),
        train={"epochs": 1, "batch_size": 50, "warmup_epochs": 0},
        sampler={"name": "random", "seed": 1}, budget={"points": 2},
        latency={"repeats": 3, "rounds": 1})
    spec = tmp_path / "warm.yaml"
    spec.write_text(yaml.safe_dump(raw))
    proc = run_nas("search", str(spec), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    frame = load_results(tmp_path / "warm")
    sha = hashlib.sha256((parent_export / "model.safetensors").read_bytes()).hexdigest()
    assert (frame["status"] == "complete").all() and (frame["init_sha256"] == sha).all()
    assert (frame["init_weights"] == str(parent_export.resolve())).all()
    for trial in set(frame["trial"]):
        record = json.loads((tmp_path / "warm" / "trials" / str(trial) / "init.json")
                            .read_text())
        assert record["init_sha256"] == sha and record["fresh"] == []
    out = tmp_path / "exported"
    assert run_nas("export", str(tmp_path / "warm"), "--trial", "0", "--out", str(out),
                   cwd=tmp_path).returncode == 0
    source = json.loads((out / "config.json").read_text())["source"]
    assert source["init"] == {"sha256": sha, "weights": str(parent_export.resolve())}
