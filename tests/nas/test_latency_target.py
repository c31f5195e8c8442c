"""`latency.node_resource`: every measurement of a study on one target node, one at a time,
cached by config key, surviving a resume; a resource no node offers is an error before any
trial. A real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

import search_spaces
from nas import spec as specs
from nas.results import load_results

ROOT = Path(__file__).resolve().parents[2]
RESOURCE = "latency-target"
TRIALS = 4
# two candidates only (width_1 16 or 32): four trials repeat at least one
DIMS = {"num_stages": 2, "width_1": [16, 32], "width_2": 32, "depth_2": 1, "heads_1": 1,
        "heads_2": 1, "key_dim": 8, "ffn_ratio": 2.0, "v_ratio": 1.0, "sandwich": 1,
        "kernels": "5,5,5,5"}


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _spec(tmp: Path, name: str, **changes) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "quick.yaml").read_text())
    raw["space"]["dims"].update(DIMS)
    raw.update(name=name, results_dir=str(tmp), trials=TRIALS, concurrent_trials=2,
               sampler={"name": "random", "seed": 0})
    raw["train"].update(epochs=1, batch_size=50)
    raw["data"].update(train_size=300, val_size=100)
    raw["latency"].update(repeats=3, rounds=2, node_resource=RESOURCE)
    raw.update(changes)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def target_cluster(monkeypatch):
    """A head with no CPUs, two 1-CPU workers for the trials, and a 1-CPU node offering
    the latency target's resource (stopped by its handle)."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short
    handle = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        handle.add_node(num_cpus=1)
    target = handle.add_node(num_cpus=1, resources={RESOURCE: 1})
    handle.wait_for_nodes()
    yield handle, target.node_id
    handle.shutdown()


@pytest.mark.slow
def test_every_measurement_runs_on_the_target_node_serially_and_cached(target_cluster, driver,
                                                                       tmp_path):
    cluster, target = target_cluster
    spec = _spec(tmp_path, "target", ray_address=cluster.address,
                 storage=f"file://{tmp_path / 'shared'}")
    first = driver.start([str(spec)], tmp_path)
    driver.read_until(first, "[1/4] trial", [])
    driver.kill(first)  # the driver dies: its actor and trials with it
    study = tmp_path / "target"
    before = [json.loads(x) for x in (study / "latency_cache.jsonl").read_text().splitlines()]
    done_before = set(load_results(study)["trial"])
    assert before and done_before
    resumed = subprocess.run([sys.executable, "-m", "nas", "search", "--resume", str(study)],
                             cwd=tmp_path, env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    frame = load_results(study)
    assert sorted(frame["trial"]) == list(range(TRIALS))
    assert set(frame["status"]) == {"complete"} and frame["key"].nunique() <= 2
    assert set(frame["prov_node"]) == {target}  # every row: measured on the target node
    assert set(frame["prov_target"]) == {RESOURCE}
    assert set(frame["prov_host"]) == {socket.gethostname()}
    entries = [json.loads(x) for x in (study / "latency_cache.jsonl").read_text().splitlines()]
    assert entries[:len(before)] == before  # appended to, never rewritten
    by_key = {e["key"]: e for e in entries}
    assert len(by_key) == len(entries) and set(by_key) == set(frame["key"])
    assert {e["node"] for e in entries} == {target}
    spans = sorted((e["started"], e["ended"]) for e in entries)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))  # one at a time
    # each candidate measured once; every other row a hit with the cached figures, or a trial
    # that reused an earlier one's result untrained (its provenance is that trial's)
    own = frame[frame["duplicate_of"].isna()] if "duplicate_of" in frame else frame
    assert own.loc[own["prov_cache"] == "miss", "key"].is_unique
    assert (own["prov_cache"] == "hit").sum() >= len(own) - own["key"].nunique()
    for _, row in frame.iterrows():
        assert row["latency_ms"] == by_key[row["key"]]["latency"]["median_ms"]
    # the resumed driver's target started with the first one's measurements: no key measured
    # twice (above), and a later trial that measured a key the first driver had is a hit
    later = own[~own["trial"].isin(done_before)]
    assert (later.loc[later["key"].isin({e["key"] for e in before}), "prov_cache"] == "hit").all()


@pytest.mark.slow
def test_a_resource_no_node_offers_is_an_error_before_any_trial(tmp_path):
    spec = _spec(tmp_path, "nowhere", latency={"node_resource": "nowhere", "repeats": 3})
    env = {**_env(), "RAY_TMPDIR": tempfile.mkdtemp(prefix="r", dir="/tmp")}
    proc = subprocess.run([sys.executable, "-m", "nas", "search", str(spec)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("nas: error: latency.node_resource = 'nowhere': no node of "
                                  "the cluster offers it"), proc.stderr
    assert "trial" not in proc.stdout and not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_by_default_each_trial_measures_and_names_its_host_and_node(tiny_study):
    study, _ = tiny_study
    frame = load_results(study)
    assert set(frame["prov_target"]) == {"trial"}
    assert set(frame["prov_host"]) == {socket.gethostname()}
    (node,) = set(frame["prov_node"])  # the one node of a local search
    assert len(node) == 56 and int(node, 16) >= 0  # a Ray node id
    assert "prov_cache" not in frame.columns


def test_the_spec_checks_the_latency_target():
    raw = yaml.safe_load((ROOT / "configs" / "quick.yaml").read_text())
    raw["latency"]["node_resource"] = RESOURCE
    assert specs.from_dict(raw).latency.node_resource == RESOURCE
    for bad in ("CPU", " "):
        raw["latency"]["node_resource"] = bad
        with pytest.raises(specs.SpecError, match="^latency.node_resource = .*custom"):
            specs.from_dict(raw)
    raw["latency"]["node_resource"] = RESOURCE
    raw["pruning"] = {"best": 1}
    with pytest.raises(specs.SpecError, match="^pruning.best = 1: cannot be used with "
                                              "latency.node_resource"):
        specs.from_dict(raw)


def test_cache_key_is_the_config_key_unless_timed_on_images():
    from nas.latency_target import cache_key

    space = search_spaces.get("vit")
    config = space.config_cls(img_size=16, patch_size=4, embed_dim=48, depth=2, num_heads=2)
    torch.manual_seed(0)
    model = space.build(config, num_classes=3, in_chans=1)
    assert cache_key(config, model, None) == config.key()
    images = torch.randn(4, 1, 16, 16)
    keyed = cache_key(config, model, images)
    assert keyed.startswith(config.key()) and keyed == cache_key(config, model, images.clone())
    assert cache_key(config, model, images + 1) != keyed
    other = space.build(config, num_classes=3, in_chans=1)  # other weights
    assert cache_key(config, other, images) != keyed
