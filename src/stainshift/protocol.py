"""The cross-center protocol: *sources* (the centers a model may learn from) and *runs*.

A **source** is the set of centers whose train/val stores a model may read — for pretraining,
fine-tuning and model selection alike. Every other center is *unseen* by that model, and only
scores on unseen centers enter the headline numbers (DESIGN.md, "Evaluation protocol").

``pretrain.sources`` lists source entries; each expands to one or more sources:

===============  ==========================================  ====================  ===========
entry            sources                                     id                    kind
===============  ==========================================  ====================  ===========
``each``         one per center with training stores         ``center_a``          ``center``
``all``          every center pooled                         ``all``               ``all``
``loco``         per center c: every center except c         ``loco-center_a``     ``loco``
``center_a``     that center alone                           ``center_a``          ``center``
``a+b``          the listed centers pooled                   ``a+b``               ``custom``
===============  ==========================================  ====================  ===========

``each`` is seed 000's protocol (Table IV: train on one center, test on the others); ``loco`` is
seed 003's / WILDS' (train on every center but one, test on the one left out).

A **run** is one (method, source, replicate seed): its own encoder, heads, embeddings and
predictions (``pretrain.seeds`` gives the replicate seeds).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

LOCO_PREFIX = "loco-"
SEPARATOR = "+"
SOURCE_KINDS = ("center", "all", "loco", "custom")


@dataclass(frozen=True)
class Source:
    """One source: ``id`` (used in paths), ``kind``, the ``centers`` it learns from, and for a
    leave-one-center-out source the ``held_out`` center."""

    id: str
    kind: str
    centers: tuple[str, ...]
    held_out: str | None = None

    def sees(self, center: str) -> bool:
        """Whether a model of this source may have learnt from ``center``."""
        return center in self.centers

    def as_dict(self) -> dict:
        """The source as a JSON-ready dict (provenance in predictions and summaries)."""
        return {"id": self.id, "kind": self.kind, "centers": list(self.centers), "held_out": self.held_out}


def parse_sources(entries: Sequence[str] | None, train_centers: Iterable[str],
                  train_split: str = "train") -> dict[str, Source]:
    """Expand ``pretrain.sources`` entries into sources (id → Source), in entry order.

    ``train_centers``: the centers that have training stores. Raises ValueError naming the entry
    for an unknown center, an empty leave-one-out set, or two entries giving the same id.
    """
    centers = sorted(dict.fromkeys(train_centers))
    if not centers:
        raise ValueError(f"pretrain.sources: no center has training stores (no sample-sheet row or crop set has "
                         f"split {train_split!r}, the pretrain.train_split); every model learns from those")
    out: dict[str, Source] = {}

    def add(src: Source, entry: str) -> None:
        if src.id in out and out[src.id] != src:
            raise ValueError(f"pretrain.sources: entry {entry!r} gives source id {src.id!r} twice")
        out.setdefault(src.id, src)

    for entry in entries or ["each"]:
        entry = str(entry)
        if entry == "each":
            for c in centers:
                add(Source(c, "center", (c,)), entry)
        elif entry == "all":
            add(Source("all", "all", tuple(centers)), entry)
        elif entry == "loco":
            if len(centers) < 2:
                raise ValueError(f"pretrain.sources: 'loco' needs at least 2 centers with training stores, have {centers}")
            for c in centers:
                add(Source(f"{LOCO_PREFIX}{c}", "loco", tuple(x for x in centers if x != c), held_out=c), entry)
        else:
            names = entry.split(SEPARATOR)
            unknown = [n for n in names if n not in centers]
            if unknown or not all(names):
                raise ValueError(f"pretrain.sources: entry {entry!r} names {unknown or [entry]}, not a center with "
                                 f"training stores ({', '.join(centers)}); or use each, all, loco")
            chosen = tuple(sorted(set(names)))
            add(Source(SEPARATOR.join(chosen), "center" if len(chosen) == 1 else "custom", chosen), entry)
    return out


def join_centers(centers: Iterable[str]) -> str:
    """Centers as one sorted ``+``-joined string (the predictions table's ``*_centers`` columns)."""
    return SEPARATOR.join(sorted(set(centers)))


def split_centers(joined: str) -> list[str]:
    """Inverse of :func:`join_centers`."""
    return [c for c in str(joined).split(SEPARATOR) if c]
