"""Text encoders: the bundled MiniLM and an open_clip text tower, both offline."""

from __future__ import annotations

import numpy as np
import pytest

from knowledge_graph.encoders import EncoderConfig, load_encoder


def test_minilm_puts_synonyms_nearer_than_unrelated_words():
    enc = load_encoder()
    assert enc.dim == 384
    words = ["dog", "puppy", "airplane", "aircraft", "justice"]
    v = enc.encode(words)
    assert v.shape == (5, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    s = v @ v.T
    assert s[0, 1] > s[0, 2] + 0.2 and s[2, 3] > s[2, 4] + 0.2
    # batching sorts by length: the rows still come back in input order
    again = enc.encode(list(reversed(words)))
    np.testing.assert_allclose(again[::-1], v, atol=1e-5)


def test_clip_text_tower_encodes_in_input_order():
    enc = load_encoder(EncoderConfig(kind="clip", batch_size=2))
    v = enc.encode(["a", "a red car", "b"])
    assert v.shape == (3, enc.dim)
    np.testing.assert_allclose(v[0], enc.encode(["a"])[0], atol=1e-5)


def test_bad_encoder_settings_and_inputs_fail_with_the_field_named():
    with pytest.raises(ValueError, match="kind"):
        EncoderConfig(kind="word2vec")
    with pytest.raises(ValueError, match="pretrained"):
        EncoderConfig(kind="minilm", pretrained="openai")
    with pytest.raises(ValueError, match="texts: 1 entries"):
        load_encoder().encode(["ok", " "])
