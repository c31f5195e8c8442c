"""A real search over a space that mixes static, halting and gated ViTs
(configs/vit_adaptive.yaml): gated trials give a row per operating point, and the export of
a point reloads with the same logits and cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nas
from nas.results import load_results
from search_spaces.policies.gating import BUDGET_KNOBS
from search_spaces.vit import ViTConfig
from trainers.budget import cost_model, evaluate_point
from trainers.data import load_data

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
POINTS = 3
SMALL = ["--set", "trials=3", "--set", "sampler.name=random", "--set", "sampler.seed=1",
         "--set", "data.train_size=300", "--set", "data.val_size=100",
         "--set", "train.epochs=1", "--set", "train.batch_size=50",
         "--set", f"budget.points={POINTS}", "--set", "latency.repeats=3",
         "--set", "latency.rounds=2", "--set", "space.dims.embed_dim=48",
         "--set", "space.dims.depth=3", "--set", "space.dims.token_policy=gating"]


@pytest.fixture(scope="module")
def gated_study(tmp_path_factory, search_study):
    return search_study(tmp_path_factory.mktemp("gating"), ROOT / "configs" / "vit_adaptive.yaml",
                        "gating", SMALL)


def test_gated_trials_give_a_row_per_operating_point(trial_configs, gated_study):
    study, proc = gated_study
    frame = load_results(study)
    configs = trial_configs(frame)
    assert {c["token_policy"] for c in configs.values()} == {"gating"}
    assert len({c["gate_kinds"] for c in configs.values()}) > 1  # the gate kinds are searched
    assert (frame["status"] == "complete").all()
    for trial, config in configs.items():
        rows = frame[frame["trial"] == trial]
        kinds = config["gate_kinds"].split("+")
        assert list(rows["point"]) == list(range(POINTS))
        knobs = [json.loads(k) for k in rows["knobs"]]
        assert {len(k) for k in knobs} == {len(kinds)}  # one threshold per gate kind
        assert knobs[-1] == {name: pytest.approx(BUDGET_KNOBS[name].limit) for name in knobs[0]}
        for kind in kinds:
            assert rows[f"usage_{kind}"].between(0, 1).all()
        assert (rows["macs"] <= rows["full_macs"] + 1e-6).all()
        assert rows["macs"].is_monotonic_decreasing  # higher thresholds turn more off
        assert (rows["latency_ms"] > 0).all() and (rows["prov_input"] == "data").all()
        assert f"trial {trial}: {POINTS} budget points" in proc.stdout


def test_export_of_a_gated_point_reloads_with_its_logits_and_cost(trial_configs, gated_study,
                                                                  export_point, tmp_path):
    study, _ = gated_study
    frame = load_results(study)
    trial = next(t for t, c in trial_configs(frame).items() if c["token_policy"] == "gating")
    row = frame[(frame["trial"] == trial) & (frame["point"] == 1)].iloc[0]
    out = tmp_path / "point"
    config = export_point(study, trial, 1, out)
    for name, value in json.loads(row["knobs"]).items():
        assert config["config"][name] == pytest.approx(value)
    model = nas.load_exported(out)  # verifies the probe logits
    data = load_data("fashion-mnist", train_size=300, val_size=100, seed=0)
    vit = ViTConfig.from_dict(config["config"])
    cost = cost_model("vit", vit, model, (1, 28, 28))
    again = evaluate_point(model, data, cost, batch_size=100)
    assert again["accuracy"] == pytest.approx(row["accuracy"])
    assert again["macs"] == pytest.approx(row["macs"])  # same decisions: same cost


def test_a_gated_trial_is_pruned_and_keeps_its_gates(gated_study, prune_policy_trial,
                                                     tmp_path):
    out = tmp_path / "pruned"
    before, exported = prune_policy_trial(gated_study[0], "gating", out)
    assert exported["token_policy"] == "gating"
    assert exported["gate_kinds"] == before["gate_kinds"]
    nas.load_exported(out)  # the pruned gated model reloads with its probe logits
