"""stainshift.protocol: sources expand as documented and name what is wrong."""
from __future__ import annotations

import pytest

from stainshift.protocol import join_centers, parse_sources, split_centers

CENTERS = ["center_a", "center_b", "center_c"]


def test_each_all_loco_and_custom_sources():
    src = parse_sources(["each", "all", "loco", "center_c+center_a"], CENTERS)
    assert list(src) == ["center_a", "center_b", "center_c", "all", "loco-center_a", "loco-center_b",
                         "loco-center_c", "center_a+center_c"]
    assert src["center_b"].centers == ("center_b",) and src["center_b"].kind == "center"
    assert src["all"].centers == tuple(CENTERS)
    loco = src["loco-center_a"]
    assert loco.kind == "loco" and loco.held_out == "center_a" and loco.centers == ("center_b", "center_c")
    assert not loco.sees("center_a") and loco.sees("center_b")
    assert src["center_a+center_c"].kind == "custom"


def test_default_is_each_and_duplicates_merge():
    assert list(parse_sources(None, CENTERS)) == CENTERS
    assert list(parse_sources(["each", "center_a"], CENTERS)) == CENTERS


@pytest.mark.parametrize("entries, match", [
    (["center_x"], "center_x"),
    (["center_a+nowhere"], "nowhere"),
    (["loco"], "at least 2 centers"),
])
def test_bad_entries_are_named(entries, match):
    centers = CENTERS if entries != ["loco"] else ["center_a"]
    with pytest.raises(ValueError, match=match):
        parse_sources(entries, centers)


def test_join_and_split_centers():
    assert join_centers(["b", "a", "b"]) == "a+b"
    assert split_centers("a+b") == ["a", "b"] and split_centers("") == []
