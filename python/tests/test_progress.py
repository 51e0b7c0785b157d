"""msp._progress: the one progress reporter (bars and timed stages), read back from stderr."""

import re
import sys

import pytest

from msp._progress import Progress, Stage


def test_a_line_without_tqdm_counts_up_to_the_total_and_never_back(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now fails
    bar = Progress("msp test", 3, "batches", True)
    bar.advance()
    bar.advance(5, {"best": 1.5})  # capped at the total
    bar.reach(1)  # never moves back
    bar.close()
    bar.close()  # idempotent
    err = capsys.readouterr().err
    assert err == ("\rmsp test: 1/3 batches   \rmsp test: 3/3 batches, best 1.5   "
                   "\rmsp test: 3/3 batches   \n")


def test_a_line_without_a_total(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    bar = Progress("msp test", None, "batches", True)
    bar.advance(2)
    bar.close()
    assert capsys.readouterr().err == "\rmsp test: 2 batches   \n"


def test_a_tqdm_bar_when_tqdm_is_installed(capsys):
    pytest.importorskip("tqdm")
    bar = Progress("msp test", 4, "generations", True)
    bar.reach(2, {"evaluations": 9})
    bar.reach(4)
    bar.close()
    err = capsys.readouterr().err
    assert "msp test" in err and "4/4" in err and "evaluations=9" in err


def test_nothing_when_disabled(capsys):
    bar = Progress("msp test", 2, "batches", False)
    bar.advance(2, {"x": 1})
    bar.close()
    Stage("job", False).note("hidden")
    with Stage("job", False)("step"):
        pass
    assert capsys.readouterr().err == ""


def test_stages_report_start_and_duration(capsys):
    stage = Stage("prune", True)
    with stage("Fisher traces"):
        pass
    stage.note("done")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "msp prune: Fisher traces ..."
    assert re.fullmatch(r"msp prune: Fisher traces: done in \d+\.\d s", lines[1])
    assert lines[2] == "msp prune: done"
