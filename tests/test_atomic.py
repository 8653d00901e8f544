"""stainshift.atomic: temp file beside the destination, renamed on success, removed on error."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stainshift import atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_success_renames_a_hidden_temp_beside_the_destination(tmp_path: Path) -> None:
    dest = tmp_path / "out.txt"
    with atomic.atomic_path(dest, suffix=".png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.txt.") and tmp.name.endswith(".png")
        assert not dest.exists()
        tmp.write_text("new")
    assert dest.read_text() == "new" and not tmp.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_exception_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, error: type[BaseException]) -> None:
    dest = tmp_path / "out.csv"
    dest.write_text("old")
    with pytest.raises(error):
        with atomic.atomic_path(dest) as tmp:
            tmp.write_text("half-writ")
            raise error("killed")
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_exception_without_a_previous_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        atomic.write_json(tmp_path / "a.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_mode_0644_and_parents_created(tmp_path: Path) -> None:
    paths = [atomic.write_bytes(tmp_path / "a" / "b" / "x.bin", b"\x00\x01"),
             atomic.write_text(tmp_path / "t" / "x.md", "text"),
             atomic.write_json(tmp_path / "j" / "x.json", {}),
             atomic.write_csv(tmp_path / "c" / "x.csv", pd.DataFrame({"a": [1]}))]
    for path in paths:
        assert path.is_file() and _mode(path) == 0o644, (path, oct(_mode(path)))
    assert paths[0].read_bytes() == b"\x00\x01"


def test_overwrite_replaces_content_and_mode(tmp_path: Path) -> None:
    dest = tmp_path / "x.txt"
    dest.write_text("a much longer previous content")
    dest.chmod(0o600)
    atomic.write_text(dest, "short")
    assert dest.read_text() == "short" and _mode(dest) == 0o644


def test_text_round_trip_utf8(tmp_path: Path) -> None:
    text = "# summary — ± µm\nline\n"
    path = atomic.write_text(tmp_path / "s.md", text)
    assert path.read_bytes() == text.encode("utf-8")


def test_json_round_trip_and_formatting(tmp_path: Path) -> None:
    obj = {"b": [1, 2.5], "a": "x"}
    path = atomic.write_json(tmp_path / "t.json", obj, end="\n", indent=2, sort_keys=True)
    assert path.read_text() == json.dumps(obj, indent=2, sort_keys=True) + "\n"
    assert json.loads(path.read_text()) == obj
    compact = atomic.write_json(tmp_path / "c.json", obj, separators=(",", ":"))
    assert compact.read_text() == '{"b":[1,2.5],"a":"x"}'
    with pytest.raises(ValueError):
        atomic.write_json(tmp_path / "c.json", {"x": float("nan")}, allow_nan=False)
    assert compact.read_text() == '{"b":[1,2.5],"a":"x"}'  # the failed write kept the previous file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "t.json"]


def test_csv_round_trip(tmp_path: Path) -> None:
    df = pd.DataFrame({"a": [1.0 / 3, np.nan], "b": ["x", "y"]})
    path = atomic.write_csv(tmp_path / "m.csv", df, float_format="%.6g")
    assert path.read_text() == df.to_csv(index=False, float_format="%.6g")  # index=False by default
    pd.testing.assert_frame_equal(pd.read_csv(path), df, atol=1e-6)
    atomic.write_csv(tmp_path / "i.csv", df, index=True)
    assert (tmp_path / "i.csv").read_text().startswith(",a,b")
