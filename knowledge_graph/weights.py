"""BM25 + hierarchy sampling weights: the arithmetic, over integer token arrays.

A *document* is one sample's terms (its tags, or its caption's words), a *term* maps to a
*concept* (a knowledge-graph / taxonomy node; by default each term is its own concept), and
concepts may have parents. The formula (docs/sampling.md has a worked example):

1. BM25 importance of term t in document d (Lucene's form, as bm25s ``lucene``: no constant
   ``k1 + 1`` factor, non-negative idf):
   ``s(t, d) = idf(t) * tf / (tf + k1 (1 - b + b |d| / avgdl))`` with
   ``idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))``; its share
   ``a(t, d) = s(t, d) / sum_t' s(t', d)`` (a document spreads one unit over its terms,
   rare terms taking more).
2. Concept mass in the pool ``m(c) = sum_d sum_{t in d, c(t) = c} a(t, d)``, smoothed towards
   the parent: ``m~(c) = m(c) + alpha * m(parent) * prior(c) / prior(parent)`` - a rare child
   under a common parent gets at most ``1 / alpha`` times its parent's per-sample rate
   instead of a full share of its own.
3. Per-concept rate ``g(c) = prior(c) / m~(c)`` (prior: uniform over concepts by default),
   and the sample weight ``w(d) = sum_t a(t, d) g(c(t))``, rescaled to mean 1 over the
   samples that have terms; samples without any mapped term get 1 (neutral).

Everything per token is numpy / numba over CSR arrays (``indptr`` per document, ``tokens``
int32 term ids); tokenisation of raw captions (``tokenize``) runs in Arrow's C++ kernels over
chunks on a thread pool. No Python object per document.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infra.config import require

PUNCTUATION = ".,;:!?\"'()[]{}<>*`~-_/\\|"
"""Stripped from both ends of each word (inner ones stay: "don't", "t-shirt")."""
CHUNK_ROWS = 250_000


@dataclass(frozen=True, kw_only=True)
class WeightConfig:
    """BM25 and hierarchy parameters of the sampling weights."""

    k1: float = 1.5
    """BM25 term-frequency saturation."""
    b: float = 0.75
    """BM25 length normalisation."""
    alpha: float = 0.25
    """Hierarchy smoothing: a rare child gets at most 1/alpha times its parent's per-sample
    rate (0: no sharing, pure inverse frequency)."""

    def __post_init__(self) -> None:
        require(self.k1 >= 0, "k1", self.k1, "must be >= 0")
        require(0.0 <= self.b <= 1.0, "b", self.b, "must be in [0, 1]")
        require(self.alpha >= 0, "alpha", self.alpha, "must be >= 0")


@dataclass(frozen=True)
class Corpus:
    """Documents as CSR: terms of document i are ``tokens[indptr[i]:indptr[i + 1]]``."""

    indptr: np.ndarray
    tokens: np.ndarray
    vocab: pa.Array

    @property
    def n_docs(self) -> int:
        return len(self.indptr) - 1


# ---------------------------------------------------------------- tokenising


def _tokenize_chunk(texts: pa.Array) -> tuple[np.ndarray, pa.Array, pa.Array]:
    texts = pc.fill_null(texts, "")
    for ws in ("\n", "\t", "\r"):  # plain substring passes: cheaper than a regex split
        texts = pc.replace_substring(texts, ws, " ")
    # split on single spaces (2x faster than utf8_split_whitespace); the empty words that
    # runs of spaces leave clean to nothing and are dropped with the other empty words
    return _encode_lists(pc.split_pattern(texts, " "))


def clean_word(word: str) -> str:
    """Lower-cased, punctuation stripped from both ends (per distinct word, not per token)."""
    return word.lower().strip(PUNCTUATION)


def _encode_lists(lists: pa.Array) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """(per-row counts, dictionary indices, dictionary) of a list<string> array."""
    lists = pc.fill_null(lists, pa.scalar([], lists.type)) if lists.null_count else lists
    flat = pc.list_flatten(lists)
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    enc = pc.dictionary_encode(flat)
    return lengths, enc.indices, enc.dictionary


def tokenize(texts: pa.Array | pa.ChunkedArray | Sequence[str], *, threads: int = 2) -> Corpus:
    """Caption words -> ``Corpus``: Arrow whitespace split + dictionary encoding per chunk of
    ``CHUNK_ROWS`` on ``threads`` threads; each distinct word is then lower-cased and stripped
    of end punctuation once (``clean_word``) while the chunk vocabularies are merged, so no
    per-token string work happens in Python. Words that clean to nothing are dropped."""
    return _corpus(texts, _tokenize_chunk, threads, clean_word)


def encode_tags(tags: pa.Array | pa.ChunkedArray, *, threads: int = 2) -> Corpus:
    """A list<string> column of tags (one list per sample) -> ``Corpus`` over distinct tags
    (tags are used as given; empty ones dropped)."""
    return _corpus(tags, _encode_lists, threads, lambda tag: tag)


def _corpus(data, chunk_fn, threads: int, clean) -> Corpus:
    if not isinstance(data, pa.Array | pa.ChunkedArray):
        data = pa.array(data)
    arr = data.combine_chunks() if isinstance(data, pa.ChunkedArray) else data
    chunks = [arr.slice(s, CHUNK_ROWS) for s in range(0, max(len(arr), 1), CHUNK_ROWS)]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        parts = list(pool.map(chunk_fn, chunks))
    vocab: dict[str, int] = {}
    tokens, lengths = [], []
    for counts, indices, dictionary in parts:
        words = dictionary.to_pylist()  # one Python string per distinct word of a chunk
        remap = np.fromiter(
            (vocab.setdefault(w, len(vocab)) if (w := clean(raw)) else -1 for raw in words),
            np.int32,
            len(words),
        )
        tok = remap[indices.to_numpy(zero_copy_only=False)] if len(remap) else remap
        keep = tok >= 0
        if not keep.all():  # words that cleaned to nothing ("-", "...")
            doc = np.repeat(np.arange(len(counts)), counts)
            counts = np.bincount(doc[keep], minlength=len(counts)).astype(np.int64)
            tok = tok[keep]
        tokens.append(tok)
        lengths.append(counts)
    indptr = np.zeros(len(arr) + 1, np.int64)
    np.cumsum(np.concatenate(lengths) if lengths else [], out=indptr[1:])
    return Corpus(
        indptr, np.concatenate(tokens).astype(np.int32), pa.array(list(vocab), pa.string())
    )


# ---------------------------------------------------------------- BM25


@numba.njit(parallel=True, cache=True)
def _first_and_tf(indptr: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per token position: is it the term's first occurrence in its document, and the term's
    frequency in the document (documents are short: a quadratic scan per document)."""
    n = len(indptr) - 1
    first = np.zeros(len(tokens), np.bool_)
    tf = np.zeros(len(tokens), np.int32)
    for d in numba.prange(n):
        a, b = indptr[d], indptr[d + 1]
        for i in range(a, b):
            seen = False
            for j in range(a, i):
                if tokens[j] == tokens[i]:
                    seen = True
                    break
            if not seen:
                first[i] = True
                c = 0
                for j in range(i, b):
                    if tokens[j] == tokens[i]:
                        c += 1
                tf[i] = c
    return first, tf


@numba.njit(parallel=True, cache=True)
def _bm25(indptr, tokens, first, tf, idf, mapped, k1, b, avgdl, normalise):
    """Per token: BM25 s(t, d) at a mapped term's first occurrence (else 0), divided by the
    document's total when ``normalise`` (the share a(t, d)); and per document the total."""
    n = len(indptr) - 1
    out = np.zeros(len(tokens))
    total = np.zeros(n)
    for d in numba.prange(n):
        lo, hi = indptr[d], indptr[d + 1]
        norm = k1 * (1.0 - b + b * (hi - lo) / avgdl)
        acc = 0.0
        for i in range(lo, hi):
            t = tokens[i]
            if first[i] and mapped[t]:
                v = idf[t] * tf[i] / (tf[i] + norm)
                out[i] = v
                acc += v
        total[d] = acc
        if normalise and acc > 0:
            for i in range(lo, hi):
                out[i] /= acc
    return out, total


@numba.njit(parallel=True, cache=True)
def _doc_sums(indptr, tokens, values, per_term):
    """sum_i values[i] * per_term[tokens[i]] per document."""
    n = len(indptr) - 1
    out = np.zeros(n)
    for d in numba.prange(n):
        acc = 0.0
        for i in range(indptr[d], indptr[d + 1]):
            acc += values[i] * per_term[tokens[i]]
        out[d] = acc
    return out


def _stats(corpus: Corpus):
    first, tf = _first_and_tf(corpus.indptr, corpus.tokens)
    df = np.bincount(corpus.tokens[first], minlength=len(corpus.vocab))
    n_docs = corpus.n_docs
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
    avgdl = len(corpus.tokens) / n_docs if n_docs and len(corpus.tokens) else 1.0
    return first, tf, df, idf, avgdl


def bm25_terms(corpus: Corpus, *, k1: float = 1.5, b: float = 0.75):
    """Per token position: BM25 ``s(t, d)`` at each term's first occurrence in its document
    (0 at repeats), plus ``idf`` and ``df`` per term (module docstring)."""
    first, tf, df, idf, avgdl = _stats(corpus)
    mapped = np.ones(len(corpus.vocab), np.bool_)
    score, _ = _bm25(corpus.indptr, corpus.tokens, first, tf, idf, mapped, k1, b, avgdl, False)
    return score, idf, df


def sampling_weights(
    corpus: Corpus,
    cfg: WeightConfig = WeightConfig(),
    *,
    concept_of_term: np.ndarray | None = None,
    parent: np.ndarray | None = None,
    prior: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """``weight`` per document (mean 1 over documents with mapped terms) and per-concept
    ``mass`` / ``rate``. ``concept_of_term`` (-1 = unmapped; default: term i is concept i),
    ``parent`` per concept (-1 = root), ``prior`` per concept (default uniform over concepts
    that occur, or over leaves when ``parent`` is given)."""
    n_terms = len(corpus.vocab)
    concept = np.arange(n_terms) if concept_of_term is None else np.asarray(concept_of_term)
    if len(concept) != n_terms:
        raise ValueError(
            f"concept_of_term: needs one entry per term ({n_terms}), got {len(concept)}"
        )
    n_concepts = int(concept.max()) + 1 if len(concept) else 0
    if parent is not None:
        parent = np.asarray(parent, np.int64)
        n_concepts = max(n_concepts, len(parent))
        if len(parent) != n_concepts:
            raise ValueError(
                f"parent: needs one entry per concept ({n_concepts}), got {len(parent)}"
            )
    first, tf, df, idf, avgdl = _stats(corpus)
    mapped = concept >= 0
    share, doc_total = _bm25(
        corpus.indptr, corpus.tokens, first, tf, idf, mapped, cfg.k1, cfg.b, avgdl, True
    )
    bins = np.where(mapped, concept, n_concepts)  # unmapped terms: an extra, dropped bin
    mass = np.bincount(bins[corpus.tokens], weights=share, minlength=n_concepts + 1)
    mass = mass[:n_concepts]
    if prior is None:
        leaf = np.ones(n_concepts, bool)
        if parent is not None:
            leaf[parent[parent >= 0]] = False
        prior = np.where(leaf & (mass > 0), 1.0, 0.0)
        if parent is not None:  # internal nodes carry their subtree's prior
            prior = _subtree_sum(prior, parent)
    prior = np.asarray(prior, np.float64)
    smoothed = mass.copy()
    if parent is not None and cfg.alpha > 0:
        subtree_mass = _subtree_sum(mass, parent)
        has = parent >= 0
        up = parent[has]
        ratio = np.divide(prior[has], prior[up], out=np.zeros(has.sum()), where=prior[up] > 0)
        smoothed[has] += cfg.alpha * subtree_mass[up] * ratio
    rate = np.divide(prior, smoothed, out=np.zeros(n_concepts), where=smoothed > 0)
    rate_of_term = np.where(mapped, rate[np.maximum(concept, 0)], 0.0)
    weight = _doc_sums(corpus.indptr, corpus.tokens, share, rate_of_term)
    has_terms = doc_total > 0
    mean = weight[has_terms].mean() if has_terms.any() else 1.0
    weight = np.where(has_terms, weight / mean if mean > 0 else 1.0, 1.0)
    return {"weight": weight, "mass": mass, "rate": rate / mean, "idf": idf, "df": df}


def _subtree_sum(values: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Each node's value plus all of its descendants' (parent pointers, any depth)."""
    out = values.astype(np.float64).copy()
    depth = np.zeros(len(parent), np.int64)
    for _ in range(len(parent)):  # depth by pointer jumping; the loop ends at the tree height
        nxt = np.where(parent >= 0, depth[np.maximum(parent, 0)] + 1, 0)
        if np.array_equal(nxt, depth):
            break
        depth = nxt
    for d in range(int(depth.max()) if len(depth) else 0, 0, -1):
        nodes = np.flatnonzero(depth == d)
        np.add.at(out, parent[nodes], out[nodes])
    return out


def entropy(counts: np.ndarray) -> float:
    """Shannon entropy (nats) of a distribution given by non-negative counts."""
    p = np.asarray(counts, np.float64)
    p = p[p > 0] / p.sum() if p.sum() > 0 else p[:0]
    return float(-(p * np.log(p)).sum()) if len(p) else 0.0
