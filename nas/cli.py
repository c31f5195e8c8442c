"""``nas search | show | pareto | export | importance | prune | dashboard``: the command line.

A user mistake prints one line ``nas: error: FIELD = VALUE: what is allowed`` and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from pathlib import Path

import search_spaces
from search_spaces.config import ConfigError

from .export import ExportError, export_trial
from .pareto import default_reference, hypervolume, pareto_front
from .plugins import load_plugins
from .results import (
    PLOT,
    SPEC,
    STUDY_DB,
    ResultsError,
    fmt,
    knob_columns,
    load_results,
    study_constraints,
    study_objectives,
    study_paths,
    study_spec,
)
from .spec import SearchSpec, SpecError, parse_objectives

# configs/quick.yaml, shipped inside the package (a link in the source tree)
DEFAULT_SPEC = Path(__file__).resolve().parent / "default_spec.yaml"
USER_ERRORS = (SpecError, ConfigError, ResultsError, ExportError)
SHOWN = ["trial", "status", "accuracy", "latency_ms", "latency_p90_ms", "macs", "params",
         "epochs", "train_time_s"]


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the same one-line form as every other mistake."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"nas: error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nas", description="Architecture and budget search for efficient "
                "vision transformers.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("search", help="run a search (default spec: configs/quick.yaml)")
    s.add_argument("spec", nargs="?", default=None, help="search spec YAML")
    s.add_argument("--name", help="study name (results/<name>/)")
    s.add_argument("--results-dir", help="parent folder of the study folder")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. --set train.epochs=3 (repeatable)")
    s.add_argument("--resume", metavar="RESULTS", help="continue the study in RESULTS whose "
                   "driver died (its own spec; finished trials are kept)")
    sh = sub.add_parser("show", help="summarise a study")
    sh.add_argument("results", help="study folder, e.g. results/quick")
    pa = sub.add_parser("pareto", help="the Pareto front of a study")
    pa.add_argument("results")
    pa.add_argument("--objectives", nargs="+", help="e.g. accuracy:max macs:min "
                    "(default: the study's)")
    pa.add_argument("--where", help="pandas condition, e.g. 'latency_ms <= 5' (added to the "
                    "study's own constraints)")
    pa.add_argument("--all", action="store_true", help="ignore the study's constraints")
    pa.add_argument("--format", choices=["table", "csv", "json"], default="table")
    pa.add_argument("--plot", metavar="FILE.png", help="write the front as a PNG")
    ex = sub.add_parser("export", help="export a trial: config.json + model.safetensors")
    ex.add_argument("results")
    ex.add_argument("--trial", type=int, required=True)
    ex.add_argument("--point", type=int, default=0, help="budget point of an adaptive trial "
                    "(0 = its trained knob values; see `nas pareto`)")
    ex.add_argument("--out", required=True, help="new folder to write")
    ex.add_argument("--format", choices=["pytorch", "onnx"], default="pytorch",
                    help="onnx: also model.onnx, verified with ONNX Runtime (static trials)")
    _more_commands(sub)
    return p


def _more_commands(sub: argparse._SubParsersAction) -> None:
    im = sub.add_parser("importance", help="retained fraction per component and block: one "
                        "trial, or aggregated over the Pareto front")
    im.add_argument("results")
    im.add_argument("--trial", type=int, help="one trial (default: the front's trials)")
    im.add_argument("--coverage", type=float, default=0.9, help="share of the importance "
                    "to keep, in (0, 1] (default 0.9)")
    im.add_argument("--format", choices=["table", "csv", "json"], default="table")
    im.add_argument("--plot", metavar="FILE.png", help="write the picture as a PNG")
    pr = sub.add_parser("prune", help="prune a trial by its Taylor importance into a smaller "
                        "model: export it (--out) and/or add it to the study (--add)")
    pr.add_argument("results")
    pr.add_argument("--trial", type=int, required=True)
    how = pr.add_mutually_exclusive_group(required=True)
    how.add_argument("--keep", type=float, help="share of every prunable channel width "
                     "(Q/K, V, FFN; heads and depth are kept), in (0, 1]")
    how.add_argument("--macs", type=float, metavar="F", help="instead: the largest uniform "
                     "keep whose model has at most F x the trial's MACs, F in (0, 1]")
    pr.add_argument("--finetune", type=int, default=0, metavar="E",
                    help="fine-tune E epochs on the study's data (default 0)")
    pr.add_argument("--out", help="new export folder to write")
    pr.add_argument("--add", action="store_true", help="add the variant to the study as a "
                    "row with origin 'pruned' (and trials/<new id>/)")
    da = sub.add_parser("dashboard", help="serve the study's Optuna dashboard (needs the "
                        "dashboard extra)")
    da.add_argument("results")
    da.add_argument("--port", type=int, default=8080)
    da.add_argument("--host", default="127.0.0.1", help="address to bind (default: this "
                    "machine only)")


def _study(results: str) -> Path:
    """The study folder, with the plugins its spec names imported (their families)."""
    study_dir = study_paths(results)
    load_plugins(study_spec(study_dir).get("plugins") or [])
    return study_dir


def cmd_dashboard(args: argparse.Namespace) -> int:
    study_dir = _study(args.results)
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise SpecError("dashboard: optuna-dashboard is not installed; install the extra: "
                        "pip install 'vitnas[dashboard]'") from None
    if not 0 < args.port < 65536:
        raise SpecError(f"--port = {args.port}: must be in 1..65535")
    print(f"dashboard of {study_dir} on http://{args.host}:{args.port}/ (Ctrl-C to stop)",
          flush=True)
    run_server(f"sqlite:///{study_dir.resolve() / STUDY_DB}", host=args.host, port=args.port)
    return 0


def _summary(space: str, config_json: str) -> str:
    fam = search_spaces.get(space)
    return fam.summarize(fam.config_from_dict(json.loads(config_json)))


def _plot_path(value: str | None) -> Path | None:
    """``--plot FILE``: its folder must exist and its suffix be an image format matplotlib
    writes (checked before any work, so a mistake costs nothing)."""
    if value is None:
        return None
    path = Path(value)
    formats = ("png", "pdf", "svg", "jpg", "jpeg")
    if path.suffix.lower().lstrip(".") not in formats:
        raise SpecError(f"--plot = {value!r}: the file name must end in one of "
                        f"{', '.join('.' + f for f in formats)}")
    if not path.parent.is_dir():
        raise SpecError(f"--plot = {value!r}: no folder {str(path.parent)!r} to write it in")
    return path


def cmd_search(args: argparse.Namespace) -> int:
    from . import spec as specs
    from .search import StudyExists, run_search
    if args.resume:
        spec = _resume_spec(args)
    else:
        path = Path(args.spec) if args.spec else DEFAULT_SPEC
        spec = specs.load(path, args.set, name=args.name, results_dir=args.results_dir)
    try:  # without --name, a name already taken moves on to <name>-2, -3, ...
        study_dir = run_search(spec, auto_name=args.name is None, resume=bool(args.resume))
    except StudyExists as err:
        raise SpecError(str(err)) from None
    print()
    frame = load_results(study_dir)
    if not (frame["status"] == "complete").any():
        print(f"no trial completed: see `nas show {study_dir}`", file=sys.stderr)
        return 1
    _print_front(study_dir, [o.label for o in spec.objectives],
                 study_constraints(study_spec(study_dir)),
                 "table", study_dir / PLOT)
    print(f"\nresults: {study_dir}   next: nas show {study_dir}   "
          f"nas export {study_dir} --trial N [--point K] --out DIR")
    return 0


def _resume_spec(args: argparse.Namespace) -> SearchSpec:
    """The spec of the study ``--resume`` names, under its folder's name and place."""
    from . import spec as specs
    given = [f for f, v in (("SPEC", args.spec), ("--name", args.name), ("--results-dir",
             args.results_dir), ("--set", args.set)) if v]
    if given:
        raise SpecError(f"--resume = {args.resume!r}: resumes the study's own spec; "
                        f"{given[0]} cannot be given with it")
    folder = Path(args.resume)
    if not (folder / SPEC).is_file():
        raise SpecError(f"--resume = {args.resume!r}: not a study folder (no {SPEC})")
    spec = specs.load(folder / SPEC, results_dir=str(folder.parent))
    if spec.name != folder.name:  # the Optuna study in study.db has the spec's name
        raise SpecError(f"--resume = {args.resume!r}: the folder's study is named "
                        f"{spec.name!r} (its {SPEC}); give the folder that name back")
    return spec


def _print_front(study_dir: Path, objectives: list[str], where: str | None, style: str,
                 plot: Path | None) -> None:
    frame = load_results(study_dir)
    objs = parse_objectives(objectives, "--objectives")
    front = pareto_front(frame, objs, where)
    done = frame[frame["status"] == "complete"]
    knobs = knob_columns(front)
    origins = ["origin"] if (frame["origin"] != "sampler").any() else []
    cols = [c for c in ["trial", *origins, *(["point", *knobs] if knobs else []),
                        *[o.metric for o in objs], "latency_ms", "macs", "params", "config"]
            if c in front.columns]
    cols = list(dict.fromkeys(cols))
    if style == "csv":
        print(front[cols].to_csv(index=False), end="")
    elif style == "json":
        print(front[cols].to_json(orient="records", indent=1))
    else:
        ref = default_reference(done, objs)
        hv = hypervolume(front, objs, ref) if len(front) else 0.0
        print(f"Pareto front of {study_dir} ({len(front)} of {len(done)} rows of completed "
              f"trials, budget points included; "
              f"objectives {', '.join(o.label for o in objs)}"
              f"{'; where ' + where if where else ''})")
        print(front[[c for c in cols if c != "config"]].to_string(index=False,
                                                               float_format=fmt))
        print(f"hypervolume {hv:.6g} (reference {', '.join(f'{r:.4g}' for r in ref)})")
    if plot is not None and len(objs) >= 2 and len(front):
        from .plot import plot_front
        plot_front(frame, front, objs, plot, title=f"{study_dir.name}: Pareto front")
        print(f"plot: {plot}", file=sys.stderr if style != "table" else sys.stdout)


def cmd_pareto(args: argparse.Namespace) -> int:
    study_dir = _study(args.results)
    spec = study_spec(study_dir)
    objectives = args.objectives or study_objectives(spec)
    conditions = [] if args.all else [study_constraints(spec)]
    where = " and ".join(f"({w})" for w in [*conditions, args.where] if w) or None
    _print_front(study_dir, objectives, where, args.format,
                 _plot_path(args.plot))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    study_dir = _study(args.results)
    rows = load_results(study_dir)
    frame = rows[rows["point"] == 0].reset_index(drop=True)  # a trial's trained point
    counts = frame["status"].value_counts().to_dict()
    print(f"study {study_dir.name}: {len(frame)} trials "
          f"({', '.join(f'{v} {k}' for k, v in counts.items())})")
    table = frame[[c for c in SHOWN if c in frame.columns]].copy()
    if (frame["origin"] != "sampler").any():  # pruned variants, guided proposals
        table.insert(2, "origin", frame["origin"].to_numpy())
    per_trial = rows.groupby("trial")["point"].count()
    if (per_trial > 1).any():  # adaptive trials: their other points are in `nas pareto`
        table.insert(1, "points", frame["trial"].map(per_trial).to_numpy())
    archs = [_summary(r["space"], r["config"]).split() for _, r in frame.iterrows()]
    common = [t for t in archs[0] if all(t in a for a in archs)] if archs else []
    table["architecture"] = [" ".join(t for t in a if t not in common) for a in archs]
    if common:
        print(f"every trial: {' '.join(common)}")
    width = max([len(a) for a in table["architecture"]] + [12])
    print(table.to_string(index=False, float_format=fmt, justify="left",
                          formatters={"architecture": lambda a: a.ljust(width)}))
    prov = [c for c in frame.columns if c.startswith("prov_")]
    measured = frame.dropna(subset=["latency_ms"])
    if prov and len(measured):
        first = measured.iloc[0]
        print("latency measured on: " + ", ".join(f"{c[5:]}={first[c]}" for c in prov))
    for _, row in frame[frame["error"].fillna("") != ""].iterrows():
        print(f"trial {row['trial']} {row['status']}: {row['error']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    out = export_trial(_study(args.results), args.trial, args.out, point=args.point,
                       format=args.format)
    at = f" point {args.point}" if args.point else ""
    onnx = ", model.onnx (verified with ONNX Runtime)" if args.format == "onnx" else ""
    print(f"exported trial {args.trial}{at} to {out} (config.json, model.safetensors, "
          f"metrics.json{onnx}); load with nas.load_exported({str(out)!r})")
    return 0


def cmd_importance(args: argparse.Namespace) -> int:
    from .importance_report import importance_report
    print(importance_report(_study(args.results), trial=args.trial,
                            coverage=args.coverage, style=args.format,
                            plot=_plot_path(args.plot)))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from .prune import prune_trial, summary_line
    study_dir = _study(args.results)
    out = Path(args.out) if args.out else None
    variant, added = prune_trial(study_dir, args.trial, args.keep, finetune=args.finetune,
                                 out=out, add=args.add, macs=args.macs)
    print(summary_line(variant, added, out))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"search": cmd_search, "show": cmd_show, "pareto": cmd_pareto,
               "export": cmd_export, "importance": cmd_importance,
               "prune": cmd_prune, "dashboard": cmd_dashboard}[args.command]
    try:
        return handler(args)
    except USER_ERRORS as err:
        print(f"nas: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nas: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `nas show ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
