"""No candidate is trained twice: a redrawn config reuses the first trial's result (told to
Optuna, ``duplicate_of`` in its row and in the study), and a resume keeps it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from nas import load_results
from nas import spec as specs
from nas.durable import _rows_from_study
from nas.export import load_exported
from nas.searcher import make_searcher

ROOT = Path(__file__).resolve().parents[2]
# two configs only (width_1 16 or 32): a third draw must repeat one
TWO = ["space.dims.num_stages=1", "space.dims.width_1=[16, 32]", "space.dims.heads_1=1",
       "space.dims.key_dim=8", "space.dims.ffn_ratio=2.0", "space.dims.v_ratio=1.0",
       "space.dims.sandwich=1", "space.dims.kernels='5,5,5,5'"]


def result(spec: specs.SearchSpec, accuracy: float) -> dict:
    return {"accuracy": accuracy, "latency_ms": 1.5, "macs": 1e6, "params": 1e4,
            "epoch": spec.train.epochs, "imp_qk_keep90_s0": 0.5}


def test_a_redrawn_config_reuses_the_first_result(tmp_path):
    spec = specs.load(ROOT / "configs" / "quick.yaml", ["trials=6", *TWO])
    searcher = make_searcher(spec, f"sqlite:///{tmp_path / 'study.db'}")
    first = {t: searcher.suggest(t) for t in "ab"}
    assert not any("reused" in c for c in first.values())
    searcher.on_trial_complete("a", result=result(spec, 0.7))
    searcher.on_trial_complete("b", result=result(spec, 0.6))
    by_key: dict[str, int] = {}  # the first trial of each config
    for config in first.values():
        by_key.setdefault(json.dumps(config["candidate"], sort_keys=True), config["trial"])
    seen = 0
    for t in "cdef":
        config = searcher.suggest(t)
        twin = by_key.get(json.dumps(config["candidate"], sort_keys=True))
        if twin is None:
            assert "reused" not in config
            continue
        seen += 1
        reused = config["reused"]
        assert reused["duplicate_of"] == twin
        assert reused["accuracy"] == (0.7 if twin == 0 else 0.6)
        assert reused["imp_qk_keep90_s0"] == 0.5 and reused["epoch"] == spec.train.epochs
        searcher.on_trial_complete(t, result={**reused, "trial": config["trial"]})
    assert seen >= 1  # only two configs exist: the sampler repeats them
    trials = sorted(searcher._ot_study.trials, key=lambda t: t.number)
    twins = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(twins) == seen
    for trial in twins:  # told with the first trial's values; recorded for a resume
        origin = trials[trial.user_attrs["duplicate_of"]]
        assert trial.values == origin.values
        rows = _rows_from_study(spec, tmp_path, trial, dict(trial.user_attrs))
        assert rows[0]["duplicate_of"] == origin.number and rows[0]["epochs"] == 0
    pickle.dumps(searcher.__dict__)  # Ray saves the searcher's state with pickle


@pytest.mark.slow
def test_search_trains_each_config_once(tmp_path, run_nas, search_study):
    """A real search over a space of two configs: four trials, two trained; the duplicates
    export (the first trial's weights) and reload with their probe."""
    args = [a for kv in (*TWO, "trials=4", "concurrent_trials=1", "data.train_size=300",
                         "data.val_size=100", "train.epochs=1", "train.batch_size=50",
                         "latency.repeats=3", "latency.rounds=2", "sampler.population_size=2")
            for a in ("--set", kv)]
    study, proc = search_study(tmp_path, ROOT / "configs" / "quick.yaml", "twins", args)
    frame = load_results(study).set_index("trial")
    assert len(frame) == 4 and set(frame["status"]) == {"complete"}
    assert frame["key"].nunique() == 2
    twins = frame[frame["duplicate_of"].notna()]
    assert len(twins) == 2, frame[["key", "duplicate_of"]]
    for n, row in twins.iterrows():
        first = frame.loc[int(row["duplicate_of"])]
        assert row["key"] == first["key"] and row["accuracy"] == first["accuracy"]
        assert row["epochs"] == 0 and row["train_time_s"] == 0
        assert row["prov_host"] == first["prov_host"]  # where the reused figures came from
        assert f"trial {n} not trained: the same config as trial" in proc.stdout
    untrained = [n for n in frame.index
                 if not (study / "trials" / str(n) / "model.safetensors").is_file()]
    assert sorted(untrained) == sorted(twins.index)  # no weights of their own
    n = int(twins.index[0])
    out = tmp_path / "dup-export"
    assert run_nas("export", str(study), "--trial", str(n), "--out", str(out),
                   cwd=tmp_path).returncode == 0
    model = load_exported(out)  # strict load, and the probe's logits checked
    assert sum(p.numel() for p in model.parameters()) == int(frame.loc[n, "params"])
    front = json.loads(run_nas("pareto", str(study), "--all", "--format", "json",
                               cwd=tmp_path).stdout)
    assert not set(twins.index) & {r["trial"] for r in front}  # once on the front, not twice
