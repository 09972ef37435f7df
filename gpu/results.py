"""Recorded GPU figures, one folder per card: ``results/<card>/<name>.json``.

A card's folder name comes from the name the driver gives it (``card_slug``):
"NVIDIA H100 80GB HBM3" -> ``h100``, "NVIDIA H200" -> ``h200``. Each JSON holds
``{"benchmark", "provenance", "ceilings"?, "rows"}``; ``provenance`` carries card,
driver, CUDA, CuPy, commit and UTC date (``gpu.runtime.provenance``).

The book reads the card it is told to (``$TT_CARD``) or, by default, the newest
complete set: the card whose every benchmark in ``COMPLETE`` is recorded, newest
first by the *oldest* date among those files (``set_date``: when the whole set was
last measured), so that one chapter re-run on another card does not move the book
to that card's older set. Nothing here needs CuPy or a GPU.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results"
# A card's set is complete when every one of these is recorded for it.
COMPLETE = (
    "ceilings",
    "attention",
    "precompute",
    "slim_attention",
    "deja_vu",
    "stagformer",
    "ffn_approx",
)


def card_slug(card: str) -> str:
    """Folder name for a card name: its model word, lower case; a family word
    with no digit (RTX, Quadro) takes the next word with it, so that two cards of
    one family get two folders.

    >>> card_slug("NVIDIA H100 80GB HBM3"), card_slug("NVIDIA H200")
    ('h100', 'h200')
    >>> card_slug("NVIDIA GeForce RTX 4090"), card_slug("NVIDIA RTX A6000")
    ('rtx4090', 'rtxa6000')
    """
    words = [w for w in re.split(r"[^0-9A-Za-z]+", card) if w]
    words = [w for w in words if w.lower() not in ("nvidia", "tesla", "geforce")]
    if not words:
        raise ValueError(f"cannot name a results folder after card {card!r}")
    head = words[0]
    if not any(ch.isdigit() for ch in head) and len(words) > 1:
        head += words[1]
    return head.lower()


def cards(root: Path = RESULTS) -> list[str]:
    """Card folders that hold at least one recorded benchmark, sorted by name."""
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.json"))
    )


def path(name: str, card: str, root: Path = RESULTS) -> Path:
    return root / card / f"{name}.json"


def load(name: str, card: str | None = None, root: Path = RESULTS) -> dict | None:
    """``results/<card>/<name>.json`` (card: ``default_card()``), or None if absent."""
    card = card or default_card(root)
    if card is None:
        return None
    p = path(name, card, root)
    return json.loads(p.read_text()) if p.exists() else None


def is_complete(card: str, root: Path = RESULTS) -> bool:
    return all(path(n, card, root).exists() for n in COMPLETE)


def _date(p: Path) -> str:
    return json.loads(p.read_text()).get("provenance", {}).get("date", "")


def newest_date(card: str, root: Path = RESULTS) -> str:
    """Latest provenance date (ISO, UTC) among the card's recorded files."""
    return max((_date(p) for p in (root / card).glob("*.json")), default="")


def set_date(card: str, root: Path = RESULTS) -> str:
    """Oldest provenance date among the card's ``COMPLETE`` files that exist: the
    date by which its whole set had been measured."""
    found = [path(n, card, root) for n in COMPLETE]
    return min((_date(p) for p in found if p.exists()), default="")


def default_card(root: Path = RESULTS) -> str | None:
    """$TT_CARD if set (it must exist), else the complete card whose whole set is
    newest (``set_date``), else the newest card with anything recorded, else None."""
    want = os.environ.get("TT_CARD", "").strip()
    if want:
        if want not in cards(root):
            raise ValueError(
                f"TT_CARD={want!r} has no recorded results; recorded: {cards(root)}"
            )
        return want
    every = cards(root)
    done = [c for c in every if is_complete(c, root)]
    if done:
        return max(done, key=lambda c: set_date(c, root))
    return max(every, key=lambda c: newest_date(c, root), default=None)


def source(doc: dict | None) -> str:
    """One line naming where a recorded figure came from (card, driver, CuPy, commit,
    date), for the book's captions."""
    if not doc:
        return "not recorded"
    p = doc.get("provenance", {})
    return (
        f"{p.get('card', '?')}, driver {p.get('driver', '?')}, CuPy "
        f"{p.get('cupy', '?')}, commit {p.get('commit', '?')}, {p.get('date', '?')}"
    )
