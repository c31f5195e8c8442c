"""Taylor importance of every trained trial, `nas importance` and `nas prune`: on the shared
tiny study (a real search on real Fashion-MNIST), and a search that adds a pruned variant of
its best trial itself."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import nas
from nas import cli
from nas import spec as specs
from nas.export import build_model
from nas.results import load_results
from trainers.data import load_data
from trainers.groups import group_layout
from trainers.importance import load_scores, retained_fractions, summarize
from trainers.loop import evaluate
from trainers.measure import count_macs, count_params

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--set", "trials=2", "--set", "concurrent_trials=2", "--set", "data.train_size=300",
         "--set", "data.val_size=100", "--set", "train.epochs=1", "--set", "train.batch_size=50",
         "--set", "latency.repeats=3", "--set", "latency.rounds=2",
         "--set", "space.dims.num_stages=2", "--set", "sampler.population_size=2"]


def trial_model(study: Path, trial: int) -> torch.nn.Module:
    """The trial's own model: its config and final weights, as the search left them."""
    src = study / "trials" / str(trial)
    model = build_model("efficientvit", json.loads((src / "candidate.json").read_text()),
                        json.loads((src / "input.json").read_text()))
    model.load_state_dict(load_file(str(src / "model.safetensors")))
    return model.eval()


def scores_of(study: Path, trial: int) -> dict[str, torch.Tensor]:
    return load_scores(study / "trials" / str(trial) / "importance.safetensors")


def test_every_trained_trial_has_its_scores_and_their_summary(tiny_study):
    study, _ = tiny_study
    frame = load_results(study)
    imp = [c for c in frame.columns if c.startswith("imp_")]
    assert {"imp_qk_keep90_s0", "imp_ffn_keep95_s1", "imp_depth_keep90_s1"} <= set(imp)
    assert (frame["origin"] == "sampler").all() and (frame["status"] == "complete").all()
    for _, row in frame.iterrows():
        scores = scores_of(study, row["trial"])
        layout = group_layout(trial_model(study, row["trial"]))  # scores of this model
        assert {k: v.numel() for k, v in scores.items()} == {k: g.size for k, g in
                                                             layout.items()}
        values = torch.cat(list(scores.values()))
        assert torch.isfinite(values).all() and (values >= 0).all() and values.sum() > 0
        summary = summarize(scores)  # the row holds the summary of exactly these scores
        assert row[list(summary)].astype(float).tolist() == pytest.approx(list(summary.values()))
        assert row[[c for c in imp if c not in summary]].isna().all()  # other families' keys
    values = frame[imp].to_numpy(dtype=float)
    present = values[~np.isnan(values)]
    assert len(present) > 0 and ((present > 0) & (present <= 1)).all()


def test_importance_of_one_trial_table_csv_and_plot(tiny_study, tmp_path, run_nas, capsys):
    study, _ = tiny_study
    png = tmp_path / "t0.png"
    proc = run_nas("importance", str(study), "--trial", "0", "--plot", str(png), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "trial 0" in proc.stdout and "stages.0.blocks.0" in proc.stdout
    assert "depth (share of blocks)" in proc.stdout and png.stat().st_size > 1000
    assert cli.main(["importance", str(study), "--trial", "0", "--coverage", "0.5",
                     "--format", "csv"]) == 0
    got = pd.read_csv(io.StringIO(capsys.readouterr().out))
    expected = retained_fractions(scores_of(study, 0), coverage=0.5)
    widths = got[got["component"] != "depth"].set_index(["block", "component"])["retained"]
    assert len(widths) == len(expected)
    for _, row in expected.iterrows():
        assert widths[(row["block"], row["component"])] == pytest.approx(row["retained"])
    assert set(got[got["component"] == "depth"]["block"]) == {"stages.0.blocks",
                                                              "stages.1.blocks"}


def test_importance_aggregated_over_the_front(tiny_study, tmp_path, capsys):
    study, _ = tiny_study
    png = tmp_path / "front.png"
    assert cli.main(["importance", str(study), "--format", "json", "--plot", str(png)]) == 0
    rows = pd.DataFrame(json.loads(capsys.readouterr().out)).set_index(["block", "component"])
    front = nas.pareto_front(load_results(study), ["accuracy:max", "latency_ms:min"])
    per_trial = pd.concat([retained_fractions(scores_of(study, t), coverage=0.9)
                           for t in dict.fromkeys(front["trial"])])
    expected = per_trial.groupby(["block", "component"])["retained"].agg(["mean", "min",
                                                                          "max", "count"])
    for key, stats in expected.iterrows():
        assert rows.loc[key, ["mean", "min", "max"]].tolist() == pytest.approx(
            [stats["mean"], stats["min"], stats["max"]])
        assert rows.loc[key, "n"] == stats["count"]
    assert png.stat().st_size > 1000
    assert cli.main(["importance", str(study)]) == 0
    assert "Pareto front, trials" in capsys.readouterr().out


def test_prune_writes_a_smaller_export_that_reloads(tiny_study, tmp_path, run_nas):
    study, _ = tiny_study
    out = tmp_path / "pruned"
    proc = run_nas("prune", str(study), "--trial", "0", "--keep", "0.5", "--out", str(out),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and "params" in proc.stdout and "->" in proc.stdout
    model = nas.load_exported(out)  # the probe is verified on load
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert {k: config["source"][k] for k in ("study", "trial", "pruned_from", "keep",
                                             "finetune")} == {
        "study": "tiny", "trial": None, "pruned_from": 0, "keep": 0.5, "finetune": 0}
    original = json.loads((study / "trials" / "0" / "candidate.json").read_text())
    new = config["config"]
    assert new["key_dim"] < original["key_dim"] and new["ffn_ratio"] < original["ffn_ratio"]
    assert new["embed_dims"] == original["embed_dims"]
    macs = count_macs(model, (1, 28, 28))
    assert macs == metrics["macs"] < count_macs(trial_model(study, 0), (1, 28, 28))
    assert count_params(model) == metrics["params"] < count_params(trial_model(study, 0))
    assert metrics["latency_ms"] > 0 and metrics["prov_threads"] == 1
    data = load_data(specs.load(study / "spec.yaml").data)
    assert evaluate(model, data.val_batches(100))["accuracy"] == metrics["accuracy"]


def test_prune_to_a_share_of_the_macs(tiny_study, tmp_path, capsys):
    study, _ = tiny_study
    out = tmp_path / "macs"
    assert cli.main(["prune", str(study), "--trial", "0", "--macs", "0.6", "--out",
                     str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    original = count_macs(trial_model(study, 0), (1, 28, 28))
    assert count_macs(nas.load_exported(out), (1, 28, 28)) == metrics["macs"]
    assert 0.4 * original < metrics["macs"] <= 0.6 * original  # the largest keep that fits
    assert 0 < metrics["keep"] < 1 and f"keep {metrics['keep']:g}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as both:  # --keep and --macs exclude each other
        cli.main(["prune", str(study), "--trial", "0", "--keep", "0.5", "--macs", "0.5",
                  "--out", str(tmp_path / "both")])
    assert both.value.code == 2 and not (tmp_path / "both").exists()


def test_prune_keep_one_gives_the_original_logits(tiny_study, tmp_path):
    study, _ = tiny_study
    out = tmp_path / "same"
    assert cli.main(["prune", str(study), "--trial", "1", "--keep", "1.0", "--out",
                     str(out)]) == 0
    model = nas.load_exported(out)
    original = json.loads((study / "trials" / "1" / "candidate.json").read_text())
    assert model.vitnas_config["config"] == original
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(x), trial_model(study, 1)(x))


def test_prune_add_makes_a_row_that_pareto_lists_and_export_exports(tiny_study, tmp_path,
                                                                   run_nas, capsys):
    study = tmp_path / "tiny"
    shutil.copytree(tiny_study[0], study)  # the shared study stays as the others expect it
    before = load_results(study)
    parent = int(before.loc[before["params"].idxmin(), "trial"])  # pruned: fewest params
    proc = run_nas("prune", str(study), "--trial", str(parent), "--keep", "0.5",
                   "--finetune", "1", "--add", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    new = int(before["trial"].max()) + 1
    assert f"added as trial {new}" in proc.stdout
    after = load_results(study)
    assert len(after) == len(before) + 1
    pd.testing.assert_frame_equal(after[after["trial"] != new][before.columns], before)
    row = after[after["trial"] == new].iloc[0]
    parent_row = before[before["trial"] == parent].iloc[0]
    assert (row["origin"], row["parent"], row["keep"], row["status"]) == (
        "pruned", parent, 0.5, "complete")
    assert row["params"] < parent_row["params"] and row["macs"] < parent_row["macs"]
    assert row["latency_ms"] > 0 and 0 <= row["accuracy"] <= 1 and row["epochs"] == 1
    assert json.loads(row["config"]) == json.loads(
        (study / "trials" / str(new) / "candidate.json").read_text())
    capsys.readouterr()
    assert cli.main(["pareto", str(study), "--objectives", "params:min", "--format",
                     "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["trial"], r["origin"]) for r in listed] == [(new, "pruned")]
    assert cli.main(["export", str(study), "--trial", str(new), "--out",
                     str(tmp_path / "e")]) == 0
    model = nas.load_exported(tmp_path / "e")
    assert count_params(model) == row["params"]
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["origin"] == "pruned"
    # a pruned variant has no scores of its own: a clear mistake, like any trial without
    assert cli.main(["importance", str(study), "--trial", str(new)]) == 2
    assert "no importance scores" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["importance", "{study}", "--trial", "99"],
    ["importance", "{study}", "--coverage", "0"],
    ["importance", "{study}", "--coverage", "1.5"],
    ["importance", "{study}", "--trial", "0", "--coverage", "-1"],
    ["prune", "{study}", "--trial", "0", "--keep", "0", "--out", "{out}"],
    ["prune", "{study}", "--trial", "0", "--keep", "1.5", "--out", "{out}", "--add"],
    ["prune", "{study}", "--trial", "99", "--keep", "0.5", "--out", "{out}", "--add"],
    ["prune", "{study}", "--trial", "0", "--keep", "0.5"],  # neither --out nor --add
    ["prune", "{study}", "--trial", "0", "--keep", "0.5", "--out", "{study}"],  # not empty
    ["prune", "{study}", "--trial", "0", "--macs", "0", "--out", "{out}"],
    ["prune", "{study}", "--trial", "0", "--macs", "1e-6", "--out", "{out}"],  # unreachable
])
def test_mistakes_exit_2_with_one_line_and_write_nothing(tiny_study, tmp_path, capsys, argv):
    study, _ = tiny_study
    rows, folders = len(load_results(study)), sorted((study / "trials").iterdir())
    args = [a.format(study=study, out=tmp_path / "out") for a in argv]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nas: error: "), err
    assert not (tmp_path / "out").exists()
    assert len(load_results(study)) == rows and sorted((study / "trials").iterdir()) == folders


def test_trial_without_scores_is_a_clear_mistake(tiny_study, tmp_path, capsys):
    study = tmp_path / "tiny"
    shutil.copytree(tiny_study[0], study, ignore=shutil.ignore_patterns("ray"))
    (study / "trials" / "2" / "importance.safetensors").unlink()  # as importance.batches=0
    for argv in (["importance", str(study), "--trial", "2"],
                 ["prune", str(study), "--trial", "2", "--keep", "0.5", "--add"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--trial = 2: no importance scores" in err[0], err
    assert len(load_results(study)) == 3 and not (study / "trials" / "3").exists()


def test_search_with_pruning_adds_a_pruned_variant_of_its_best_trial(tmp_path, run_nas):
    proc = run_nas("search", str(ROOT / "configs" / "quick.yaml"), "--name", "pruning",
                   "--results-dir", str(tmp_path), *SMALL, "--set", "pruning.best=1",
                   "--set", "pruning.finetune_epochs=1",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    frame = load_results(tmp_path / "pruning")
    assert frame["origin"].tolist().count("pruned") == 1 and len(frame) == 3
    sampled = frame[frame["origin"] == "sampler"]
    best = nas.pareto_front(sampled, ["accuracy:max", "latency_ms:min"])["trial"].iloc[0]
    row = frame[frame["origin"] == "pruned"].iloc[0]
    assert (row["trial"], row["parent"], row["keep"], row["epochs"]) == (2, best, 0.5, 1)
    assert row["macs"] < sampled[sampled["trial"] == best]["macs"].iloc[0]
    assert (tmp_path / "pruning" / "trials" / "2" / "model.safetensors").is_file()
    assert f"pruning trial {best}" in proc.stdout and "added as trial 2" in proc.stdout
