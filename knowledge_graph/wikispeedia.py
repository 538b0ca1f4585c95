"""The Wikispeedia graph (West & Leskovec 2012): 4,604 Wikipedia articles, ~120k links and a
category hierarchy, as TSVs with URL-encoded names (``articles.tsv``, ``links.tsv``,
``categories.tsv``; ``#`` lines are comments). ``kg build --dump wikispeedia=FOLDER`` reads it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import numpy as np


def _rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip() and line[0] != "#"]


def title(name: str) -> str:
    """``%C3%85land`` -> ``Åland``; underscores -> spaces."""
    return unquote(name).replace("_", " ")


def read_wikispeedia(folder: str | Path) -> dict:
    """``titles`` (article order), ``src`` / ``dst`` int64 node ids, ``categories``
    (node id -> list of category paths such as ``subject.Science.Biology.Mammals``) and
    ``unknown_links`` (links naming an article not in articles.tsv, dropped)."""
    folder = Path(folder)
    for name in ("articles.tsv", "links.tsv"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"wikispeedia: {folder / name} not found")
    names = [r[0] for r in _rows(folder / "articles.tsv")]
    index = {n: i for i, n in enumerate(names)}
    links = _rows(folder / "links.tsv")
    pairs = [(index.get(a), index.get(b)) for a, b in links]
    known = [(a, b) for a, b in pairs if a is not None and b is not None]
    src, dst = (
        (np.array(x, np.int64) for x in zip(*known, strict=True))
        if known
        else (
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
        )
    )
    categories: dict[int, list[str]] = {}
    if (folder / "categories.tsv").exists():
        for name, cat in _rows(folder / "categories.tsv"):
            if name in index:
                categories.setdefault(index[name], []).append(cat)
    return {
        "titles": [title(n) for n in names],
        "src": src,
        "dst": dst,
        "categories": categories,
        "unknown_links": len(pairs) - len(known),
    }
