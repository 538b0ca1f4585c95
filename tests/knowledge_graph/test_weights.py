"""BM25 + hierarchy sampling weights: BM25 equal to bm25s (Lucene), weight properties."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from knowledge_graph import tokenize as tokenize_module
from knowledge_graph.weights import (
    WeightConfig,
    bm25_terms,
    clean_word,
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


TRICKY = [
    "ÉCOLE école École, (ÉCOLE)",
    "İstanbul STRASSE Straße ß ẞ",
    "tabs\tand\nnewlines\r\nand\x0bvertical\x0cfeeds \x1cfile\x1dgroup\x1erecord\x1funit",
    "nbsp\xa0inside a\u3000ideographic\u2003em\x85nel space",
    "... -- ' \" () [] {} <> * ` ~ - _ / \\ | !?",
    "((Hello)), WORLD!!! don't t-shirt -dash- 'quoted' \"QUOTED\"",
    "SUPERCALIFRAGILISTIC supercalifragilistic SuperCaliFragilistic, supercalifragilistic!",
    "   leading and trailing   ",
    "",
    None,
    "emoji 😀 😀! x😀x 日本語、テキスト。",
    "a b c A B C",
    "\x00null\x01control\x7f bytes",
]


def _reference(texts):
    """The tokenizer's definition: str.split, clean_word per token, empty words dropped."""
    return [[w for w in map(clean_word, (t or "").split()) if w] for t in texts]


def _docs(corpus):
    vocab = corpus.vocab.to_pylist()
    return [
        [vocab[t] for t in corpus.tokens[corpus.indptr[i] : corpus.indptr[i + 1]]]
        for i in range(corpus.n_docs)
    ]


def _check_tokenize(texts, **kw):
    corpus = tokenize(texts, **kw)
    want = _reference(texts)
    assert _docs(corpus) == want
    # vocabulary: each cleaned word once, in order of first occurrence
    assert corpus.vocab.to_pylist() == list(dict.fromkeys(w for doc in want for w in doc))
    assert corpus.tokens.dtype == np.int32 and corpus.indptr.dtype == np.int64


def test_tokenize_equals_python_reference_on_tricky_text():
    _check_tokenize(TRICKY)
    _check_tokenize(TRICKY[::-1])


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 5])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_tokenize_chunk_boundaries(monkeypatch, chunk_rows, threads):
    monkeypatch.setattr(tokenize_module, "CHUNK_ROWS", chunk_rows)
    _check_tokenize(TRICKY + CAPTIONS + TRICKY, threads=threads)


def test_tokenize_fuzz_against_reference(monkeypatch):
    monkeypatch.setattr(tokenize_module, "CHUNK_ROWS", 97)
    rng = np.random.default_rng(0)
    pieces = [*"aAzZ09.,;:-'\"()_/|  \t\n\r\x0b\x1c\x85\xa0éÉİß😀", "\u3000", "ÉCOLE"]
    texts = [
        "".join(rng.choice(pieces, rng.integers(0, 30))) if rng.random() > 0.05 else None
        for _ in range(3000)
    ]
    _check_tokenize(texts)


def test_tokenize_many_distinct_and_long_words():
    # tens of thousands of keys (the hash tables grow several times), words of 1 to 40 bytes
    # (packed and hashed keys), upper case duplicates, one caption of 20,000 words
    rng = np.random.default_rng(1)
    words = np.array([f"W{i}{'x' * (i % 37)}" for i in range(30_000)])
    texts = [" ".join(rng.choice(words, 12)) for _ in range(4000)]
    texts.append(" ".join(w.lower() + "," for w in words[:20_000]))
    _check_tokenize(texts)


def test_tokenize_input_types():
    texts = pa.array(TRICKY * 3)
    want = _docs(tokenize(texts))
    for data in (
        texts.cast(pa.large_string()),
        pa.chunked_array([texts.slice(0, 5), texts.slice(5, 0), texts.slice(5)]),
        TRICKY * 3,
    ):
        assert _docs(tokenize(data)) == want
    assert _docs(tokenize(texts.slice(4, 9))) == want[4:13]
    empty = tokenize([None, None])
    assert empty.indptr.tolist() == [0, 0, 0] and len(empty.tokens) == len(empty.vocab) == 0
    assert tokenize([]).n_docs == 0


def test_encode_tags_as_given(monkeypatch):
    monkeypatch.setattr(tokenize_module, "CHUNK_ROWS", 2)
    tags = [["Dog", "dog", ""], None, [], ["a b", "Zürich", "dog"], ["Dog", None], ["(x)"]]
    arr = pa.array(tags, pa.list_(pa.string()))
    for data in (arr, pa.chunked_array([arr.slice(0, 3), arr.slice(3)])):
        assert _docs(encode_tags(data)) == [
            ["Dog", "dog"],
            [],
            [],
            ["a b", "Zürich", "dog"],
            ["Dog"],
            ["(x)"],
        ]
    assert _docs(encode_tags(arr.slice(3, 2))) == [["a b", "Zürich", "dog"], ["Dog"]]


def test_mass_is_the_bincount_of_bm25_shares():
    corpus = tokenize(CAPTIONS * 5 + TRICKY)
    score, _, _ = bm25_terms(corpus)
    doc = np.repeat(np.arange(corpus.n_docs), np.diff(corpus.indptr))
    total = np.bincount(doc, weights=score, minlength=corpus.n_docs)
    share = np.divide(score, total[doc], out=np.zeros_like(score), where=total[doc] > 0)
    res = sampling_weights(corpus)
    # summed in token order, as np.bincount does: equal to the last bit
    assert np.array_equal(res["mass"], np.bincount(corpus.tokens, weights=share))
    rate = res["rate"]
    weight = np.bincount(doc, weights=share * rate[corpus.tokens], minlength=corpus.n_docs)
    has = total > 0
    assert res["weight"][has] == pytest.approx(weight[has], rel=1e-12)
    assert (res["weight"][~has] == 1.0).all()
