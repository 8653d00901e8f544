"""The `stainshift` command line: --version and help."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import stainshift
from stainshift.cli import app


def test_version_flag() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"stainshift {stainshift.__version__}"
    assert stainshift.__version__ != "0.0.0+unknown"  # installed package metadata is found


def test_console_script_entry_point() -> None:
    script = Path(sys.executable).parent / "stainshift"  # the installed console script
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, env={"COLUMNS": "200"})
    assert proc.returncode == 0
    assert "synth" in proc.stdout
