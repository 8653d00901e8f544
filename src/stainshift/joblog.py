"""Logging of one workflow job: every record to the job's log file, and a short line to the console.

A Snakemake job's log file (``{R}/logs/{stage}/{name}.log``) keeps the full records; the console
shows ``[rule item] message`` for the same records, so a long stage (epochs of pretraining, stores
of embedding) shows progress where the user started Snakemake, not only in the log. A job that
fails says so once: one ``ERROR: <type>: <message>`` line on the console, the traceback in the log
file only (which Snakemake prints once after the failure: ``show-failed-logs``).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Iterable, TextIO

FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _ConsoleFormatter(logging.Formatter):
    """``[job] message``; warnings and errors also name their level; the traceback only where no
    log file keeps it (``with_traceback``)."""

    def __init__(self, job: str, with_traceback: bool = False) -> None:
        super().__init__()
        self.job = job
        self.with_traceback = with_traceback

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        text = f"[{self.job}] {level}{record.getMessage()}"
        if self.with_traceback and record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def job_name(rule: str, wildcards: Iterable[Any] = ()) -> str:
    """``rule item`` for console lines: the rule and its wildcard values joined by ``/``."""
    item = "/".join(str(w) for w in wildcards)
    return f"{rule} {item}" if item else rule


def log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    """``sys.excepthook`` of a job: the error through logging (traceback to the file, one line to
    the console); Python then exits with status 1."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("stainshift.job").error("%s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, tb))


def job_logging(log_file: str | os.PathLike, job: str, *, level: int = logging.INFO,
                console: TextIO | None = None, write_file: bool = True) -> logging.Logger:
    """Route the root logger to ``log_file`` (overwritten, full records) and to ``console``
    (default: stderr) as ``[job] message``; Python warnings are logged too, and an uncaught exception
    (:func:`log_uncaught`). A record logged with ``extra={"console": False}`` (bulky detail) goes to
    the file only; ``write_file=False`` logs to the console only (a second DDP rank). Returns the
    root logger."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if write_file:
        to_file = logging.FileHandler(log_file, mode="w")
        to_file.setFormatter(logging.Formatter(FILE_FORMAT))
        root.addHandler(to_file)
    to_console = logging.StreamHandler(console if console is not None else sys.stderr)
    to_console.setFormatter(_ConsoleFormatter(job, with_traceback=not write_file))
    to_console.addFilter(lambda record: getattr(record, "console", True))
    root.addHandler(to_console)
    root.setLevel(level)
    logging.captureWarnings(True)
    sys.excepthook = log_uncaught
    return root
