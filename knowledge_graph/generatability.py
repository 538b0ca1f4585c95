"""Visual generatability of concept titles (Z-Image, arXiv 2511.22699, section 2.3): keep the
Wikipedia concepts an image can show ("Golden retriever", "Eiffel Tower", "Sunset") and drop the
ones it cannot ("Inflation (economics)", "List of ...", "1987", "Democracy").

A pluggable judge, chosen by ``GeneratabilityConfig.judge``:

* **Rules** (``RULES``, each with its reason) reject page kinds that are never a picture: list
  and index pages, years, decades, centuries and dates, pure numbers, disambiguation pages
  (the flag from the nodes table, or the title suffix), "History of X"-style aspect pages,
  titles qualified by an abstract field ("... (economics)"), non-article namespaces and empty
  titles. A rule only rejects; what no rule rejects goes to the head or the backend.
* **Head**: logistic regression on the title's text embedding (the configured encoder, by
  default all-MiniLM-L6-v2), trained on the 80% split of the seed list that ships in
  ``data/generatability_seed.tsv`` (``title, label, source``; 1 = can be depicted). The trained
  head ships too (``data/generatability_head.npz``, written by
  ``python -m knowledge_graph.generatability train``); a head whose encoder name or dimension
  differs from the encoder in use is retrained from the seed list in memory (logged).
* **Backend**: a ``TextGenBackend`` (``captioner.backends``; anything with ``name`` and
  ``generate(prompts, max_new_tokens=...)``) answers ``QUESTION`` per title through
  ``captioner.backends.ask_yes_no`` (first yes / no word of the reply); replies with neither
  fall back to the head (reason ``backend:unparsed``).

Rules run first unless ``judge == "head"``. Cost: rules are O(n) regex checks (1M titles in a
few seconds); the head is one encoder pass over the titles the rules leave (the dominant cost)
plus an (n, d) x (d,) product. Pass ``vectors`` to skip the encoder. Measured quality and speed:
``docs/generatability.md`` (``bench/generatability.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from infra.config import require

log = logging.getLogger(__name__)

DATA = Path(__file__).with_name("data")
SEED_PATH = DATA / "generatability_seed.tsv"
HEAD_PATH = DATA / "generatability_head.npz"
JUDGES = ("rules", "head", "rules+head", "backend")
SCHEMA = pa.schema([("generatable", pa.bool_()), ("score", pa.float32()), ("reason", pa.string())])
SEED_SCHEMA = pa.schema([("title", pa.string()), ("label", pa.int8()), ("source", pa.string())])
QUESTION = "Can '{title}' be shown in a photograph or illustration?"
SPLIT_SEED = 0
TEST_FRACTION = 0.2
C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)


@dataclass(frozen=True, kw_only=True)
class GeneratabilityConfig:
    """How concept titles are judged visually generatable."""

    judge: str = "rules+head"
    """``rules`` (rules only; the rest pass), ``head`` (the embedding head only, no rules),
    ``rules+head``, or ``backend`` (rules, then a text-generation backend, then the head for
    answers that are neither yes nor no)."""
    threshold: float = 0.5
    """Head probability at or above which a title is generatable."""
    head: str | None = None
    """Path to a head ``.npz`` written by ``train`` (none: the shipped one)."""

    def __post_init__(self) -> None:
        require(self.judge in JUDGES, "judge", self.judge, f"must be one of {list(JUDGES)}")
        require(0.0 <= self.threshold <= 1.0, "threshold", self.threshold, "must be in [0, 1]")
        require(
            self.head is None or Path(self.head).is_file(),
            "head",
            self.head,
            "must be an existing .npz file (or unset for the shipped head)",
        )


# ---------------------------------------------------------------- rules

_ERA = r"(?: (?:BC|BCE|AD|CE))"
_ORD = r"\d{1,2}(?:st|nd|rd|th)"
_MONTH = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
)
_DAY = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
ASPECTS = (
    "History|Economy|Economic history|Politics|Political history|Demographics|Government|"
    "Foreign relations|Military history|Geography|Culture|Religion|Education|Law|Music|"
    "Climate|Languages|Transport|Transportation|Telecommunications|Health care|Healthcare|"
    "Health|Human rights|Tourism|Administrative divisions|Elections|Media|Crime|Energy|"
    "Science and technology|Sport|Sports"
)
QUALIFIERS = (
    "economics|finance|accounting|philosophy|ethics|logic|mathematics|statistics|probability|"
    "linguistics|grammar|phonetics|law|legal|politics|political science|sociology|psychology|"
    "computer science|computing|programming|programming language|software|game theory|song|album"
)
_NAMESPACES = (
    "Wikipedia|Category|Template|Portal|File|Image|Help|Draft|Module|MediaWiki|Talk|User|Book|"
    "TimedText|Special|Media"
)


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


RULES: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("namespace", "not an article (Category:, Template:, ...)", _rx(rf"^(?:{_NAMESPACES}):")),
    (
        "list",
        "a list, index, outline, timeline or glossary page collects concepts, it is none",
        _rx(r"^(?:lists?|index|outline|timeline|glossary|bibliography|chronology) of "),
    ),
    (
        "year",
        "a year, decade, century, millennium, year range or 'YYYY in X' page is a span of time",
        _rx(
            rf"^(?:(?:(?:AD )?\d{{1,4}}{_ERA}|AD \d{{1,4}}|\d{{3,4}}|\d{{0,3}}0s{_ERA}?"
            rf"|{_ORD} (?:century|millennium){_ERA}?)(?:$| in \S)|\d{{4}}[–-]\d{{2,4}}\b)"
        ),
    ),
    (
        "date",
        "a month, weekday or calendar date is not a picture",
        _rx(
            rf"^(?:{_MONTH}(?: \d{{1,2}})?(?:,? \d{{1,4}})?"
            rf"|\d{{1,2}} {_MONTH}(?: \d{{1,4}})?|{_DAY})$"
        ),
    ),
    ("number", "a bare number", _rx(r"^[−+-]?\d[\d,]*(?:\.\d+)?(?: \(number\))?$")),
    (
        "aspect",
        "'History of X', 'Economy of X', 'X–Y relations' cover an abstract aspect of X",
        _rx(rf"^(?:(?:{ASPECTS}) (?:of|in) |\S.*\S[–-]\S.* relations$)"),
    ),
    (
        "qualifier",
        "a title qualified by an abstract field or a non-visual work ('Inflation (economics)')",
        _rx(rf"\((?:{QUALIFIERS})\)$"),
    ),
)


def rule_reason(title: str | None, is_disambiguation: bool = False) -> str | None:
    """``rule:<name>`` of the first rule that rejects ``title`` (``RULES``, then
    ``disambiguation`` and ``empty``), or None when no rule rejects it."""
    if title is None or not title.strip():
        return "rule:empty"
    if is_disambiguation or title.endswith(" (disambiguation)"):
        return "rule:disambiguation"
    for name, _why, rx in RULES:
        if rx.search(title):
            return f"rule:{name}"
    return None


# ---------------------------------------------------------------- seed list and head


def load_seed_list(path: str | Path = SEED_PATH) -> pa.Table:
    """The labelled seed list (``SEED_SCHEMA``; label 1 = can be depicted), in file order."""
    header, *lines = Path(path).read_text(encoding="utf-8").rstrip("\n").split("\n")
    rows = [line.split("\t") for line in lines]
    bad = [r for r in rows if len(r) != 3 or r[1] not in ("0", "1") or not r[0].strip()]
    if header != "\t".join(SEED_SCHEMA.names) or bad:
        raise ValueError(
            f"{path}: want a 'title<TAB>label<TAB>source' header and rows with label 0 or 1; "
            f"header {header!r}, {len(bad)} bad rows (first: {bad[:1]})"
        )
    titles, labels, sources = zip(*rows, strict=True) if rows else ((), (), ())
    return pa.table([titles, [int(x) for x in labels], sources], schema=SEED_SCHEMA)


def seed_split(labels: np.ndarray, *, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION):
    """A stratified split: (train rows, test rows), each sorted; the same for the same labels."""
    rng = np.random.default_rng(seed)
    test = []
    for cls in (0, 1):
        rows = rng.permutation(np.flatnonzero(np.asarray(labels) == cls))
        test.append(rows[: round(len(rows) * test_fraction)])
    test = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(labels)), test), test


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Head:
    """Logistic regression on unit title vectors: p = sigmoid(x . coef + intercept)."""

    coef: np.ndarray
    intercept: float
    encoder: str
    dim: int
    threshold: float = 0.5
    seed_sha256: str = ""
    C: float = 1.0

    def proba(self, x: np.ndarray) -> np.ndarray:
        """(n,) float32 probability that each row's title can be depicted."""
        z = np.asarray(x, np.float32) @ self.coef.astype(np.float32) + np.float32(self.intercept)
        return (1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))).astype(np.float32)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with open(path, "wb") as f:  # np.savez on a file object: no timestamps, same bytes
            np.savez(
                f,
                coef=self.coef.astype(np.float32),
                intercept=np.float64(self.intercept),
                encoder=np.str_(self.encoder),
                dim=np.int64(self.dim),
                threshold=np.float64(self.threshold),
                seed_sha256=np.str_(self.seed_sha256),
                C=np.float64(self.C),
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> Head:
        with np.load(path) as z:
            return cls(
                coef=z["coef"].astype(np.float32),
                intercept=float(z["intercept"]),
                encoder=str(z["encoder"]),
                dim=int(z["dim"]),
                threshold=float(z["threshold"]),
                seed_sha256=str(z["seed_sha256"]),
                C=float(z["C"]),
            )


def _fit(x: np.ndarray, y: np.ndarray, C: float) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression, sklearn's objective (0.5|w|^2 + C sum logloss, the
    intercept unpenalised), with classes weighted to equal total weight; L-BFGS from zero."""
    from scipy.optimize import minimize

    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    w_cls = len(y) / (2.0 * np.maximum(np.bincount(y.astype(int), minlength=2), 1))
    sw = C * w_cls[y.astype(int)]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        z = x @ w + b
        ll = np.logaddexp(0.0, z) - y * z
        g = sw * (1.0 / (1.0 + np.exp(-z)) - y)
        return 0.5 * w @ w + sw @ ll, np.append(w + x.T @ g, g.sum())

    res = minimize(
        loss,
        np.zeros(x.shape[1] + 1),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 2000, "gtol": 1e-8},
    )
    return res.x[:-1].astype(np.float32), float(res.x[-1])


def _pick_c(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = SPLIT_SEED) -> float:
    """The ``C_GRID`` value with the best mean held-out log loss over seeded folds."""
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    best = (np.inf, C_GRID[0])
    for c in C_GRID:
        losses = []
        for k in range(folds):
            w, b = _fit(x[fold != k], y[fold != k], c)
            z = x[fold == k] @ w + b
            losses.append(np.mean(np.logaddexp(0.0, z) - y[fold == k] * z))
        best = min(best, (float(np.mean(losses)), c))
    return best[1]


def train_head(
    titles: Sequence[str],
    labels: Sequence[int],
    *,
    encoder=None,
    vectors: np.ndarray | None = None,
    C: float | None = None,
    threshold: float = 0.5,
    seed_sha256: str = "",
) -> Head:
    """Fit the head on ``titles`` (embedded by ``encoder``, default ``load_encoder()``, unless
    ``vectors`` are given); ``C`` none: picked from ``C_GRID`` by 5-fold cross-validation."""
    y = np.asarray(labels, np.int64)
    if vectors is None:
        encoder = encoder or _default_encoder()
        vectors = encoder.encode(list(titles))
    x = np.asarray(vectors, np.float32)
    C = C if C is not None else _pick_c(x, y)
    coef, intercept = _fit(x, y, C)
    name = encoder.name if encoder is not None else "unknown"
    return Head(coef, intercept, name, x.shape[1], threshold, seed_sha256, C)


def _default_encoder():
    from knowledge_graph.encoders import load_encoder

    return load_encoder()


def train_from_seed(encoder=None, *, seed_path: str | Path = SEED_PATH, C: float | None = None):
    """The head trained on the seed list's training split (as ``train`` writes it)."""
    seed = load_seed_list(seed_path)
    train, _ = seed_split(seed["label"].to_numpy())
    titles = seed["title"].to_pylist()
    labels = seed["label"].to_numpy()
    return train_head(
        [titles[i] for i in train],
        labels[train],
        encoder=encoder or _default_encoder(),
        C=C,
        seed_sha256=_sha256(Path(seed_path)),
    )


_RETRAINED: dict[tuple[str, str, int], Head] = {}


def load_head(cfg: GeneratabilityConfig = GeneratabilityConfig(), encoder=None) -> Head:
    """``cfg.head`` (or the shipped head); when ``encoder`` is given and its name or dimension
    differs from the head's, a head retrained for it from the seed list (cached per process)."""
    head = Head.load(cfg.head or HEAD_PATH)
    if encoder is None or (encoder.name, encoder.dim) == (head.encoder, head.dim):
        return head
    key = (str(cfg.head), encoder.name, encoder.dim)
    if key not in _RETRAINED:
        log.warning(
            "generatability head was trained for %s (%d-d), the encoder is %s (%d-d): "
            "retraining it from the seed list",
            head.encoder,
            head.dim,
            encoder.name,
            encoder.dim,
        )
        _RETRAINED[key] = train_from_seed(encoder, C=head.C)
    return _RETRAINED[key]


# ---------------------------------------------------------------- backend


def ask_backend(backend, titles: Sequence[str], *, batch: int = 64, progress: bool = False):
    """One answer per title, ``batch`` titles per call: True / False from the first yes / no
    word of the backend's reply to ``QUESTION`` (``captioner.backends.ask_yes_no``), None when
    the reply has neither."""
    from tqdm.auto import tqdm

    from captioner.backends import ask_yes_no

    answers: list[bool | None] = []
    with tqdm(total=len(titles), desc=f"ask ({backend.name})", disable=not progress) as bar:
        for s in range(0, len(titles), batch):
            chunk = titles[s : s + batch]
            answers += ask_yes_no(backend, [QUESTION.format(title=t) for t in chunk])
            bar.update(len(chunk))
    return answers


# ---------------------------------------------------------------- judge


def _as_list(values, what: str) -> list:
    if isinstance(values, pa.ChunkedArray | pa.Array):
        return values.to_pylist()
    if isinstance(values, str):
        raise ValueError(f"{what}: must be a sequence of strings, got one string {values!r}")
    return list(values)


def _head_scores(head_titles, rows, cfg, encoder, vectors, progress: bool) -> np.ndarray:
    """Head probabilities for ``head_titles`` (``rows`` of the input)."""
    if vectors is not None:
        from curation.vectors.index import as_matrix, check_unit

        x = as_matrix(vectors, "vectors")[rows]
        check_unit(x, "vectors")
        head = load_head(cfg, encoder)
        if x.shape[1] != head.dim:
            raise ValueError(
                f"vectors: {x.shape[1]}-d rows, but the head is for {head.encoder} "
                f"({head.dim}-d); pass the encoder that made them so the head is retrained"
            )
        return head.proba(x)
    encoder = encoder or _default_encoder()
    return load_head(cfg, encoder).proba(encoder.encode(head_titles, progress=progress))


def judge_titles(
    titles: Sequence[str] | pa.Array,
    *,
    is_disambiguation: Sequence[bool] | None = None,
    cfg: GeneratabilityConfig = GeneratabilityConfig(),
    encoder=None,
    backend=None,
    vectors: np.ndarray | None = None,
    progress: bool = False,
) -> pa.Table:
    """One ``SCHEMA`` row per title, in input order: ``generatable``, ``score`` (the head's
    probability; null where a rule or the backend decided) and ``reason`` (``rule:<name>``,
    ``head``, ``backend``, ``backend:unparsed`` (head decided) or ``no-rule`` (judge
    ``rules``)). ``vectors``: the titles' unit embeddings by ``encoder`` (row i = title i)."""
    titles = _as_list(titles, "titles")
    n = len(titles)
    bad = [i for i, t in enumerate(titles) if t is not None and not isinstance(t, str)]
    if bad:
        raise ValueError(
            f"titles: {len(bad)} are not strings (first at {bad[0]}: {titles[bad[0]]!r})"
        )
    flags = [False] * n
    if is_disambiguation is not None:
        flags = _as_list(is_disambiguation, "is_disambiguation")
    if len(flags) != n:
        raise ValueError(f"is_disambiguation: {len(flags)} flags for {n} titles")
    if vectors is not None and len(vectors) != n:
        raise ValueError(f"vectors: {len(vectors)} rows for {n} titles")
    if cfg.judge == "backend" and backend is None:
        raise ValueError("backend: judge = 'backend' needs a TextGenBackend, got None")
    reason: list[str | None] = [None] * n
    for i, (t, d) in enumerate(zip(titles, flags, strict=True)):
        if cfg.judge != "head":
            reason[i] = rule_reason(t, bool(d))
        elif t is None or not t.strip():  # nothing to embed
            reason[i] = "rule:empty"
    gen = np.array([r is None for r in reason], bool)
    score = np.full(n, np.nan, np.float32)
    todo = np.flatnonzero(gen)
    if cfg.judge == "rules":
        for i in todo:
            reason[i] = "no-rule"
    else:
        if cfg.judge == "backend":
            answers = ask_backend(backend, [titles[i] for i in todo], progress=progress)
            for i, a in zip(todo, answers, strict=True):
                reason[i] = "backend" if a is not None else "backend:unparsed"
                gen[i] = bool(a)
            todo = np.array([i for i, a in zip(todo, answers, strict=True) if a is None], int)
        if len(todo):
            p = _head_scores([titles[i] for i in todo], todo, cfg, encoder, vectors, progress)
            score[todo] = p
            gen[todo] = p >= cfg.threshold
            for i in todo:
                reason[i] = reason[i] or "head"
    return pa.table(
        [
            pa.array(gen, pa.bool_()),
            pa.array(score, pa.float32(), mask=np.isnan(score)),
            pa.array(reason, pa.string()),
        ],
        schema=SCHEMA,
    )


# ---------------------------------------------------------------- evaluation and CLI


def _scores(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(y), "accuracy": round(float(np.mean(y == pred)), 4)}
    for cls, name in ((0, "abstract"), (1, "generatable")):
        tp = int(np.sum((pred == cls) & (y == cls)))
        p = tp / max(int(np.sum(pred == cls)), 1)
        r = tp / max(int(np.sum(y == cls)), 1)
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        out[name] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4)}
    return out


def evaluate(
    cfg: GeneratabilityConfig = GeneratabilityConfig(),
    *,
    titles: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
    encoder=None,
    seed_path: str | Path = SEED_PATH,
) -> dict[str, Any]:
    """Accuracy and per-class precision / recall / F1 of the judges ``rules``, ``head`` and
    ``rules+head`` (``cfg``'s head and threshold) on ``titles`` / ``labels``, by default the
    held-out 20% of the seed list (``seed_split``)."""
    if titles is None:
        seed = load_seed_list(seed_path)
        _, test = seed_split(seed["label"].to_numpy())
        titles = [seed["title"][int(i)].as_py() for i in test]
        labels = seed["label"].to_numpy()[test]
    y = np.asarray(labels, np.int64)
    encoder = encoder or _default_encoder()
    x = encoder.encode(list(titles))
    head = load_head(cfg, encoder)
    out: dict[str, Any] = {"head": {"encoder": head.encoder, "C": head.C}, "judges": {}}
    for judge in ("rules", "head", "rules+head"):
        c = GeneratabilityConfig(judge=judge, threshold=cfg.threshold, head=cfg.head)
        t = judge_titles(titles, cfg=c, encoder=encoder, vectors=x)
        out["judges"][judge] = _scores(y, t["generatable"].to_numpy(zero_copy_only=False))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m knowledge_graph.generatability")
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train the head on the seed list's 80%% split, write it")
    tr.add_argument("--seed", default=str(SEED_PATH))
    tr.add_argument("--out", default=str(HEAD_PATH))
    tr.add_argument("--C", type=float, default=None, help="none: 5-fold CV over C_GRID")
    ev = sub.add_parser("evaluate", help="rules / head / rules+head on the held-out 20%%")
    ev.add_argument("--head", default=None)
    ev.add_argument("--threshold", type=float, default=0.5)
    jd = sub.add_parser("judge", help="judge titles given on the command line")
    jd.add_argument("titles", nargs="+")
    jd.add_argument("--judge", default="rules+head")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd == "train":
        head = train_from_seed(seed_path=args.seed, C=args.C)
        head.save(args.out)
        cfg = GeneratabilityConfig(head=args.out)
        summary = {"out": args.out, "C": head.C, **evaluate(cfg, seed_path=args.seed)}
        print(json.dumps(summary))
    elif args.cmd == "evaluate":
        print(json.dumps(evaluate(GeneratabilityConfig(head=args.head, threshold=args.threshold))))
    else:
        t = judge_titles(args.titles, cfg=GeneratabilityConfig(judge=args.judge))
        for title, row in zip(args.titles, t.to_pylist(), strict=True):
            print(
                f"{row['generatable']!s:5}  {row['reason']:<20} {row['score'] or '':<10.4} {title}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
