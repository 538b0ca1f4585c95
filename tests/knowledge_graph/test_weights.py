"""BM25 + hierarchy sampling weights: BM25 equal to bm25s (Lucene), weight properties."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from knowledge_graph.weights import (
    WeightConfig,
    bm25_terms,
    encode_tags,
    entropy,
    sampling_weights,
    tokenize,
)

CAPTIONS = [
    "A dog on the grass.",
    "The dog and the cat, the cat again",
    "a red bus in the city street",
    "Bus bus stop",
    "",
    None,
    "A cat sleeping on a couch",
    "Zürich's tram at night",
]


def test_tokenize_words_and_empty_rows():
    corpus = tokenize(CAPTIONS)
    vocab = corpus.vocab.to_pylist()
    docs = [
        [vocab[t] for t in corpus.tokens[corpus.indptr[i] : corpus.indptr[i + 1]]]
        for i in range(corpus.n_docs)
    ]
    assert docs[0] == ["a", "dog", "on", "the", "grass"]
    assert docs[3] == ["bus", "bus", "stop"]
    assert docs[4] == [] and docs[5] == []
    assert docs[7] == ["zürich's", "tram", "at", "night"]


def test_bm25_equals_bm25s_lucene():
    bm25s = pytest.importorskip("bm25s")
    corpus = tokenize(CAPTIONS * 3)
    vocab = corpus.vocab.to_pylist()
    docs = [
        [vocab[t] for t in corpus.tokens[corpus.indptr[i] : corpus.indptr[i + 1]]]
        for i in range(corpus.n_docs)
    ]
    for k1, b in ((1.5, 0.75), (0.9, 0.4)):
        score, _, df = bm25_terms(corpus, k1=k1, b=b)
        ref = bm25s.BM25(method="lucene", k1=k1, b=b)
        ref.index(docs, show_progress=False)
        for i, doc in enumerate(docs):
            if not doc:
                continue
            want = ref.get_scores(list(dict.fromkeys(doc)))[i]  # the document's own terms
            got = score[corpus.indptr[i] : corpus.indptr[i + 1]].sum()
            assert got == pytest.approx(want, rel=1e-5), (i, doc)
    assert df[vocab.index("cat")] == 6  # 2 documents x 3 copies; repeats count once


def test_weights_normalised_and_rare_above_common():
    rng = np.random.default_rng(0)
    common = [f"dog park {w}" for w in rng.choice(["grass", "ball", "leash"], 500)]
    rare = ["okapi park grass"] * 5
    corpus = tokenize(common + rare + [""])
    res = sampling_weights(corpus)
    w = res["weight"]
    assert (w >= 0).all() and w[:-1].mean() == pytest.approx(1.0)
    assert w[-1] == 1.0  # a sample without terms is neutral
    assert w[500:505].min() > 5 * w[:500].max()  # okapi samples weigh far more than dog ones
    # the weighted pool puts (near) equal mass on each concept: uniform prior
    vocab = corpus.vocab.to_pylist()
    okapi, dog = vocab.index("okapi"), vocab.index("dog")
    share_mass = res["mass"] * res["rate"]  # mass x rate = the concept's weighted mass
    assert share_mass[okapi] == pytest.approx(share_mass[dog], rel=1e-9)


def test_hierarchy_rare_child_shares_its_parents_budget():
    # concepts: 0 animal (parent), 1 dog (common child), 2 okapi (rare child), 3 bus (root)
    tags = [["dog"]] * 400 + [["okapi"]] * 2 + [["bus"]] * 100
    corpus = encode_tags(pa.array(tags, pa.list_(pa.string())))
    vocab = corpus.vocab.to_pylist()
    concept_of_term = np.array([{"dog": 1, "okapi": 2, "bus": 3}[t] for t in vocab])
    parent = np.array([-1, 0, 0, -1])
    flat = sampling_weights(
        corpus, WeightConfig(alpha=0.0), concept_of_term=concept_of_term, parent=parent
    )
    shared = sampling_weights(
        corpus, WeightConfig(alpha=0.5), concept_of_term=concept_of_term, parent=parent
    )
    okapi, dog = 400, 0
    # without sharing, a rare child takes a full leaf share: 2 samples carry what 400 dogs do
    assert flat["weight"][okapi] == pytest.approx(200 * flat["weight"][dog])
    # with alpha = 0.5 each child's mass is smoothed by alpha * 402 (animal's subtree mass)
    # * 1/2 (its prior share of animal) = 100.5: okapi 102.5, dog 500.5 -> ratio 4.88, and
    # okapi's rate 1/102.5 stays under 1/alpha times animal's rate 2/402 (= 1/100.5)
    ratio = shared["weight"][okapi] / shared["weight"][dog]
    assert ratio == pytest.approx(500.5 / 102.5)
    assert shared["rate"][2] / shared["rate"][3] == pytest.approx(100 / 102.5)  # bus: 1/100
    assert shared["weight"][okapi] > shared["weight"][dog]  # still above the common child


def test_unmapped_terms_do_not_count_and_config_errors():
    corpus = tokenize(["dog x", "dog y", "cat"])
    vocab = corpus.vocab.to_pylist()
    concept = np.array([0 if t == "dog" else 1 if t == "cat" else -1 for t in vocab])
    res = sampling_weights(corpus, concept_of_term=concept)
    assert res["mass"].tolist() == pytest.approx([2.0, 1.0])  # x, y carry no mass
    assert res["weight"][2] == pytest.approx(2 * res["weight"][0])
    with pytest.raises(ValueError, match="k1"):
        WeightConfig(k1=-1)
    with pytest.raises(ValueError, match="concept_of_term"):
        sampling_weights(corpus, concept_of_term=np.zeros(2, int))


def test_entropy():
    assert entropy(np.array([1, 1, 1, 1])) == pytest.approx(np.log(4))
    assert entropy(np.array([5, 0])) == 0.0
