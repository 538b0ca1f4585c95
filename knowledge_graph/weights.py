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

Everything per token is numba over CSR arrays (``indptr`` per document, ``tokens`` int32 term
ids); tokenisation of raw captions (``knowledge_graph.tokenize``, re-exported here) is a numba
pass over the Arrow string bytes per chunk on a thread pool. No Python object per document,
nor per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from infra.config import require
from knowledge_graph.tokenize import (  # re-exported: the inputs of the weights
    CHUNK_ROWS,
    PUNCTUATION,
    Corpus,
    clean_word,
    encode_tags,
    tokenize,
)

__all__ = [
    "CHUNK_ROWS",
    "PUNCTUATION",
    "Corpus",
    "WeightConfig",
    "bm25_terms",
    "clean_word",
    "encode_tags",
    "entropy",
    "sampling_weights",
    "subtree_sum",
    "tokenize",
]


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


# ---------------------------------------------------------------- BM25


@numba.njit(parallel=True, cache=True)
def _tf_df(indptr, tokens, n_terms, parts):
    """Per token position: the term's frequency in its document at the term's first
    occurrence there, 0 at repeats; and the document frequency of each term, one row per
    part of the documents (each part remembers each term's last first occurrence)."""
    n = len(indptr) - 1
    tf = np.empty(len(tokens), np.int32)
    df = np.zeros((parts, n_terms), np.int64)
    last = np.full((parts, n_terms), -1, np.int64)
    step = (n + parts - 1) // parts
    for p in numba.prange(parts):
        for d in range(p * step, min(n, (p + 1) * step)):
            lo = indptr[d]
            for i in range(lo, indptr[d + 1]):
                t = tokens[i]
                if last[p, t] < lo:  # first occurrence in this document
                    last[p, t], tf[i] = i, 1
                    df[p, t] += 1
                else:
                    tf[last[p, t]] += 1
                    tf[i] = 0
    return tf, df


@numba.njit(cache=True, inline="always")
def _score(t, tf, idf, norm):
    return idf[t] * tf / (tf + norm)


@numba.njit(parallel=True, cache=True)
def _bm25(indptr, tokens, tf, idf, k1, b, avgdl):
    """Per token: BM25 s(t, d) at a term's first occurrence in the document, else 0."""
    out = np.zeros(len(tokens))
    for d in numba.prange(len(indptr) - 1):
        lo, hi = indptr[d], indptr[d + 1]
        norm = k1 * (1.0 - b + b * (hi - lo) / avgdl)
        for i in range(lo, hi):
            if tf[i]:
                out[i] = _score(tokens[i], tf[i], idf, norm)
    return out


@numba.njit(cache=True)
def _mass(indptr, tokens, tf, idf, bin_of_term, n_bins, k1, b, avgdl):
    """Per document the sum of its mapped terms' BM25 scores (bin >= 0), and per bin the sum
    of the shares a(t, d) (score / document total). Sequential, in token order: the float sums
    are those of ``np.bincount(..., weights=shares)``."""
    n = len(indptr) - 1
    mass, total = np.zeros(n_bins), np.zeros(n)
    for d in range(n):
        lo, hi = indptr[d], indptr[d + 1]
        norm = k1 * (1.0 - b + b * (hi - lo) / avgdl)
        acc = 0.0
        for i in range(lo, hi):
            if tf[i] and bin_of_term[tokens[i]] >= 0:
                acc += _score(tokens[i], tf[i], idf, norm)
        total[d] = acc
        if acc > 0:
            for i in range(lo, hi):
                t = tokens[i]
                if tf[i] and bin_of_term[t] >= 0:
                    mass[bin_of_term[t]] += _score(t, tf[i], idf, norm) / acc
    return mass, total


@numba.njit(parallel=True, cache=True)
def _doc_weights(indptr, tokens, tf, idf, total, rate_of_term, k1, b, avgdl):
    """sum_t a(t, d) rate(t) per document (a(t, d) as in ``_mass``)."""
    n = len(indptr) - 1
    out = np.zeros(n)
    for d in numba.prange(n):
        lo, hi = indptr[d], indptr[d + 1]
        norm = k1 * (1.0 - b + b * (hi - lo) / avgdl)
        acc = 0.0
        if total[d] > 0:
            for i in range(lo, hi):
                t = tokens[i]
                if tf[i] and rate_of_term[t] != 0:
                    acc += _score(t, tf[i], idf, norm) / total[d] * rate_of_term[t]
        out[d] = acc
    return out


def _stats(corpus: Corpus):
    n_terms = len(corpus.vocab)  # parts: one per thread, with <= 32M per-term slots in all
    parts = max(1, min(numba.get_num_threads(), (1 << 25) // max(n_terms, 1)))
    tf, df = _tf_df(corpus.indptr, corpus.tokens, n_terms, parts)
    df = df.sum(axis=0)
    n_docs = corpus.n_docs
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
    avgdl = len(corpus.tokens) / n_docs if n_docs and len(corpus.tokens) else 1.0
    return tf, df, idf, avgdl


def bm25_terms(corpus: Corpus, *, k1: float = 1.5, b: float = 0.75):
    """Per token position: BM25 ``s(t, d)`` at each term's first occurrence in its document
    (0 at repeats), plus ``idf`` and ``df`` per term (module docstring)."""
    tf, df, idf, avgdl = _stats(corpus)
    return _bm25(corpus.indptr, corpus.tokens, tf, idf, k1, b, avgdl), idf, df


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
    tf, df, idf, avgdl = _stats(corpus)
    mapped = concept >= 0
    bins = np.where(mapped, concept, -1).astype(np.int64)
    args = (cfg.k1, cfg.b, avgdl)
    mass, doc_total = _mass(corpus.indptr, corpus.tokens, tf, idf, bins, n_concepts, *args)
    if prior is None:
        leaf = np.ones(n_concepts, bool)
        if parent is not None:
            leaf[parent[parent >= 0]] = False
        prior = np.where(leaf & (mass > 0), 1.0, 0.0)
        if parent is not None:  # internal nodes carry their subtree's prior
            prior = subtree_sum(prior, parent)
    prior = np.asarray(prior, np.float64)
    smoothed = mass.copy()
    if parent is not None and cfg.alpha > 0:
        subtree_mass = subtree_sum(mass, parent)
        has = parent >= 0
        up = parent[has]
        ratio = np.divide(prior[has], prior[up], out=np.zeros(has.sum()), where=prior[up] > 0)
        smoothed[has] += cfg.alpha * subtree_mass[up] * ratio
    rate = np.divide(prior, smoothed, out=np.zeros(n_concepts), where=smoothed > 0)
    rate_of_term = np.where(mapped, rate[np.maximum(concept, 0)], 0.0)
    weight = _doc_weights(corpus.indptr, corpus.tokens, tf, idf, doc_total, rate_of_term, *args)
    has_terms = doc_total > 0
    mean = weight[has_terms].mean() if has_terms.any() else 1.0
    weight = np.where(has_terms, weight / mean if mean > 0 else 1.0, 1.0)
    return {"weight": weight, "mass": mass, "rate": rate / mean, "idf": idf, "df": df}


def subtree_sum(values: np.ndarray, parent: np.ndarray) -> np.ndarray:
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
