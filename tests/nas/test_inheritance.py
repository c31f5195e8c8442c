"""Search by inheritance (``init: {weights: PARENT, inherit: importance}``): the parent bounds
the architecture (a domain beyond it names both values), its importance is computed once per
study and read back after, and a real search's rows and exports carry their provenance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from parents import PARENT

from nas import load_results
from nas import spec as specs
from nas.export import load_exported
from nas.parent import PARENT_IMPORTANCE, parent_importance
from nas.sections import SpecError
from trainers.groups import group_layout
from trainers.importance import load_scores
from trainers.inherit import read_parent

FMNIST = {"name": "fashion-mnist", "train_size": 300, "val_size": 100, "seed": 0}


def inherited(weights: Path, dims: dict | None = None, **changes) -> dict:
    raw = {"name": "inh", "space": {"name": "vit", "dims": dims or {}}, "data": dict(FMNIST),
           "init": {"weights": str(weights), "inherit": "importance",
                    "importance_batches": 2}, "trials": 3}
    return {**raw, **changes}


def test_the_parent_bounds_the_default_domains(parent_export):
    dims = specs.from_dict(inherited(parent_export)).space.dims
    # PARENT: 48 wide, 2 blocks of 2 heads of 24 channels, FFN 4x, patch 7
    assert dims["depth"].values() == (2,)  # the default domain starts at 2
    assert dims["qk_dim"].values() == (8, 16, 24)  # the parent's own value stays
    assert dims["num_heads"].values() == (1, 2)
    assert dims["mlp_ratio"].values() == (2.0, 3.0, 4.0)
    assert dims["patch_size"].values() == (7,) and dims["attn"].values() == ("mhsa",)
    assert dims["embed_dim"].values() == (PARENT.embed_dim,)  # the default domain: 48, 96..
    assert "token_policy" not in dims or len(dims["token_policy"].values()) > 1


@pytest.mark.parametrize(("dims", "words"), [
    ({"qk_dim": [8, 32]}, "space.dims.qk_dim = [8, 32]: value 32 reaches beyond the parent"),
    ({"num_heads": [2, 3]}, "value 3 reaches beyond the parent"),
    ({"depth": {"low": 2, "high": 3}}, "value 3 reaches beyond"),
    ({"patch_size": [4, 7]}, "(patch_size=7)"),
])
def test_a_domain_beyond_the_parent_names_both(parent_export, dims, words):
    with pytest.raises(SpecError) as err:
        specs.from_dict(inherited(parent_export, dims))
    assert words in str(err.value) and str(parent_export) in str(err.value)


@pytest.mark.parametrize(("init", "words"), [
    ({"inherit": "importance"}, "init.inherit = 'importance': needs init.weights"),
    ({"weights": "W", "inherit": "magnitude"}, "allowed: 'importance'"),
])
def test_bad_inherit_settings_are_one_line(init, words):
    with pytest.raises(SpecError, match=words.replace("(", r"\(").replace(")", r"\)")):
        specs.from_dict({"name": "x", "space": "vit", "init": init})


def test_the_parent_importance_is_computed_once_per_study(parent_export, tmp_path):
    spec = specs.from_dict(inherited(parent_export))
    said: list[str] = []
    first = parent_importance(spec, tmp_path, said.append)
    assert "2 batches of" in said[-1]
    stamp = (tmp_path / PARENT_IMPORTANCE).stat().st_mtime_ns
    again = parent_importance(spec, tmp_path, said.append)  # a resumed driver
    assert "recorded for parent sha256" in said[-1]
    assert (tmp_path / PARENT_IMPORTANCE).stat().st_mtime_ns == stamp
    assert all((again[k] == v).all() for k, v in first.items())
    parent = read_parent(parent_export)
    sizes = {name: g.size for name, g in group_layout(parent.model).items()}
    assert {k: v.numel() for k, v in load_scores(tmp_path / PARENT_IMPORTANCE).items()} == sizes


@pytest.mark.slow
def test_an_inherited_search_records_and_exports_its_provenance(parent_export, tmp_path,
                                                                run_nas):
    raw = inherited(parent_export, {"embed_dim": [36, 48], "num_heads": [1, 2],
                                    "qk_dim": [8, 16], "v_dim": [16],
                                    "mlp_ratio": [2.0, 4.0],
                                    "token_policy": ["static", "halting"]},
                    results_dir=str(tmp_path), concurrent_trials=2,
                    train={"epochs": 1, "batch_size": 50, "warmup_epochs": 0},
                    trials=4, sampler={"name": "random", "seed": 3}, budget={"points": 2},
                    latency={"repeats": 3, "rounds": 1})
    spec = tmp_path / "inh.yaml"
    spec.write_text(yaml.safe_dump(raw))
    proc = run_nas("search", str(spec), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("parent importance: 2 batches") == 1
    study = tmp_path / "inh"
    frame = load_results(study)
    sha = hashlib.sha256((parent_export / "model.safetensors").read_bytes()).hexdigest()
    assert (frame["status"] == "complete").all(), frame[["status", "error"]]
    assert (frame["origin"] == "inherited").all() and (frame["init_sha256"] == sha).all()
    assert (frame["init_inherit"] == "importance").all()
    assert {json.loads(c)["embed_dim"] for c in frame["config"]} == {36, 48}  # both drawn
    for _, row in frame.iterrows():  # the kept shares follow from the config
        config = json.loads(row["config"])
        assert row["init_kept_depth"] == round(config["depth"] / PARENT.depth, 4)
        hidden = int(config["embed_dim"] * config["mlp_ratio"])
        assert row["init_kept_ffn"] == round(hidden / (PARENT.embed_dim * PARENT.mlp_ratio), 4)
        assert row["init_kept_width"] == round(config["embed_dim"] / PARENT.embed_dim, 4)
        assert row["init_kept_heads"] == round(config["num_heads"] / PARENT.num_heads, 4)
    trial = int(frame["trial"].iloc[0])
    out = tmp_path / "exported"
    assert run_nas("export", str(study), "--trial", str(trial), "--out", str(out),
                   cwd=tmp_path).returncode == 0
    source = json.loads((out / "config.json").read_text())["source"]
    assert source["origin"] == "inherited" and source["init"]["sha256"] == sha
    assert source["init"]["inherit"] == "importance" and "kept_qk" in source["init"]
    load_exported(out)  # strict load, the probe's logits reproduced


@pytest.fixture(scope="module")
def evit_parent(tmp_path_factory) -> Path:
    """An efficientvit parent (untrained: only its architecture bounds a spec): 2 stages,
    32 and 64 wide, 2 heads each, V as wide as a head's chunk."""
    import search_spaces
    from nas.export import write_export
    from search_spaces.efficientvit import EfficientViTConfig

    config = EfficientViTConfig(img_size=28, stem_stride=4, embed_dims=(32, 64), depths=(1, 2),
                                num_heads=(2, 2), key_dim=8, ffn_ratio=2.0, window_size=7,
                                kernels=(3, 3))
    model = search_spaces.get("efficientvit").build(config, num_classes=10, in_chans=1)
    inputs = {"img_size": 28, "in_chans": 1, "mean": [0.5], "std": [0.5], "num_classes": 10,
              "class_names": [str(i) for i in range(10)], "dataset": "fashion-mnist"}
    return write_export(tmp_path_factory.mktemp("evit") / "export", model.eval(),
                        space="efficientvit", candidate=config.to_dict(), inputs=inputs,
                        source={"test": "parent"}, metrics={})


EVIT_DIMS = {"stem_stride": 4, "num_stages": 2, "heads_1": 2, "heads_2": 2,
             "kernels": "3,3,3,3", "window_size": 7, "sandwich": 1, "v_ratio": 1.0}


def test_an_efficientvit_parent_bounds_each_stage_width(evit_parent):
    raw = inherited(evit_parent, space={"name": "efficientvit", "dims": {
        **EVIT_DIMS, "width_1": [16, 32], "width_2": [32, 48, 64]}})
    dims = specs.from_dict(raw).space.dims  # narrower stages are within the parent
    assert dims["width_2"].values() == (32, 48, 64)
    raw["space"]["dims"] = {**EVIT_DIMS, "width_1": [16, 32]}
    assert specs.from_dict(raw).space.dims["width_2"].values() == (16, 32, 48, 64)  # default
    raw["space"]["dims"] = {**EVIT_DIMS, "width_2": [64, 96]}
    with pytest.raises(SpecError, match="width_2 = \\[64, 96\\]: value 96 reaches beyond"):
        specs.from_dict(raw)
