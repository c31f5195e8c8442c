"""CLI and study-folder pieces that need no search."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas import cli
from nas import spec as specs
from nas.search import StudyExists, prepare_study_dir

ROOT = Path(__file__).resolve().parents[2]


def test_a_new_study_never_lands_in_a_folder_that_holds_one(tmp_path):
    spec = specs.load(ROOT / "configs" / "quick.yaml", [f"results_dir={tmp_path}"])
    (tmp_path / "quick").mkdir()  # empty: free to use
    assert prepare_study_dir(spec).name == "quick"
    assert (tmp_path / "quick" / "spec.yaml").is_file()
    with pytest.raises(StudyExists, match="^name = 'quick'"):
        prepare_study_dir(spec)
    assert prepare_study_dir(spec, auto_name=True).name == "quick-2"
    assert prepare_study_dir(spec, auto_name=True).name == "quick-3"
    assert specs.load(tmp_path / "quick-3" / "spec.yaml").name == "quick-3"


def test_argument_mistakes_exit_2_with_one_line(capsys):
    for argv in (["fly"], ["export", "results/x"], ["pareto"], ["export", "r", "--trial",
                                                                "abc", "--out", "o"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("nas: error: "), err
