"""Export a trained trial as config.json + model.safetensors + metrics.json, and load it back.

No pickle anywhere: the architecture is a JSON config that ``build`` turns back into a module,
and the weights are safetensors. An export also stores a small probe (a seeded input and the
logits it gave at export) so that ``load_exported`` can prove the rebuilt model is the same.
Importing this module starts no Ray.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import search_spaces
from search_spaces.output import logits_of

from .plugins import load_plugins
from .results import TRIALS, load_results, study_spec

CONFIG, WEIGHTS, METRICS = "config.json", "model.safetensors", "metrics.json"
PROBE, ONNX = "probe.safetensors", "model.onnx"
FORMATS = ("pytorch", "onnx")
FORMAT_VERSION = 1
TRIAL_FILES = ("candidate.json", "input.json", WEIGHTS, "history.json")


class ExportError(ValueError):
    """The trial cannot be exported, or an export folder cannot be loaded."""


def complete_row(study_dir: Path, trial: int, point: int = 0) -> dict[str, Any]:
    """The results row of a complete trial's budget point (ExportError if there is none)."""
    frame = load_results(study_dir)
    rows = frame[frame["trial"] == trial]
    if rows.empty:
        raise ExportError(f"--trial = {trial}: no such trial in {study_dir}; trials: "
                          f"{sorted(set(frame['trial'].tolist()))}")
    at = rows[rows["point"] == point]
    if at.empty:
        raise ExportError(f"--point = {point}: trial {trial} has budget points "
                          f"{sorted(rows['point'].tolist())}")
    row = at.iloc[0].to_dict()
    if row["status"] != "complete":
        raise ExportError(f"--trial = {trial}: status is {row['status']!r}; only complete "
                          f"trials have final weights")
    return row


def weights_of(row: dict[str, Any]) -> int:
    """The trial whose folder holds a row's weights: its own, or for a trial that reused an
    earlier trial's result untrained (``duplicate_of``), that trial's."""
    twin = row.get("duplicate_of")
    return int(twin) if twin is not None and twin == twin else int(row["trial"])


def input_shape(inputs: dict[str, Any]) -> tuple[int, int, int]:
    """One sample's shape (C, H, W) from an export's or a trial's input conventions."""
    return (inputs["in_chans"], inputs["img_size"], inputs["img_size"])


def _probe(model: torch.nn.Module, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, *input_shape(inputs), generator=gen)
    with torch.no_grad():
        return {"input": x, "logits": logits_of(model.eval()(x)).float()}


def export_trial(study_dir: Path | str, trial: int, out_dir: Path | str, *,
                 point: int = 0, format: str = "pytorch") -> Path:
    """Write the trial's architecture, weights and metrics to ``out_dir`` (new or empty).

    ``point`` picks a budget point of an adaptive trial: its knob values are written into
    the exported config, so the reloaded model behaves (and costs) as that row says.
    ``format="onnx"`` adds model.onnx (trainers.onnx_export), verified with ONNX Runtime
    against the PyTorch logits before anything is written; adaptive trials are refused.
    All or nothing: the files are written to a staging folder beside ``out_dir`` that is
    renamed at the end, and removed if anything fails.
    """
    study_dir, out_dir = Path(study_dir), Path(out_dir)
    if format not in FORMATS:
        raise ExportError(f"--format = {format!r}: allowed: {', '.join(FORMATS)}")
    check_out_dir(out_dir)
    row = complete_row(study_dir, trial, point)
    src = trial_folder(study_dir, weights_of(row))
    inputs = json.loads((src / "input.json").read_text())
    candidate = json.loads((src / "candidate.json").read_text())
    candidate.update(json.loads(_jsonable(row.get("knobs")) or "{}"))
    model = build_model(row["space"], candidate, inputs)
    model.load_state_dict(load_file(str(src / WEIGHTS)))
    graph = onnx_graph(row["space"], candidate, model.eval(), inputs, trial) if (
        format == "onnx") else None
    metrics = {k: v for k, v in row.items() if k != "config"}
    metrics["history"] = json.loads((src / "history.json").read_text())
    source = {"study": study_dir.name, "trial": trial, "point": point, "key": row["key"],
              "origin": row.get("origin") or "sampler",
              **({"init": init} if (init := _init_of(row)) else {})}
    plugins = study_spec(study_dir).get("plugins") or []
    return write_export(out_dir, model, space=row["space"], candidate=candidate,
                        inputs=inputs, source=source, metrics=metrics, plugins=plugins,
                        onnx=graph)


def onnx_graph(space: str, candidate: dict[str, Any], model: torch.nn.Module,
               inputs: dict[str, Any], trial: int) -> tuple[bytes, dict[str, Any]]:
    """The trial's verified ONNX graph and what config.json says of it; ExportError for an
    adaptive trial or a graph that does not compute the model's logits."""
    from trainers.onnx_export import OnnxError, to_onnx, verify

    fam = search_spaces.get(space)
    if fam.adaptive(fam.config_from_dict(candidate)) is not None:
        raise ExportError(f"--format = 'onnx': trial {trial} is adaptive: a traced ONNX graph "
                          "runs one fixed path (every token, every branch), so it would "
                          "claim this point's cost while running the full model; use the "
                          "PyTorch export (the default), which really skips the work")
    gen = torch.Generator().manual_seed(1)
    try:
        graph = to_onnx(model, input_shape(inputs))
        diffs = [verify(model, graph, torch.randn(b, *input_shape(inputs), generator=gen))
                 for b in (2, 5)]  # two batch sizes: the batch axis is dynamic
    except OnnxError as err:
        raise ExportError(f"--format = 'onnx': trial {trial}: {err}") from None
    import onnxruntime
    return graph, {"file": ONNX, "input": "images", "output": "logits",
                   "exporter": f"torch.onnx (dynamo) {torch.__version__}",
                   "verified_with": f"onnxruntime {onnxruntime.__version__}",
                   "max_abs_diff": max(diffs)}


def _init_of(row: dict[str, Any]) -> dict[str, Any]:
    """The warm start a trial began from (weights path and sha256; {} if none)."""
    return {k.removeprefix("init_"): v for k, v in row.items()
            if k.startswith("init_") and _jsonable(v) is not None}


def trial_folder(study_dir: Path, trial: int,
                 needed: tuple[str, ...] = TRIAL_FILES) -> Path:
    """trials/<trial>/, checked to hold the ``needed`` files."""
    src = study_dir / TRIALS / str(trial)
    missing = [n for n in needed if not (src / n).is_file()]
    if missing:
        raise ExportError(f"--trial = {trial}: its folder {src} lacks {missing}")
    return src


def check_out_dir(out_dir: Path) -> None:
    """An export goes to a new or empty folder: checked before any work is done."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"--out = {str(out_dir)!r}: exists and is not an empty folder")


def write_export(out_dir: Path, model: torch.nn.Module, *, space: str,
                 candidate: dict[str, Any], inputs: dict[str, Any], source: dict[str, Any],
                 metrics: dict[str, Any], plugins: list[str] | tuple[str, ...] = (),
                 onnx: tuple[bytes, dict[str, Any]] | None = None) -> Path:
    """Write an export folder: config.json (space, config, input, ``source``, provenance:
    torch and the ``prov_*`` of ``metrics``), the model's weights, metrics.json and the probe.

    All or nothing: the files are written to a staging folder beside ``out_dir`` that is
    renamed at the end, and removed if anything fails.
    """
    check_out_dir(out_dir)
    metrics = {k: _jsonable(v) for k, v in metrics.items()}
    config = {"format": FORMAT_VERSION, "space": space, "config": candidate, "input": inputs,
              "source": source, **({"plugins": list(plugins)} if plugins else {}),
              **({"onnx": onnx[1]} if onnx else {}),
              "provenance": {"torch": torch.__version__,
                             **{k: v for k, v in metrics.items() if k.startswith("prov_")}}}
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        (staging / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
        save_file(weights, str(staging / WEIGHTS))
        (staging / METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True))
        save_file(_probe(model, inputs), str(staging / PROBE))
        if onnx is not None:
            (staging / ONNX).write_bytes(onnx[0])
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def build_model(space: str, candidate: dict[str, Any], inputs: dict[str, Any]) -> torch.nn.Module:
    fam = search_spaces.get(space)
    return fam.build(fam.config_from_dict(candidate), num_classes=inputs["num_classes"],
                     in_chans=inputs["in_chans"])


def load_exported(folder: Path | str, *, verify: bool = True) -> torch.nn.Module:
    """Rebuild an exported model (eval mode). With ``verify`` it must reproduce the probe.

    The module gets ``.vitnas_config`` (the config.json content) for its input conventions.
    """
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise ExportError(f"{str(folder)!r}: not an export folder (no {CONFIG})")
    config = json.loads((folder / CONFIG).read_text())
    load_plugins(config.get("plugins") or [])  # the family may come from one
    model = build_model(config["space"], config["config"], config["input"])
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    model.eval()
    if verify and (folder / PROBE).is_file():
        probe = load_file(str(folder / PROBE))
        with torch.no_grad():
            diff = (logits_of(model(probe["input"])).float() - probe["logits"]).abs().max()
        if float(diff) > 1e-4:
            raise ExportError(f"{str(folder)!r}: rebuilt model differs from the export "
                              f"(max abs logit diff {float(diff):.3g})")
    model.vitnas_config = config
    return model


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays (parquet list columns)
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
