"""The adaptive mechanism proven by a family no line of nas/ or trainers/ knows: the toy
early-exit MLP of tests/nas/toy_family.py, loaded as a spec plugin. A real search (real Ray,
real Optuna storage) through the CLI, its budget-point rows, `nas pareto`, `nas export
--point` and `load_exported` reproducing the point's logits and cost."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
import toy_family
import yaml

import nas
from nas import spec as specs
from nas.guidance import trial_proposals
from nas.results import load_results
from trainers.budget import evaluate_point
from trainers.data import load_data
from trainers.measure import count_macs

HERE = Path(__file__).resolve().parent
POINTS = 3
DATA = {"name": "synthetic", "train_size": 200, "val_size": 100, "img_size": 16, "seed": 0}
SPEC = {
    "name": "toy", "plugins": [str(HERE / "toy_family.py")],
    "space": {"name": "toy-exit"}, "data": DATA,
    "train": {"epochs": 2, "batch_size": 50, "lr": 0.01, "warmup_epochs": 0},
    "objectives": ["accuracy:max", "macs:min"], "sampler": {"name": "random", "seed": 0},
    "trials": 3, "concurrent_trials": 1,
    "budget": {"points": POINTS},
    "latency": {"batch_size": 8, "repeats": 3, "rounds": 1, "warmup": 1},
}


def test_the_toy_cost_model_is_fvcore_of_what_runs():
    config = toy_family.ToyConfig(hidden=16)
    model = toy_family.build(config, num_classes=4, in_chans=3).eval()
    adaptive = toy_family.SPACE.adaptive(config)
    cost = adaptive.cost_model(model, (3, 16, 16), count_macs)
    model.threshold = 2.0  # nothing exits: fvcore traces both stages
    hand = 3 * 256 * 16 + 16 * 4 + 16 * 16 + 16 * 4  # stage 1, head 1, stage 2, head 2
    assert cost.full() == count_macs(model, (3, 16, 16)) == hand
    model.threshold = 0.0  # everything exits at stage 1
    assert cost.first == count_macs(model, (3, 16, 16))
    exited = torch.tensor([True, False, True])
    assert cost.per_image({"exited": exited}).tolist() == [cost.first, cost.full(), cost.first]


@pytest.fixture(scope="module")
def toy_study(tmp_path_factory, run_nas):
    work = tmp_path_factory.mktemp("toy")
    spec = work / "toy.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    proc = run_nas("search", str(spec), "--results-dir", str(work), cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work / "toy", proc


@pytest.mark.slow
def test_a_search_of_the_toy_family_gives_a_row_per_operating_point(toy_study):
    study, proc = toy_study
    frame = load_results(study)
    assert set(frame["status"]) == {"complete"} and sorted(set(frame["trial"])) == [0, 1, 2]
    for trial in range(3):
        rows = frame[frame["trial"] == trial]
        assert list(rows["point"]) == list(range(POINTS))
        # the knob's own column, and the JSON column, as the family's ladder says: 0.9 -> 0.5
        assert rows["exit_confidence"].tolist() == pytest.approx([0.9, 0.7, 0.5])
        assert [json.loads(k) for k in rows["knobs"]] == [
            {"exit_confidence": v} for v in rows["exit_confidence"]]
        assert rows["exited_share"].between(0, 1).all()  # the family's usage figure
        assert rows["exited_share"].is_monotonic_increasing  # a lower threshold exits more
        assert (rows["macs"] <= rows["full_macs"] + 1e-9).all()
        assert rows["macs"].is_monotonic_decreasing and (rows["latency_ms"] > 0).all()
        assert f"trial {trial}: {POINTS} budget points, exit_confidence 0.9..0.5" in proc.stdout
    ot = optuna.load_study(study_name="toy", storage=f"sqlite:///{study / 'study.db'}")
    for t in ot.trials:  # Optuna sees each trial's point 0
        row = frame[(frame["trial"] == t.number) & (frame["point"] == 0)].iloc[0]
        assert t.values == pytest.approx([row["accuracy"], row["macs"]])


@pytest.mark.slow
def test_pareto_show_and_export_of_a_toy_point(toy_study, run_nas, export_point, tmp_path):
    study, _ = toy_study
    frame = load_results(study)
    pareto = run_nas("pareto", str(study), "--format", "json", "--where",
                     "exit_confidence < 0.8", cwd=tmp_path)
    assert pareto.returncode == 0, pareto.stderr
    rows = json.loads(pareto.stdout)
    assert rows and all(r["exit_confidence"] < 0.8 for r in rows)
    shown = run_nas("show", str(study), cwd=tmp_path)
    assert shown.returncode == 0 and "points" in shown.stdout, shown.stderr
    trial = int(frame.loc[frame["point"] == POINTS - 1, "trial"].iloc[0])
    row = frame[(frame["trial"] == trial) & (frame["point"] == POINTS - 1)].iloc[0]
    out = tmp_path / "point"
    config = export_point(study, trial, POINTS - 1, out)
    assert config["config"]["exit_confidence"] == pytest.approx(0.5)  # a plain config
    model = nas.load_exported(out)  # verifies the probe's logits
    data = load_data("synthetic", **{k: v for k, v in DATA.items() if k != "name"})
    cost = toy_family.SPACE.adaptive(toy_family.SPACE.config_from_dict(config["config"]))
    again = evaluate_point(model, data, cost.cost_model(model, (3, 16, 16), count_macs),
                           batch_size=256)
    assert again["accuracy"] == pytest.approx(row["accuracy"])
    assert again["macs"] == pytest.approx(row["macs"])
    assert again["exited_share"] == pytest.approx(row["exited_share"])


@pytest.mark.slow
def test_the_toy_family_runs_importance_guidance_and_prune_by_default(toy_study, run_nas,
                                                                      tmp_path):
    study, _ = toy_study
    frame = load_results(study)
    assert frame["imp_ffn_keep90_s0"].between(0, 1).all()  # its structure was scored
    report = run_nas("importance", str(study), "--trial", "0", cwd=tmp_path)
    assert report.returncode == 0 and "ffn" in report.stdout, report.stderr
    spec = specs.load(study / "spec.yaml")
    row = frame[frame["point"] == 0].iloc[0].to_dict()
    for _, config, origin in trial_proposals(row, spec):  # narrower where scores say so
        assert config.hidden < 32 and origin.endswith(":ffn")
    out = tmp_path / "pruned"
    proc = run_nas("prune", str(study), "--trial", "0", "--keep", "0.5", "--out", str(out),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exported = json.loads((out / "config.json").read_text())
    trained = json.loads(row["config"])
    assert exported["config"]["hidden"] == trained["hidden"] // 2
    nas.load_exported(out)  # builds the smaller model and reproduces its probe
