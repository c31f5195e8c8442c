"""A real search mixing static and DVT cascade ViTs (configs/vit_cascade.yaml): cascade
trials give a row per operating point (exit thresholds fitted on the calibration split), and
the export of a point reloads with the same logits (its probe), exits and cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import nas
from nas.results import load_results
from search_spaces.policies.cascade import OFF
from search_spaces.vit import ViTConfig
from trainers.budget import cost_model, evaluate_point
from trainers.data import load_data

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
POINTS = 3
DATA = {"train_size": 300, "val_size": 100, "calibration_size": 200}
SMALL = ["--set", "trials=4", "--set", "sampler.name=random", "--set", "sampler.seed=3",
         *(f for k, v in DATA.items() for f in ("--set", f"data.{k}={v}")),
         "--set", "train.epochs=1", "--set", "train.batch_size=50",
         "--set", f"budget.points={POINTS}", "--set", "latency.repeats=3",
         "--set", "latency.rounds=2", "--set", "space.dims.embed_dim=48",
         "--set", "space.dims.depth=2", "--set", "space.dims.num_heads=2",
         "--set", "space.dims.token_policy=[static, cascade]"]


@pytest.fixture(scope="module")
def cascade_study(tmp_path_factory, search_study):
    return search_study(tmp_path_factory.mktemp("cascade"), ROOT / "configs" / "vit_cascade.yaml",
                        "cascade", SMALL)


def test_cascade_trials_give_fitted_operating_points(trial_configs, cascade_study):
    study, proc = cascade_study
    frame = load_results(study)
    configs = trial_configs(frame)
    assert {c["token_policy"] for c in configs.values()} == {"static", "cascade"}
    assert (frame["status"] == "complete").all()
    for trial, config in configs.items():
        rows = frame[frame["trial"] == trial]
        if config["token_policy"] == "static":
            assert list(rows["point"]) == [0]
            continue
        stages = len(config["cascade_scales"].split("+")) + 1
        assert list(rows["point"]) == list(range(POINTS))
        knobs = [json.loads(k) for k in rows["knobs"]]
        assert knobs[0] == {f"cascade_exit_{k}": OFF for k in range(1, stages)}
        assert all(0 < v <= 1 for k in knobs for v in k.values())
        shares = rows[[f"exit_share_{k}" for k in range(1, stages + 1)]]
        assert shares.sum(axis=1).to_numpy() == pytest.approx(1.0)
        assert rows["exit_share_1"].iloc[0] == 0  # point 0: every image runs every stage
        assert rows["macs"].iloc[0] == pytest.approx(rows["full_macs"].iloc[0])
        assert rows["macs"].iloc[-1] < rows["macs"].iloc[0]  # q = 0.05: most leave early
        assert (rows["latency_ms"] > 0).all()
        assert f"trial {trial}: {POINTS} budget points" in proc.stdout


def test_export_of_a_cascade_point_reloads_with_its_exits_and_cost(trial_configs, cascade_study,
                                                                   export_point, tmp_path):
    study, _ = cascade_study
    frame = load_results(study)
    trial = next(t for t, c in trial_configs(frame).items() if c["token_policy"] == "cascade")
    row = frame[(frame["trial"] == trial) & (frame["point"] == 2)].iloc[0]
    out = tmp_path / "point"
    config = export_point(study, trial, 2, out)
    for name, value in json.loads(row["knobs"]).items():
        assert config["config"][name] == value  # the fitted thresholds, exactly
    model = nas.load_exported(out)  # verifies the probe logits
    data = load_data("fashion-mnist", seed=0, **DATA)
    vit = ViTConfig.from_dict(config["config"])
    cost = cost_model("vit", vit, model, (1, 28, 28))
    again = evaluate_point(model, data, cost, batch_size=100)
    assert again["accuracy"] == pytest.approx(row["accuracy"])
    assert again["macs"] == pytest.approx(row["macs"])  # same exits: same cost
    with torch.no_grad():
        exits = model(next(data.val_batches(100))[0]).aux["cascade_exit"]
    assert float((exits == 0).double().mean()) == pytest.approx(row["exit_share_1"])


def test_a_cascade_trial_is_pruned_stage_by_stage(cascade_study, prune_policy_trial, tmp_path):
    out = tmp_path / "pruned"
    before, after = prune_policy_trial(cascade_study[0], "cascade", out)
    assert after["token_policy"] == "cascade"
    assert after["cascade_scales"] == before["cascade_scales"]
    assert int(after["embed_dim"] * after["mlp_ratio"]) == int(
        before["embed_dim"] * before["mlp_ratio"] * 0.5)
    model = nas.load_exported(out)  # the pruned cascade reloads with its probe logits
    assert len(model.stages) == len(before["cascade_scales"].split("+"))
