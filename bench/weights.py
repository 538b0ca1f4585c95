"""BM25 sampling weights at scale, and concept balancing against MetaCLIP's cap.

    python bench/weights.py             # 10M synthetic captions
    python bench/weights.py --quick     # 1M, < 1 minute

Throughput: N captions of ~15 words (lengths 8-22) drawn from a Zipfian vocabulary
(exponent 1.1 over 200k words) are generated as an Arrow string array (not timed); then
``tokenize`` (numba split / clean / hash of the Arrow bytes, 2 threads) and
``sampling_weights`` (numba BM25, concept masses, weights) are timed together: captions/s end
to end. The numba kernels are compiled (or loaded from numba's cache) on a small input first;
that warm-up is reported, not timed, and the CPU seconds of the timed part (all threads) are
reported next to its wall time (the machine may be shared). Baseline, side by side: the
previous tokenizer (Arrow split + dictionary encoding, words cleaned once per distinct word)
on the first 1M captions, against ``tokenize`` on the same captions.

Balancing (MetaCLIP comparison): each caption's words are its concepts. A weighted sample of
N/10 captions is drawn with probability proportional to (a) 1 (the raw pool), (b) MetaCLIP's
balancing (a caption's probability is the max over its concepts of t / count(concept), with
t = the cap; t = 20,000 for 400M pairs in the paper, scaled to the pool here), (c) our BM25
weights. Reported: entropy of the concept distribution in the sample, and the fraction of
rare concepts (pool count <= 10) that reach at least one sampled caption. The last line is
JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from knowledge_graph.weights import (  # noqa: E402
    WeightConfig,
    clean_word,
    entropy,
    sampling_weights,
    tokenize,
)


def captions(n: int, vocab: int = 200_000, seed: int = 0) -> pa.Array:
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab + 1)
    p = ranks**-1.1
    cdf = np.cumsum(p / p.sum())
    words = np.array([f"w{i}" for i in range(vocab)], dtype=object)
    lengths = rng.integers(8, 23, n)
    ids = np.searchsorted(cdf, rng.random(int(lengths.sum())))
    ids = np.minimum(ids, vocab - 1)
    flat = pa.array(words[ids], pa.string())
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    lists = pa.ListArray.from_arrays(pa.array(offsets), flat)
    return pa.compute.binary_join(lists, " ")


def arrow_tokens(texts: pa.Array) -> np.ndarray:
    """Term ids per token by the previous tokenizer: Arrow split on spaces + dictionary
    encoding, each distinct word cleaned once (the baseline)."""
    texts = pc.fill_null(texts, "")
    for ws in ("\n", "\t", "\r"):
        texts = pc.replace_substring(texts, ws, " ")
    enc = pc.dictionary_encode(pc.list_flatten(pc.split_pattern(texts, " ")))
    vocab: dict[str, int] = {}
    words = enc.dictionary.to_pylist()
    remap = np.array(
        [vocab.setdefault(w, len(vocab)) if (w := clean_word(x)) else -1 for x in words]
    )
    tokens = remap[enc.indices.to_numpy()]
    return tokens[tokens >= 0]


def baseline(texts: pa.Array) -> dict:
    """captions/s of ``tokenize`` vs the Arrow baseline on the same captions (same tokens)."""
    t0 = time.perf_counter()
    ours = tokenize(texts)
    t1 = time.perf_counter()
    theirs = arrow_tokens(texts)
    t2 = time.perf_counter()
    assert np.array_equal(ours.tokens, theirs), "tokenize differs from the Arrow baseline"
    n = len(texts)
    return {"captions": n, "tokenize": round(n / (t1 - t0)), "arrow": round(n / (t2 - t1))}


def metaclip_probability(corpus, t: float) -> np.ndarray:
    counts = np.bincount(corpus.tokens, minlength=len(corpus.vocab)).astype(np.float64)
    per_token = np.minimum(1.0, t / counts[corpus.tokens])
    out = np.zeros(corpus.n_docs)
    nonempty = np.diff(corpus.indptr) > 0
    maxes = np.maximum.reduceat(per_token, corpus.indptr[:-1][nonempty])
    out[nonempty] = maxes
    return out


def sample_stats(corpus, prob: np.ndarray, k: int, rng) -> dict:
    p = prob / prob.sum()
    chosen = rng.choice(corpus.n_docs, size=k, replace=True, p=p)
    lens = np.diff(corpus.indptr)[chosen]
    starts = corpus.indptr[chosen]
    idx = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(
        lens.sum()
    )
    tokens = corpus.tokens[idx]
    counts = np.bincount(tokens, minlength=len(corpus.vocab))
    pool = np.bincount(corpus.tokens, minlength=len(corpus.vocab))
    rare = (pool > 0) & (pool <= 10)
    return {
        "entropy": round(entropy(counts), 3),
        "rare_reached": round(float((counts[rare] > 0).mean()), 4),
        "concepts_reached": int((counts > 0).sum()),
        "rare_concepts": int(rare.sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 1_000_000 if args.quick else args.n
    t0 = time.perf_counter()
    texts = captions(n)
    print(f"generated {n:,} captions in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    sampling_weights(tokenize(texts[:1000]))  # compile / load the numba kernels, not timed
    warmup = time.perf_counter() - t0
    print(f"warm-up (numba compile or cache load) {warmup:.1f} s")
    base = baseline(texts[:1_000_000])
    print(
        f"tokenize only, first {base['captions']:,} captions: {base['tokenize']:,} captions/s; "
        f"Arrow baseline {base['arrow']:,} captions/s (same tokens)"
    )
    cpu0, t0 = time.process_time(), time.perf_counter()
    corpus = tokenize(texts)
    t_tok = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = sampling_weights(corpus, WeightConfig())
    t_w = time.perf_counter() - t1
    cpu = time.process_time() - cpu0  # CPU seconds of all threads (the machine may be shared)
    total = t_tok + t_w
    w = res["weight"]
    print(
        f"tokenize {t_tok:.1f} s + weights {t_w:.1f} s = {total:.1f} s: {n / total:,.0f} "
        f"captions/s, {cpu:.1f} CPU s ({len(corpus.tokens):,} tokens, "
        f"{len(corpus.vocab):,} words); "
        f"weights min {w.min():.3f} mean {w.mean():.3f} max {w.max():.1f}"
    )
    rng = np.random.default_rng(1)
    k = n // 10
    t_cap = 20_000 * n / 400_000_000 * 10  # MetaCLIP's t for 400M, scaled (x10: small pool)
    balance = {
        "raw": sample_stats(corpus, np.ones(n), k, rng),
        "metaclip": sample_stats(corpus, metaclip_probability(corpus, t_cap), k, rng),
        "bm25": sample_stats(corpus, w, k, rng),
    }
    for name, row in balance.items():
        print(f"{name:9s} {row}")
    print(
        json.dumps(
            {
                "bench": "weights",
                "captions": n,
                "captions_per_s": round(n / total),
                "tokenize_s": round(t_tok, 2),
                "weights_s": round(t_w, 2),
                "cpu_s": round(cpu, 2),
                "warmup_s": round(warmup, 2),
                "tokenize_vs_arrow": base,
                "tokens": len(corpus.tokens),
                "vocab": len(corpus.vocab),
                "metaclip_t": t_cap,
                "balance": balance,
            }
        )
    )


if __name__ == "__main__":
    main()
