"""The reliability report renders readable Markdown and is written only when something was recorded."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tests.integration.faults.report import FaultReport, git_commit, markdown_table

pytestmark = [pytest.mark.faults, pytest.mark.quick]


def test_nothing_is_written_when_nothing_was_recorded(tmp_path):
    assert FaultReport().write(tmp_path / "docs" / "reliability.md") is None
    assert not (tmp_path / "docs").exists()


def test_the_report_has_the_context_the_table_and_the_randomized_run(tmp_path):
    report = FaultReport()
    report.record(fault="kill worker", case="score 64 items", recover_seconds=12.345, items=64, lost=0,
                  duplicated=0, verdict="pass")
    report.record(fault="restart redis", case="score | manifest", recover_seconds=None, items=10, lost=2,
                  duplicated=1, verdict="fail", notes="two items\nnever scored")
    report.record_random_run(seed=1234, faults=["kill worker at 3.1s", "restart postgres (immediate) at 7.0s"],
                             verdict="pass", notes="60 s")
    path = report.write(tmp_path / "docs" / "reliability.md",
                        command=".venv/bin/python -m pytest tests/integration/faults")
    text = path.read_text()
    assert text.startswith("# imgq reliability under faults\n")
    assert " UTC\n" in text and "- commit: `" in text
    assert "cores" in text and "Python 3" in text and "PostgreSQL " in text and "Redis " in text
    assert "- command: `.venv/bin/python -m pytest tests/integration/faults`" in text
    assert "2 cases, 1 pass, 1 fail." in text
    assert "| kill worker   | score 64 items    |             12.3 |    64 |    0 |          0 | pass     |" in text
    assert "score \\| manifest" in text and "two items never scored" in text and "**FAIL**" in text
    assert "- seed: `1234`" in text and "2. restart postgres (immediate) at 7.0s" in text


def test_table_columns_line_up_in_the_raw_text():
    lines = markdown_table(["name", "n"], [["a", "1"], ["longer name", "22"]])
    assert lines == ["| name        |   n |", "|-------------|----:|", "| a           |   1 |",
                     "| longer name |  22 |"]


def test_a_bad_verdict_or_count_is_refused():
    report = FaultReport()
    with pytest.raises(ValueError, match="verdict"):
        report.record(fault="f", case="c", recover_seconds=1.0, items=1, lost=0, duplicated=0, verdict="ok")
    with pytest.raises(ValueError, match="lost"):
        report.record(fault="f", case="c", recover_seconds=1.0, items=1, lost=-1, duplicated=0, verdict="pass")
    with pytest.raises(ValueError, match="verdict"):
        report.record_random_run(seed=1, faults=[], verdict="passed")


def test_the_commit_is_a_short_hash_maybe_dirty():
    commit = git_commit()
    assert commit == "unknown" or len(commit.removesuffix("+dirty")) >= 7


def test_the_date_is_in_utc():
    report = FaultReport()
    report.record(fault="f", case="c", recover_seconds=0.0, items=0, lost=0, duplicated=0, verdict="pass")
    text = report.render(commit="abc1234", now=datetime(2026, 11, 25, 21, 5, tzinfo=timezone.utc))
    assert "- date: 2026-11-25 21:05 UTC" in text


def test_rows_spooled_by_xdist_workers_merge_into_one_report(tmp_path):
    from tests.integration.faults.report import LoadRow

    first, second, idle = FaultReport(), FaultReport(), FaultReport()
    first.record(fault="kill worker", case="a", recover_seconds=1.0, items=5, lost=0, duplicated=0, verdict="pass")
    second.record(fault="restart redis", case="b", recover_seconds=None, items=7, lost=0, duplicated=0,
                  verdict="pass")
    second.record_random_run(seed=7, faults=["kill worker at 1.0s"], verdict="pass")
    second.record_load([LoadRow("GET /jobs", 10, 5.0, 1.0, 2.0, 3.0, "200: 10")], "ten requests")
    assert idle.spool(tmp_path, "gw2") is None  # nothing recorded: nothing spooled
    first.spool(tmp_path, "gw0")
    second.spool(tmp_path, "gw1")
    merged = FaultReport.merged(tmp_path)
    assert [r.fault for r in merged.rows] == ["kill worker", "restart redis"]
    assert merged.random_runs == second.random_runs and merged.load_rows == second.load_rows
    assert merged.load_notes == "ten requests"
    assert "2 cases, 2 pass, 0 fail." in merged.render(commit="abc")
