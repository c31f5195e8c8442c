"""CLI pieces that need no search: study naming, argument errors."""

from __future__ import annotations

from nas import cli


def test_a_new_study_never_lands_in_an_existing_folder(tmp_path):
    taken = tmp_path / "quick"
    taken.mkdir()
    assert not cli._holds_study(taken)  # empty: free to use
    (taken / "spec.yaml").write_text("name: quick\n")
    assert cli._holds_study(taken)
    assert cli._free_name(taken) == "quick-2"
    (tmp_path / "quick-2").mkdir()
    (tmp_path / "quick-2" / "spec.yaml").write_text("name: quick-2\n")
    assert cli._free_name(taken) == "quick-3"


def test_unknown_command_and_missing_arguments_exit_2(capsys):
    for argv in (["fly"], ["export", "results/x"], ["pareto"]):
        try:
            cli.main(argv)
        except SystemExit as exit_:
            assert exit_.code == 2
        else:
            raise AssertionError(f"{argv} did not exit")
    assert "usage: nas" in capsys.readouterr().err
