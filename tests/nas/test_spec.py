"""Spec validation: every rule gets a bad value, and the message names field and value."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from nas import spec as specs
from nas.spec import SpecError

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "configs" / "quick.yaml"


def base() -> dict:
    import yaml
    return yaml.safe_load(QUICK.read_text())


def with_value(path: str, value) -> dict:
    raw = copy.deepcopy(base())
    node = raw
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return raw


def test_quick_spec_is_valid():
    spec = specs.load(QUICK)
    assert spec.name == "quick"
    assert spec.metric_names == ["accuracy", "latency_ms"] and spec.modes == ["max", "min"]
    assert spec.space.dims["img_size"].value == 28  # from data.img_size's native default
    assert spec.trials >= 8


def test_realistic_cluster_spec_is_valid():
    spec = specs.load(ROOT / "configs" / "imagenet_cluster.yaml")
    assert spec.data.name.startswith("folder:") and spec.resources.gpus == 1
    assert spec.latency.device == "cuda" and spec.scheduler == "asha"
    assert str(spec.constraints[0]) == "latency_ms <= 5"


BAD = [
    ("name", "bad name!", "name"),
    ("trials", 0, "trials"),
    ("trials", "many", "trials"),
    ("concurrent_trials", 0, "concurrent_trials"),
    ("scheduler", "hyperband", "scheduler"),
    ("surprise", 1, "surprise"),
    ("data.name", "mnist", "data.name"),
    ("data.train_size", 0, "data.train_size"),
    ("data.device", "cuda", "data.device"),  # a trial picks its device
    ("data.val_size", 0, "data.val_size"),
    ("data.img_size", 0, "data.img_size"),
    ("data.colour", True, "data.colour"),
    ("train.epochs", 0, "train.epochs"),
    ("train.epochs", 1.5, "train.epochs"),
    ("train.batch_size", 0, "train.batch_size"),
    ("train.lr", 0, "train.lr"),
    ("train.min_lr", 1.0, "train.min_lr"),  # above lr
    ("train.weight_decay", -1, "train.weight_decay"),
    ("train.warmup_epochs", 5, "train.warmup_epochs"),
    ("train.label_smoothing", 1.0, "train.label_smoothing"),
    ("train.clip_grad", 0, "train.clip_grad"),
    ("sampler.name", "cmaes", "sampler.name"),
    ("sampler.population_size", 1, "sampler.population_size"),
    ("resources.cpus", 0, "resources.cpus"),
    ("resources.gpus", -1, "resources.gpus"),
    ("latency.device", "tpu", "latency.device"),
    ("latency.device", "cuda", "latency.device"),  # needs resources.gpus > 0
    ("latency.dtype", "int8", "latency.dtype"),
    ("latency.batch_size", 0, "latency.batch_size"),
    ("latency.threads", 0, "latency.threads"),
    ("latency.warmup", -1, "latency.warmup"),
    ("latency.images", 0, "latency.images"),
    ("storage", "ftp://x/y", "storage"),  # a scheme Ray's storage (pyarrow) does not know
    ("storage", "s3://", "storage"),  # no bucket
    ("storage", "file://relative/path", "storage"),
    ("storage", " ", "storage"),
    ("objectives", ["accuracy:up"], "objectives"),
    ("objectives", ["accuracy:max", "accuracy:max"], "objectives"),
    ("objectives", "accuracy:max", "objectives"),
    ("constraints", ["latency_ms =< 5"], "constraints"),
    ("constraints", ["speed <= 5"], "constraints"),
    ("space.name", "resnet", "space.name"),
    ("space.dims.width_1", [17], "space.dims.width_1"),
    ("space.dims.depth_2", {"low": 0, "high": 9}, "space.dims.depth_2"),
    ("space.dims.colour", 3, "space.dims.colour"),
    ("space.dims.img_size", 32, "space.dims.img_size"),
    ("space.extra", 1, "space.extra"),
    ("budget.points", 0, "budget.points"),
    ("budget.points", 2.5, "budget.points"),
    ("budget.max_eps", 0.5, "budget.max_eps"),
    ("budget.limits", [0.5], "budget.limits"),
    ("init.weights", 3, "init.weights"),
    ("init.fresh", "head.*", "init.fresh"),
    ("budget.thresholds", [0.1], "budget.thresholds"),
    ("importance.batches", -1, "importance.batches"),
    ("pruning.keep", 0, "pruning.keep"),
    ("pruning.keep", 1.5, "pruning.keep"),
    ("pruning.best", -1, "pruning.best"),
    ("pruning.finetune_epochs", -1, "pruning.finetune_epochs"),
    ("guidance.proposals", -2, "guidance.proposals"),
    ("guidance.after", 0, "guidance.after"),
    ("halving.reduction_factor", 1, "halving.reduction_factor"),
    ("halving.reduction_factor", 2.5, "halving.reduction_factor"),
    ("halving.grace_period", 0, "halving.grace_period"),
    ("halving.max_t", 0, "halving.max_t"),  # below grace_period
    ("halving.brackets", 2, "halving.brackets"),
]


@pytest.mark.parametrize(("path", "value", "field"), BAD, ids=[f"{p}={v}" for p, v, _ in BAD])
def test_bad_value_names_field_and_value(path, value, field):
    with pytest.raises(SpecError) as err:
        specs.from_dict(with_value(path, value))
    message = str(err.value)
    assert message.startswith(field), message
    assert "\n" not in message


def test_storage_that_cannot_be_opened_is_one_line_naming_it():
    from nas.cluster import open_storage

    for good in (None, "/tmp/ray", "file:///tmp/shared", "s3://bucket/path"):
        specs.from_dict(with_value("storage", good))  # valid in the spec
    open_storage("file:///tmp/shared")
    with pytest.raises(SpecError, match=r"^storage = 'hdfs://h/p': cannot be opened") as err:
        open_storage("hdfs://h/p")  # resolved when the search starts: no HDFS client here
    assert "\n" not in str(err.value)


def test_asha_needs_accuracy_objective():
    raw = with_value("scheduler", "asha")
    raw["objectives"] = ["latency_ms:min", "params:min"]
    with pytest.raises(SpecError, match="^scheduler"):
        specs.from_dict(raw)


def test_moasha_reads_halving_and_checks_it_against_the_epochs():
    spec = specs.from_dict(with_value("scheduler", "moasha"))
    assert spec.halving == specs.HalvingSpec(reduction_factor=3, grace_period=1, max_t=3)
    assert specs.from_dict(base()).halving.max_t is None  # no scheduler: nothing to resolve
    cases = [({"grace_period": 4}, "halving.grace_period = 4: must be <= train.epochs (3): no "
                                   "rung would be reached"),
             ({"max_t": 5}, "halving.max_t = 5: must be <= train.epochs (3)"),
             ({"grace_period": 2, "max_t": 1},
              "halving.max_t = 1: must be >= halving.grace_period (2)")]
    for halving, message in cases:
        raw = with_value("scheduler", "moasha")
        raw["halving"] = halving
        with pytest.raises(SpecError) as err:
            specs.from_dict(raw)
        assert str(err.value) == message
    raw = with_value("scheduler", "moasha")
    raw["objectives"] = ["latency_ms:min", "macs:min"]
    with pytest.raises(SpecError, match="^scheduler = 'moasha': needs accuracy"):
        specs.from_dict(raw)
    with pytest.raises(SpecError, match="^scheduler = 'hyperband': allowed: none, asha, moasha$"):
        specs.from_dict(with_value("scheduler", "hyperband"))


def test_a_bad_halving_value_is_one_line_and_exit_2(tmp_path, capsys):
    from nas import cli

    code = cli.main(["search", str(QUICK), "--set", "scheduler=moasha", "--set",
                     "halving.reduction_factor=1", "--results-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["nas: error: halving.reduction_factor = 1: must be >= 2"]
    assert not any(tmp_path.iterdir())


def test_overrides_apply_and_parse_yaml_values(tmp_path):
    spec = specs.load(QUICK, ["train.epochs=3", "space.dims.width_1=[32, 48]",
                              "constraints=['latency_ms <= 2']"], name="other")
    assert spec.train.epochs == 3 and spec.name == "other"
    assert spec.space.dims["width_1"].options == (32, 48)
    assert spec.constraints[0].bound == 2.0
    with pytest.raises(SpecError, match="^--set"):
        specs.load(QUICK, ["train.epochs"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        specs.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        specs.load(bad)


def test_resolved_spec_round_trips_through_yaml(tmp_path):
    spec = specs.load(QUICK)
    again = tmp_path / "spec.yaml"
    again.write_text(specs.to_yaml(spec))
    reloaded = specs.load(again)
    assert reloaded.space.dims == spec.space.dims
    assert reloaded.train == spec.train and reloaded.objectives == spec.objectives


def test_constraint_violation_follows_optuna_convention():
    c = specs.Constraint("latency_ms", "<=", 5.0)
    assert c.violation(4.0) == 0.0 and c.violation(5.0) == 0.0
    assert c.violation(7.5) == pytest.approx(2.5)
    assert specs.Constraint("accuracy", ">", 0.5).violation(0.5) > 0


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_is_valid(path):
    spec = specs.load(path)
    assert spec.trials >= 1 and spec.objectives


def test_vit_spec_must_narrow_patch_size_to_divide_img_size():
    raw = base()
    raw["space"] = {"name": "vit"}
    with pytest.raises(SpecError, match="patch_size"):
        specs.from_dict(raw)


def test_halting_knobs_are_dims_of_vit_and_checked():
    raw = base()
    raw["space"] = {"name": "vit", "dims": {"patch_size": 4, "token_policy": "halting",
                                            "halt_target": [0.5, 0.67]}}
    spec = specs.from_dict(raw)
    assert spec.space.dims["halt_target"].values() == (0.5, 0.67)
    assert spec.budget.points == 5 and spec.budget.limits == {}
    raw["space"]["dims"]["halt_target"] = [0.4]  # not among the domain's choices
    with pytest.raises(SpecError, match="^space.dims.halt_target"):
        specs.from_dict(raw)


@pytest.mark.parametrize(("section", "value"), [("guidance.proposals", 2), ("pruning.best", 1)])
def test_importance_off_with_guidance_or_pruning_is_an_error(section, value):
    raw = with_value(section, value)
    raw["importance"] = {"batches": 0}
    with pytest.raises(SpecError, match=f"^{section} = {value}: needs importance.batches"):
        specs.from_dict(raw)


def test_budget_ladder_must_rise_above_the_trained_threshold():
    raw = base()
    raw["space"] = {"name": "vit", "dims": {"patch_size": 4, "token_policy": "halting"}}
    raw["budget"] = {"limits": {"halt_eps": 0.01}}  # the trained eps (fixed at 0.01)
    with pytest.raises(SpecError, match=r"^budget.limits.halt_eps = 0.01: must lie beyond"):
        specs.from_dict(raw)
    raw["budget"] = {"limits": {"halt_eps": 1.0}}  # outside the knob's domain
    with pytest.raises(SpecError, match=r"^budget.limits.halt_eps = 1.0: must be in \(0, 1\)"):
        specs.from_dict(raw)
    raw["budget"] = {"limits": {"gate_threshold": 0.5}}  # no such knob in vit
    with pytest.raises(SpecError, match=r"^budget.limits.gate_threshold = 0.5: not a budget "
                                        r"knob of space 'vit'; its knobs: \['cascade_exit_1', "
                                        r"'cascade_exit_2', 'gate_branch_"
                                        r"threshold', 'gate_head_threshold', 'gate_patch_"
                                        r"threshold', 'halt_eps'\]"):
        specs.from_dict(raw)
    raw["budget"] = {"limits": {"halt_eps": 0.5}}
    assert specs.from_dict(raw).budget.limits == {"halt_eps": 0.5}


def test_a_fitted_knob_takes_no_budget_limit():
    raw = base()
    raw["space"] = {"name": "vit", "dims": {"patch_size": 4, "token_policy": "cascade"}}
    raw["budget"] = {"limits": {"cascade_exit_1": 0.6}}  # exit thresholds are fitted
    with pytest.raises(SpecError, match=r"^budget.limits.cascade_exit_1 = 0.6: its operating "
                                        r"points are fitted on calibration data.*remove it "
                                        r"from budget.limits$"):
        specs.from_dict(raw)
    raw["space"]["dims"]["token_policy"] = "halting"
    raw["budget"] = {"limits": {"halt_eps": 0.5}}  # a laddered knob keeps its limit
    assert specs.from_dict(raw).budget.limits == {"halt_eps": 0.5}
