"""stainshift.joblog: a job's records go to its log file in full and to the console as one line each."""
from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import pytest

from stainshift.joblog import job_logging, job_name


@pytest.fixture(autouse=True)
def _restore_root_logger():
    import sys

    root = logging.getLogger()
    handlers, level, hook = list(root.handlers), root.level, sys.excepthook
    yield
    sys.excepthook = hook
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def test_records_reach_file_and_console(tmp_path: Path) -> None:
    log_file, console = tmp_path / "job.log", io.StringIO()
    job_logging(log_file, job_name("embed_run", ["simclr", "center_a", "0"]), console=console)
    logging.getLogger("stainshift.embed").info("[1/3] a_test.zarr: 150 tiles")
    logging.getLogger("stainshift.embed").info("detail %s", "x" * 50, extra={"console": False})
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("grey image", UserWarning)
    lines = console.getvalue().splitlines()
    assert lines[0] == "[embed_run simclr/center_a/0] [1/3] a_test.zarr: 150 tiles"
    assert lines[1].startswith("[embed_run simclr/center_a/0] WARNING: ") and "grey image" in lines[1]
    assert "detail" not in console.getvalue()
    text = log_file.read_text()
    assert "INFO stainshift.embed: [1/3] a_test.zarr: 150 tiles" in text and "detail xxx" in text
    assert "WARNING py.warnings" in text and "grey image" in text


def test_a_second_call_replaces_the_handlers(tmp_path: Path) -> None:
    first, second = io.StringIO(), io.StringIO()
    job_logging(tmp_path / "a.log", "a", console=first)
    job_logging(tmp_path / "b.log", "b", console=second)
    logging.getLogger("x").info("hello")
    assert first.getvalue() == "" and second.getvalue() == "[b] hello\n"
    assert (tmp_path / "a.log").read_text() == "" and "hello" in (tmp_path / "b.log").read_text()
    assert job_name("report") == "report"


def test_an_uncaught_error_is_one_console_line_and_one_traceback_in_the_log(tmp_path: Path) -> None:
    import subprocess
    import sys

    log_file = tmp_path / "job.log"
    code = ("from stainshift.joblog import job_logging\n"
            f"job_logging({str(log_file)!r}, 'tile_slide a_test')\n"
            "raise ValueError('results/x.tiff: not a slide')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "[tile_slide a_test] ERROR: ValueError: results/x.tiff: not a slide"
    text = log_file.read_text()
    assert text.count("Traceback (most recent call last)") == 1 and "ValueError: results/x.tiff: not a slide" in text


def test_without_a_log_file_the_console_keeps_the_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("from stainshift.joblog import job_logging\n"
            "job_logging('', 'pretrain_run x', write_file=False)\n"
            "raise ValueError('boom')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("[pretrain_run x] ERROR: ValueError: boom")
    assert proc.stderr.count("Traceback (most recent call last)") == 1
