"""knowledge_graph.tags: rule-based caption tags, tag normalisation, tags-column parsing and the
per-table helper, on hand-checked COCO-style captions and on the real COCO captions."""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections import Counter

import pyarrow as pa
import pytest

from knowledge_graph.tags import (
    ATTRIBUTES,
    FUNCTION_WORDS,
    VERBS,
    TagRules,
    extract_tags,
    normalise_tag,
    parse_tags_column,
    singularise,
    tags_for_table,
)
from tests.conftest import SHARED_DATA

COCO_CAPTIONS = SHARED_DATA / "coco-mini" / "captions_val2017.json"

# Realistic COCO-style captions and their tags, each checked by hand.
CAPTIONS = [
    ("A man riding a wave on top of a surfboard.", ["man", "wave", "surfboard"]),
    ("Two dogs playing with a frisbee in the park", ["dog", "frisbee", "park"]),
    ("A plate of food with broccoli and carrots", ["plate", "food", "broccoli", "carrot"]),
    ("A red double decker bus driving down a city street", ["double decker bus", "city street"]),
    ("People standing in front of a large clock tower", ["person", "clock tower"]),
    ("A big red double-decker bus", ["double decker bus"]),
    ("A cat is sleeping on a laptop keyboard.", ["cat", "laptop keyboard"]),
    ("A woman holding an umbrella while walking in the rain.", ["woman", "umbrella", "rain"]),
    ("A group of giraffes standing next to each other in a field.", ["giraffe", "field"]),
    ("Two children flying kites on a sunny beach", ["child", "kite", "beach"]),
    ("A bathroom with a toilet, sink and mirror.", ["bathroom", "toilet", "sink", "mirror"]),
    ("A person on skis going down a snow covered slope.", ["person", "ski", "snow", "slope"]),
    ("A baseball player swinging a bat at a ball.", ["baseball player", "bat", "ball"]),
    ("A man's hand holding a slice of pizza.", ["man", "hand", "pizza"]),
    (
        "A close up of a sandwich on a plate next to a cup of coffee",
        ["sandwich", "plate", "cup", "coffee"],
    ),
    ("A stop sign at the corner of an intersection.", ["stop sign", "intersection"]),
    ("Zebras grazing in the tall grass", ["zebra", "grass"]),
    ("A parked car next to a parking meter on a busy street", ["car", "parking meter", "street"]),
    ("A little girl brushing her teeth in front of a mirror.", ["girl", "tooth", "mirror"]),
    ("Three sheep standing in a field of green grass", ["sheep", "field", "grass"]),
    ("A herd of elephants walking across a dirt road.", ["elephant", "dirt road"]),
    (
        "A living room with a couch, a coffee table and a TV.",
        ["living room", "couch", "coffee table", "tv"],
    ),
    (
        "A tennis player hitting the ball with a racket on a clay court.",
        ["tennis player", "ball", "racket", "clay court"],
    ),
    ("Several boats are docked at the pier near the shore.", ["boat", "pier", "shore"]),
    (
        "A teddy bear sitting on a shelf with books and knives.",
        ["teddy bear", "shelf", "book", "knife"],
    ),
    ("A man wearing glasses and a hat reads the news.", ["man", "glasses", "hat", "news"]),
    ("A white plate topped with a hot dog and french fries.", ["plate", "hot dog", "french fries"]),
    ("A cat sitting next to a sliding glass door", ["cat", "sliding glass door"]),
    ("Zebras socialize on some rocks", ["zebra", "rock"]),
    ("There are people standing next to a body of water.", ["person", "water"]),
    ("A dog and a dog", ["dog"]),
    ("The laptop has an mp3 player next to it.", ["laptop", "mp3 player"]),
]


@pytest.mark.parametrize(("caption", "expected"), CAPTIONS)
def test_extract_tags_examples(caption, expected):
    assert extract_tags(caption) == expected


def test_extract_tags_max_words_and_empty():
    caption = "A red double decker bus driving down a city street"
    assert extract_tags(caption, max_words=1) == ["bus", "street"]
    assert extract_tags(caption, max_words=2) == ["decker bus", "city street"]
    assert extract_tags("A large clock tower", max_words=5) == ["clock tower"]
    assert extract_tags("") == extract_tags(None) == []
    assert extract_tags("the and of, 12 34 !!") == []
    assert extract_tags("red and white") == []  # attributes alone are no tag
    with pytest.raises(ValueError, match="max_words must be >= 1, got 0"):
        extract_tags("a dog", max_words=0)


def test_extract_tags_unicode():
    # Full-width letters (NFKC), a non-breaking space, curly possessive, accented word.
    assert extract_tags("Ｔｗｏ ＤＯＧＳ\u00a0beside a café’s terrace") == [
        "dog",
        "café",
        "terrace",
    ]


def test_rules_are_extendable():
    caption = "A kitchen with stainless steel appliances"
    assert extract_tags(caption) == ["kitchen", "stainless steel appliance"]
    rules = TagRules(attributes=ATTRIBUTES | {"stainless"})
    assert extract_tags(caption, rules=rules) == ["kitchen", "steel appliance"]
    # an unlisted gerund opening a phrase modifies the next word
    rules = TagRules(verbs=VERBS - {"holding"})
    assert extract_tags("a man is holding umbrellas", rules=rules) == ["man", "holding umbrella"]
    assert extract_tags("a man is holding umbrellas") == ["man", "umbrella"]


@pytest.mark.parametrize(
    ("plural", "singular"),
    [
        ("dogs", "dog"), ("boxes", "box"), ("berries", "berry"), ("leaves", "leaf"),
        ("knives", "knife"), ("people", "person"), ("children", "child"), ("men", "man"),
        ("women", "woman"), ("mice", "mouse"), ("feet", "foot"), ("teeth", "tooth"),
        ("geese", "goose"), ("benches", "bench"), ("dishes", "dish"), ("dresses", "dress"),
        ("buses", "bus"), ("skis", "ski"), ("taxis", "taxi"), ("tomatoes", "tomato"),
        ("shoes", "shoe"), ("houses", "house"), ("cookies", "cookie"), ("pies", "pie"),
        ("firemen", "fireman"), ("wolves", "wolf"), ("gloves", "glove"), ("waves", "wave"),
        # left alone: -ss / -us / -is, the invariant list, already singular
        ("glass", "glass"), ("bus", "bus"), ("grass", "grass"), ("cactus", "cactus"),
        ("tennis", "tennis"), ("species", "species"), ("series", "series"), ("news", "news"),
        ("glasses", "glasses"), ("scissors", "scissors"), ("fries", "fries"),
        ("sheep", "sheep"), ("ramen", "ramen"), ("gas", "gas"), ("dog", "dog"),
    ],
)  # fmt: skip
def test_singularise(plural, singular):
    assert singularise(plural) == singular
    assert singularise(singular) == singular


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Dogs", "dog"),
        ("  The Red   Buses! ", "red bus"),
        ("Double-Decker Buses", "double decker bus"),
        ("hot_dogs", "hot dog"),
        ('"Teddy bears"', "teddy bear"),
        ("ＤＯＧＳ", "dog"),
        ("Café Tables", "café table"),
        ("an apple", "apple"),
        ("Mouse (computing)", "mouse (computing)"),
        ("mp3 players", "mp3 player"),
        ("1950s", "1950s"),
        ("", None),
        ("   ", None),
        ("...", None),
        ("the", None),
        ("of the", None),
        ("42", None),
        ("1,000", None),
        ("two", None),
        ("a 42", None),
    ],
)
def test_normalise_tag(raw, expected):
    assert normalise_tag(raw) == expected


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        (["Dogs", "dog", "  ", None, 3, "Cats"], ["dog", "cat"]),
        (("Red Cars", "the"), ["red car"]),
        ("dogs, cats; bus|the", ["dog", "cat", "bus"]),
        ("dog", ["dog"]),
        ('["dogs", "red cars", 7, "Dogs"]', ["dog", "red car"]),
        ('  ["a dog, a cat"] ', ["dog, a cat"]),  # a JSON list item is one tag
        ("[dogs, cats]", ["dog", "cat"]),  # brackets but not JSON: split as text
        ("[]", []),
        ("", []),
        (None, []),
        (pa.scalar(["Bears"]), ["bear"]),
        (pa.scalar(None, pa.list_(pa.string())), []),
        (17, []),
    ],
)
def test_parse_tags_column(cell, expected):
    assert parse_tags_column(cell) == expected


def test_tags_for_table():
    captions = ["Two dogs in a park", None, "A red bus", "", "a cat on a mat"]
    tags = [["Dogs"], ["cats"], [], None, ["the", "42"]]
    table = pa.table({"caption": captions, "tags": tags})
    out = tags_for_table(table)
    assert out.type == pa.list_(pa.string())
    assert out.null_count == 0
    # tags when the cell yields any, else the caption's, else []
    assert out.to_pylist() == [["dog"], ["cat"], ["bus"], [], ["cat", "mat"]]
    from_captions = [["dog", "park"], [], ["bus"], [], ["cat", "mat"]]
    assert tags_for_table(table.drop(["tags"])).to_pylist() == from_captions
    assert tags_for_table(table, tags_column=None).to_pylist() == from_captions
    assert tags_for_table(table, max_words=1).to_pylist()[2] == ["bus"]


def test_tags_for_table_string_tags_and_names():
    table = pa.table(
        {
            "text": pa.array(["a dog", "a horse"], pa.large_string()),
            "labels": pa.array(["cats|dogs", None]),
        }
    )
    out = tags_for_table(table, tags_column="labels", caption_column="text")
    assert out.to_pylist() == [["cat", "dog"], ["horse"]]
    only_tags = tags_for_table(table.drop(["text"]), tags_column="labels", caption_column="text")
    assert only_tags.to_pylist() == [["cat", "dog"], []]
    empty = pa.table({"caption": pa.array([], pa.string())})
    assert tags_for_table(empty).to_pylist() == []


def test_tags_for_table_errors():
    with pytest.raises(KeyError, match="neither tags column 'tags' nor caption column"):
        tags_for_table(pa.table({"x": [1]}))
    with pytest.raises(TypeError, match="column 'caption' must be string, got int64"):
        tags_for_table(pa.table({"caption": [1]}))
    with pytest.raises(TypeError, match="column 'tags' must be string or list<string>"):
        tags_for_table(pa.table({"caption": ["a dog"], "tags": [1.5]}))


def _caption_words(caption: str) -> set[str]:
    words = re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", caption).lower())
    return set(words) | {singularise(w) for w in words}


def _random_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = [
        *sorted(FUNCTION_WORDS | VERBS | ATTRIBUTES)[::7],
        "dog", "dogs", "bus", "buses", "people", "men", "top", "front", "group", "of", "of",
        "parking", "meter", "living", "room", "playing", "parked", "covered", "glasses", "hot",
        "leaves", "knives", "sheep", "zebras", "socialize", "mp3", "3d", "café", "newly",
        "double-decker", "t-shirt", "man's", "a", "the", "and", "1950s", "x",
    ]  # fmt: skip
    punct = [",", ".", "!", ";", " - ", "'", "(", ")", ":", "\u00a0", "  "]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 20)):
            word = rng.choice(vocab)
            parts.append(word.upper() if rng.random() < 0.05 else word)
            if rng.random() < 0.15:
                parts.append(rng.choice(punct))
        out.append(" ".join(parts))
    return out


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def test_property_tags_come_from_the_caption():
    captions = _random_captions(3000) + [c for c, _ in CAPTIONS]
    n_tags = 0
    for caption in captions:
        tags = extract_tags(caption)
        n_tags += len(tags)
        allowed = _caption_words(caption)
        assert len(tags) == len(set(tags)), caption
        for tag in tags:
            words = tag.split()
            assert 1 <= len(words) <= 3, (caption, tag)
            assert set(words) <= allowed, (caption, tag)
            assert not set(words) & (FUNCTION_WORDS | VERBS), (caption, tag)
            assert normalise_tag(tag) == tag, (caption, tag)  # already normal
        heads = extract_tags(caption, max_words=1)
        assert heads == _dedupe([t.split()[-1] for t in tags]), caption
    assert n_tags > 3000  # the generator does produce tags


def _coco_captions() -> list[str]:
    if not COCO_CAPTIONS.is_file():
        pytest.skip(
            f"COCO captions not found at {COCO_CAPTIONS} (set ZFOUNDRY_SHARED_DATA to the "
            "folder holding coco-mini/)"
        )
    return [a["caption"] for a in json.loads(COCO_CAPTIONS.read_text())["annotations"]]


def test_coco_captions_coverage_and_top_tags():
    captions = _coco_captions()
    assert len(captions) > 100
    tags = [extract_tags(c) for c in captions]
    assert sum(bool(t) for t in tags) >= 0.95 * len(captions)
    counts = Counter(tag for row in tags for tag in row)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert {tag for tag, _ in top} == {
        "man", "person", "table", "laptop", "kitchen",
        "food", "refrigerator", "bed", "woman", "broccoli",
    }  # fmt: skip
    # the same through the table helper, with no tags column
    table = pa.table({"caption": captions})
    assert tags_for_table(table).to_pylist() == tags
