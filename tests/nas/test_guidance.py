"""Importance-guided proposals: which narrower configs the front's importance asks for, and
how the searcher enqueues them so that the next trials run them."""

from __future__ import annotations

import json
import logging
import math
import pickle
from pathlib import Path

import optuna
import pandas as pd
import pytest

import search_spaces
from nas import spec as specs
from nas.guidance import narrower, propose, study_rows
from nas.results import load_results
from nas.searcher import make_searcher
from search_spaces.dims import Choice, FloatRange, IntRange
from search_spaces.efficientvit import EfficientViTConfig

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "configs" / "quick.yaml"
SPACE = search_spaces.get("efficientvit")
BASE = {"img_size": 28, "stem_stride": 4, "kernels": (5, 5, 5, 5), "window_size": 7}
# A front trial: Q/K half used (8 of 16 per head would do), FFN 60% of 3x -> 2x, stage 0
# needs 1 of its 4 heads, stage 1 one of its 2 blocks; V needs 95%: no narrower v_ratio.
T0 = EfficientViTConfig(**BASE, embed_dims=(32, 64), depths=(1, 2), num_heads=(4, 4),
                        key_dim=16, v_ratio=1.0, ffn_ratio=3.0)
IMP0 = {"imp_qk_keep90_s0": 0.25, "imp_qk_keep90_s1": 0.5, "imp_v_keep90_s0": 0.9,
        "imp_v_keep90_s1": 0.95, "imp_ffn_keep90_s0": 0.5, "imp_ffn_keep90_s1": 0.6,
        "imp_heads_keep90_s0": 0.25, "imp_heads_keep90_s1": 1.0,
        "imp_depth_keep90_s0": 1.0, "imp_depth_keep90_s1": 0.5}
# Another front trial (fast, less accurate): key_dim and ffn_ratio already the smallest.
T2 = EfficientViTConfig(**BASE, embed_dims=(16, 32, 48), depths=(1, 1, 2), num_heads=(1, 2, 2),
                        key_dim=8, v_ratio=1.0, ffn_ratio=2.0)
IMP2 = {"imp_qk_keep90_s0": 0.5, "imp_v_keep90_s0": 0.4, "imp_v_keep90_s1": 0.5,
        "imp_v_keep90_s2": 0.45, "imp_ffn_keep90_s2": 0.3, "imp_heads_keep90_s1": 0.5,
        "imp_heads_keep90_s2": 1.0, "imp_depth_keep90_s2": 0.5}


def row(trial: int, config: EfficientViTConfig, status: str, accuracy: float,
        latency: float, **imp: float) -> dict:
    return {"trial": trial, "status": status, "config": config.to_json(), "key": config.key(),
            "accuracy": accuracy, "latency_ms": latency, **imp}


def frame() -> pd.DataFrame:
    return pd.DataFrame([
        row(0, T0, "complete", 0.80, 5.0, **IMP0),
        row(1, T0.replace(embed_dims=(48, 64)), "complete", 0.70, 6.0, **IMP0),  # dominated
        row(2, T2, "complete", 0.70, 2.0, **IMP2),
        row(3, T2.replace(v_ratio=0.5), "error", math.nan, math.nan),  # T2's V proposal
        row(4, T0.replace(key_dim=8), "infeasible", math.nan, 1.0, **IMP0),  # not trained
    ])


def quick(*overrides: str) -> specs.SearchSpec:
    return specs.load(QUICK, list(overrides))


def test_propose_narrows_what_the_front_wastes_round_robin():
    got = propose(frame(), quick(), 10)
    expected = [  # T0's most wasteful first (heads 1/4), then T2's (its v is trial 3), ...
        (T0.replace(num_heads=(1, 4)), "proposal:from=0:heads"),
        (T2.replace(num_heads=(1, 1, 2)), "proposal:from=2:heads"),
        # T0's qk (key_dim 8, half of it) is trial 4: ran, though not trained
        (T0.replace(depths=(1, 1)), "proposal:from=0:depth"),
        (T2.replace(depths=(1, 1, 1)), "proposal:from=2:depth"),
        (T0.replace(ffn_ratio=2.0), "proposal:from=0:ffn"),
    ]
    assert got == expected
    assert propose(frame(), quick(), 3) == expected[:3]
    dims = quick().space.dims
    keys = {c.key() for c, _ in got}
    assert len(keys) == len(got) and not keys & set(frame()["key"])
    for config, _ in got:
        SPACE.params(config, dims)  # a draw of the spec's dims gives it (else ConfigError)


def test_propose_respects_constraints_dims_and_missing_summaries():
    only_fast = propose(frame(), quick("constraints=['latency_ms <= 3']"), 10)
    assert [o for _, o in only_fast] == ["proposal:from=2:heads", "proposal:from=2:depth"]
    # key_dim fixed and heads_1 only 4: T0's Q/K and stage-0 heads cannot be narrowed
    fixed = propose(frame(), quick("space.dims.key_dim=16", "space.dims.heads_1=[2, 4]",
                                   "space.dims.heads_2=[1, 2, 4]"), 10)
    t0 = {o: c for c, o in fixed if "from=0" in o}
    assert "proposal:from=0:qk" not in t0
    assert t0["proposal:from=0:heads"] == T0.replace(num_heads=(2, 4))
    bare = frame().drop(columns=[c for c in frame().columns if c.startswith("imp_")])
    assert propose(bare, quick(), 10) == []
    nan = frame().assign(**{c: math.nan for c in IMP0 | IMP2})
    assert propose(nan, quick(), 10) == []
    assert propose(frame().iloc[:0], quick(), 10) == []


def test_narrower_picks_the_smallest_value_that_keeps_the_fraction():
    assert narrower(Choice((8, 16, 32)), 32, 0.2) == 8
    assert narrower(Choice((8, 16, 32)), 32, 0.3) == 16
    assert narrower(Choice((8, 16, 32)), 32, 0.9) is None  # nothing in [28.8, 32)
    assert narrower(Choice((None, 16, 32)), 32, 0.5) == 16
    assert narrower(IntRange(1, 4), 4, 0.5) == 2
    assert narrower(FloatRange(1.0, 4.0), 4.0, 0.3) == 1.2
    assert narrower(Choice((2.0, 3.0)), 3.0, 2 / 3) == 2.0  # float noise tolerated


def test_propose_narrows_vit_knobs():
    spec = specs.load(ROOT / "configs" / "vit_fashion.yaml")
    vit = search_spaces.get("vit")
    dims = {**vit.dims, **spec.space.dims}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    config = vit.suggest(study.ask(), spec.space.dims)
    while config.depth < 4 or config.qk_dim < 16:
        config = vit.suggest(study.ask(), spec.space.dims)
    imp = {"imp_qk_keep90_s0": 0.1, "imp_qk_keep90_s2": 0.5, "imp_depth_keep90_s0": 0.5}
    rows = pd.DataFrame([{"trial": 5, "status": "complete", "config": config.to_json(),
                          **{m: 1.0 for m in spec.metric_names}, **imp}])
    got = dict((o, c) for c, o in propose(rows, spec, 5))
    qk = [v for v in dims["qk_dim"].values() if v >= config.qk_dim / 2]
    assert got["proposal:from=5:qk"] == config.replace(qk_dim=min(qk))
    depths = [v for v in dims["depth"].values() if v >= config.depth / 2]
    assert got["proposal:from=5:depth"] == config.replace(depth=min(depths))


def report(spec: specs.SearchSpec, accuracy: float, latency: float) -> dict:
    return {"accuracy": accuracy, "latency_ms": latency, "macs": 1e6, "params": 1e4,
            "epoch": spec.train.epochs, "imp_qk_keep90_s0": 0.5, "imp_ffn_keep90_s0": 0.5,
            "imp_heads_keep90_s0": 0.5, "imp_depth_keep90_s1": 0.5, "imp_v_keep90_s0": 0.4}


def test_searcher_enqueues_proposals_once_after_complete_trials(tmp_path, caplog):
    spec = quick("trials=8", "guidance.proposals=2", "guidance.after=2",
                 "space.dims.num_stages=2", "space.dims.key_dim=16",
                 "space.dims.ffn_ratio=3.0", "space.dims.depth_2=2")
    searcher = make_searcher(spec, f"sqlite:///{tmp_path / 'study.db'}")
    drawn = {t: searcher.suggest(t) for t in ("a", "b", "c")}
    assert {d["origin"] for d in drawn.values()} == {"sampler"}
    searcher.on_trial_complete("a", result=report(spec, 0.8, 5.0))
    searcher.on_trial_complete("b", result={"epoch": 0, "accuracy": 0.1}, error=True)
    assert not searcher._ot_study.get_trials(states=[optuna.trial.TrialState.WAITING])
    with caplog.at_level(logging.WARNING, logger="nas"):
        searcher.on_trial_complete("c", result=report(spec, 0.7, 2.0))
    waiting = searcher._ot_study.get_trials(states=[optuna.trial.TrialState.WAITING])
    assert len(waiting) == 2 and "enqueued 2 proposals" in caplog.text
    assert all(t.user_attrs["origin"].startswith("proposal:from=") for t in waiting)
    nxt = searcher.suggest("d")
    assert nxt["origin"] == waiting[0].user_attrs["origin"]
    assert nxt["candidate"] == SPACE.from_params(waiting[0].system_attrs["fixed_params"],
                                                 spec.space.dims).to_dict()
    done = {json.dumps(d["candidate"], sort_keys=True) for d in drawn.values()}
    assert json.dumps(nxt["candidate"], sort_keys=True) not in done
    assert searcher.suggest("e")["origin"].startswith("proposal")
    assert searcher.suggest("f")["origin"] == "sampler"  # the queue is empty: sampler again
    searcher.on_trial_complete("d", result=report(spec, 0.9, 1.0))  # once only
    assert not searcher._ot_study.get_trials(states=[optuna.trial.TrialState.WAITING])
    stored = searcher._ot_study.trials[0].user_attrs
    assert stored["imp_qk_keep90_s0"] == 0.5 and stored["accuracy"] == 0.8
    pickle.dumps(searcher.__dict__)  # Ray saves the searcher's state with pickle


def test_searcher_enqueues_no_more_than_the_trials_left(tmp_path):
    spec = quick("trials=3", "guidance.proposals=5", "guidance.after=2")
    searcher = make_searcher(spec, f"sqlite:///{tmp_path / 'study.db'}")
    for t in ("a", "b"):
        searcher.suggest(t)
        searcher.on_trial_complete(t, result=report(spec, 0.5, 3.0))
    rows = study_rows(searcher._ot_study.trials, spec)
    assert list(rows["status"]) == ["complete", "complete", "waiting"]  # room for one only
    assert rows["origin"].iloc[2].startswith("proposal:from=")


@pytest.mark.slow
def test_search_runs_guided_proposals(tmp_path, run_nas):
    args = [f"--set={s}" for s in (
        "trials=4", "concurrent_trials=1", "guidance.proposals=2", "guidance.after=2",
        "importance.batches=2", "data.train_size=300", "data.val_size=100", "train.epochs=1",
        "train.batch_size=50", "latency.repeats=3", "latency.rounds=2",
        "space.dims.num_stages=2", "sampler.population_size=2")]
    proc = run_nas("search", str(QUICK), "--name", "g", "--results-dir", str(tmp_path),
                   *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = optuna.load_study(study_name="g", storage=f"sqlite:///{tmp_path / 'g' / 'study.db'}")
    origins = [t.user_attrs.get("origin", "sampler") for t in study.trials]
    assert origins[:2] == ["sampler", "sampler"]
    assert origins[2:] and all(o.startswith("proposal:from=") for o in origins[2:]), origins
    assert "guidance: after 2 complete trials, enqueued 2 proposals" in proc.stderr
    frame = load_results(tmp_path / "g")
    assert list(frame.drop_duplicates("trial")["origin"]) == origins
    assert frame["key"].nunique() == len(frame.drop_duplicates("trial"))


def test_heads_are_narrowed_only_where_that_shrinks_attention():
    from search_spaces.vit import ViTConfig
    from search_spaces.vit.structure import heads_free_capacity as _heads_free_capacity

    assert not _heads_free_capacity(ViTConfig(embed_dim=96, num_heads=4))  # heads get wider
    assert not _heads_free_capacity(ViTConfig(embed_dim=96, num_heads=4, attn="cga"))
    assert _heads_free_capacity(ViTConfig(embed_dim=96, num_heads=4, qk_dim=16))
    assert _heads_free_capacity(ViTConfig(embed_dim=96, num_heads=4, v_dim=16))
