"""A real search over a space that mixes static and halting ViTs (configs/vit_halting.yaml):
budget points as rows, what Optuna sees, export of a budget point and its reload."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

import nas
from nas.results import load_results
from search_spaces.policies.halting import HaltingCost
from search_spaces.policies.token_cost import TokenCost
from trainers.budget import evaluate_point
from trainers.data import load_data
from trainers.measure import count_macs

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
POINTS = 3
SMALL = ["--set", "trials=3", "--set", "sampler.name=random", "--set", "sampler.seed=0",
         "--set", "data.train_size=300", "--set", "data.val_size=100",
         "--set", "train.epochs=1", "--set", "train.batch_size=50",
         "--set", f"budget.points={POINTS}", "--set", "latency.repeats=3",
         "--set", "latency.rounds=2", "--set", "space.dims.embed_dim=48",
         "--set", "space.dims.depth=4"]


@pytest.fixture(scope="module")
def halting_study(tmp_path_factory, search_study):
    return search_study(tmp_path_factory.mktemp("halting"), ROOT / "configs" / "vit_halting.yaml",
                        "mixed", SMALL)


def _policies(trial_configs, frame):
    return {t: c["token_policy"] for t, c in trial_configs(frame).items()}


def test_halting_trials_give_a_row_per_budget_point(halting_study, trial_configs):
    study, proc = halting_study
    frame = load_results(study)
    policies = _policies(trial_configs, frame)
    assert set(policies.values()) == {"static", "halting"}  # the space mixes both
    assert (frame["status"] == "complete").all()
    for trial, policy in policies.items():
        rows = frame[frame["trial"] == trial]
        if policy == "static":
            assert list(rows["point"]) == [0] and rows["halt_eps"].isna().all()
            continue
        assert list(rows["point"]) == list(range(POINTS))
        assert rows["halt_eps"].tolist() == pytest.approx([0.01, 0.48, 0.95])
        assert [json.loads(k) for k in rows["knobs"]] == [  # the knob column = its JSON
            {"halt_eps": v} for v in rows["halt_eps"]]
        assert (rows["macs"] <= rows["full_macs"] + 1e-6).all()
        assert rows["tokens_kept"].between(0, 1).all() and (rows["latency_ms"] > 0).all()
        assert (rows["prov_input"] == "data").all()  # timed on real images
        assert f"trial {trial}: {POINTS} budget points" in proc.stdout


def test_optuna_sees_each_trials_default_point(halting_study):
    study, _ = halting_study
    frame = load_results(study)
    ot = optuna.load_study(study_name="mixed", storage=f"sqlite:///{study / 'study.db'}")
    assert len(ot.trials) == 3
    for t in ot.trials:
        row = frame[(frame["trial"] == t.number) & (frame["point"] == 0)].iloc[0]
        assert t.values == pytest.approx([row["accuracy"], row["macs"]])


def test_pareto_considers_every_budget_point(halting_study, run_nas, tmp_path):
    study, _ = halting_study
    out = run_nas("pareto", str(study), "--format", "json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    expected = nas.pareto_front(load_results(study), ["accuracy:max", "macs:min"])
    assert [(r["trial"], r["point"]) for r in rows] == list(
        zip(expected["trial"], expected["point"], strict=True))
    shown = run_nas("show", str(study), cwd=tmp_path)
    assert shown.returncode == 0 and "points" in shown.stdout and "3 trials" in shown.stdout


def test_export_of_a_budget_point_reloads_with_its_behaviour(halting_study, run_nas, trial_configs,
                                                             export_point, tmp_path):
    study, _ = halting_study
    frame = load_results(study)
    trial = next(t for t, p in _policies(trial_configs, frame).items() if p == "halting")
    row = frame[(frame["trial"] == trial) & (frame["point"] == POINTS - 1)].iloc[0]
    out = tmp_path / "point"
    config = export_point(study, trial, POINTS - 1, out)
    assert config["config"]["halt_eps"] == pytest.approx(row["halt_eps"])
    assert config["source"]["point"] == POINTS - 1
    model = nas.load_exported(out)  # verifies the probe logits
    data = load_data("fashion-mnist", train_size=300, val_size=100, seed=0)
    cost = HaltingCost(TokenCost.of(model, (1, 28, 28), count_macs))
    again = evaluate_point(model, data, cost, batch_size=100)
    assert again["accuracy"] == pytest.approx(row["accuracy"])
    assert again["macs"] == pytest.approx(row["macs"])  # same cost: same tokens run
    bad = run_nas("export", str(study), "--trial", str(trial), "--point", str(POINTS),
                  "--out", str(tmp_path / "bad"), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--point" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_importance_and_pruning_of_a_halting_trial(halting_study, run_nas, trial_configs,
                                                   tmp_path):
    study, _ = halting_study
    frame = load_results(study)
    trial = next(t for t, p in _policies(trial_configs, frame).items() if p == "halting")
    assert (study / "trials" / str(trial) / "importance.safetensors").is_file()
    shown = run_nas("importance", str(study), "--trial", str(trial), cwd=tmp_path)
    assert shown.returncode == 0 and "ffn" in shown.stdout, shown.stderr
    out = tmp_path / "pruned"
    proc = run_nas("prune", str(study), "--trial", str(trial), "--keep", "0.5", "--out",
                   str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    model = nas.load_exported(out)  # probe verified: the pruned model still halts the same
    config = json.loads((out / "config.json").read_text())["config"]
    parent = json.loads(frame[frame["trial"] == trial].iloc[0]["config"])
    assert config["token_policy"] == "halting" and config["mlp_ratio"] < parent["mlp_ratio"]
    metrics = json.loads((out / "metrics.json").read_text())
    parent_full = frame[frame["trial"] == trial].iloc[0]["full_macs"]
    assert metrics["macs"] <= metrics["full_macs"] < parent_full
    assert model.halting is not None and metrics["prov_input"] == "data"
