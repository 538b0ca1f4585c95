"""Sample tags: a tags column parsed, or noun phrases pulled from the caption by rules.

The knowledge-graph weights map each sample's tags to concepts. A pool's tags column is used
when it has one; otherwise tags come from the caption through a small rule-based extractor
(English, pure Python, no model; ~85,000 fifteen-token captions/s on one core).

**Normalising a tag** (`normalise_tag`): Unicode NFKC, lower case, hyphens and underscores
become spaces (``double-decker`` = ``double decker``, as Wikipedia titles run through the
same function), punctuation is stripped at both ends (a balanced closing bracket is kept),
whitespace runs collapse, leading articles (a, an, the) are dropped and the last (head) word
is singularised. A tag whose words are all function words (`FUNCTION_WORDS`, number words
included) or have no letter ("42", "1,000") is dropped: None. Attributes are kept: a tags
column is trusted ("red car" stays).

**Singularising** (`singularise`; the head word only), first rule that applies:

1. `IRREGULAR_PLURALS` (people -> person, men -> man, mice, feet, teeth, geese, leaves,
   knives, shelves, tomatoes, cookies, buses, skis, taxis, ...);
2. `INVARIANT` words stay (species, series, news, glasses, scissors, pants, fries, lens,
   goods, ...). *glasses* stays: in captions it is mostly eyewear ("a man wearing glasses"),
   so "wine glasses" stays too;
3. ``-men`` -> ``-man`` (firemen, policemen; ramen/specimen/omen are in `INVARIANT`);
4. words not ending in ``s``, of three letters or fewer, or ending in ``ss``, ``us`` or ``is``
   stay (glass, bus, grass, cactus, tennis, iris; the -i plurals skis/taxis are rule 1);
5. ``-ies`` -> ``-y`` (berries -> berry; pies/ties, four letters, only drop the ``s``);
6. ``-sses``, ``-shes``, ``-ches``, ``-xes``, ``-zzes`` drop ``es`` (boxes, dishes, benches);
7. otherwise drop the ``s`` (dogs, houses, horses, shoes, gloves, waves).

**Extracting tags** (`extract_tags`): the caption is NFKC-normalised, lower-cased and split
into words (a letter, then letters or digits: "mp3"). Hyphens and underscores join like
spaces; numbers and every other character are breaks, so a comma or a possessive ``'s`` ends
a phrase. Each word is

- a *break* if it is in `FUNCTION_WORDS` (determiners, pronouns, prepositions, conjunctions,
  auxiliaries, adverbs, number and quantity words), `VERBS` (frequent caption verbs in the
  forms that are rarely nouns: sitting, holds, rode, ...) or `GENERIC_NOUNS` (background,
  thing, ...), or is a single letter;
- *skipped* (dropped, the phrase goes on) if it is in `ATTRIBUTES` (colours, sizes, common
  evaluative adjectives, irregular participles: "a big red bus" -> "bus"; *orange*, *gold*,
  *cream* and *light* are not attributes, being nouns as often) or ends in ``-ly``, ``-ous``
  or ``-ful`` (five letters or more: "newly", "delicious", "colorful");
- a *participle* if it ends in ``-ed`` (four letters or more, not ``-eed``, not a ``-bed``
  noun such as flatbed): skipped when it opens a phrase ("a parked car" -> car), a break
  after a word ("snow covered slope" -> snow, slope);
- a *gerund* if it ends in ``-ing`` (six letters or more; ``-ings`` plurals are nouns): it
  modifies the next word when it opens a phrase ("parking meter", "living room", "sliding
  glass door") and is a break anywhere else ("dog playing", "man juggling balls");
- a content word otherwise. `SUFFIX_NOUNS` and `ING_NOUNS` list the nouns the suffix rules
  would misread (shed, family, butterfly, handful; building, ceiling, wedding, ...).

Maximal runs of content words are the candidate phrases. A run whose head (singularised) is
in `PARTITIVES` and that is followed by *of* is dropped, so "on top of", "in front of",
"a group of", "pieces of", "a picture of" act as prepositions or determiners ("people in
front of a clock tower" -> person, clock tower). Inside a phrase, a plural word before the
last one is taken as a plural subject followed by a bare verb and ends the phrase ("zebras
socialize" -> zebra, "people wait" -> person; `PLURAL_MODIFIERS` such as *sports* are
exempt). Each phrase keeps its last `max_words` words ("a big red double decker bus" ->
"double decker bus"), its head is singularised, and phrases come in caption order without
duplicates. The head alone is not emitted as well (it would count a concept twice in the
BM25 shares): ``max_words=1`` gives heads only, and a tag's head is always its last word.

Known limits: no part-of-speech model, so a singular subject with an unlisted verb in
``-s`` reads as a compound ("a man pokes" -> "man poke"); noun/verb homographs follow the
lists (``stand``/``park``/``watch``); English only.

The word lists are module-level frozensets; extend them by building a `TagRules` with larger
sets (``TagRules(attributes=ATTRIBUTES | {"teal"})``) and passing ``rules=``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import pyarrow as pa


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


DETERMINERS = _words(
    "a an the this that these those some any no every each all both either neither another "
    "other others such same own certain"
)
PRONOUNS = _words(
    "i me my mine myself you your yours he him his himself she her hers herself it its itself "
    "we us our ours they them their theirs themselves who whom whose which what whatever "
    "someone somebody something anyone anybody anything everyone everybody everything nobody "
    "nothing none one ones"
)
PREPOSITIONS = _words(
    "of in on at to for from with without by about above below under underneath beneath "
    "over into onto upon off out up down near nearby next beside besides between among amongst "
    "around along alongside across through throughout toward towards against during after "
    "before behind beyond inside outside within atop amid past via per like unlike than "
    "except including despite"
)
CONJUNCTIONS = _words(
    "and or but nor yet so while whilst as because if then though although whereas when where "
    "why how plus whether until unless"
)
AUXILIARIES = _words(
    "is are was were be been being am has have had having do does did doing done can could "
    "will would shall should may might must ca wo isn aren wasn weren don doesn didn won "
    "t s d ll re ve m"
)
ADVERBS = _words(
    "very really quite rather too so just only also even still almost nearly partially mostly "
    "fully completely slightly somewhat here there now then together away apart ahead close "
    "closely far alone ever never always often sometimes already not well much many more most "
    "less least lots plenty enough outdoors indoors upstairs downstairs overhead sideways "
    "upside somewhere anywhere everywhere mid midair right left straight directly currently "
    "possibly probably perhaps maybe apparently today tonight yesterday"
)
NUMBER_WORDS = _words(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy "
    "eighty ninety hundred hundreds thousand thousands million millions dozen dozens half "
    "first second third fourth fifth sixth last several few multiple numerous various couple"
)
FUNCTION_WORDS = (
    DETERMINERS | PRONOUNS | PREPOSITIONS | CONJUNCTIONS | AUXILIARIES | ADVERBS | NUMBER_WORDS
)
"""Closed-class words: never part of a tag, and a tag made only of these is dropped."""

VERBS = _words(
    "sit sits sitting sat seated stand stands standing stood hold holds holding held ride "
    "rides riding rode ridden play plays playing played walk walks walking walked look looks "
    "looking looked eat eats eating ate eaten lay lays laying laid lie lies lying rests "
    "resting wait waits watch watches watching wear wears wearing wore worn carry carries "
    "carrying carried talk talks talking use uses using used take takes taking took taken "
    "make makes making made get gets getting got gotten go goes going went gone come comes "
    "coming came runs ran jumps jumping jumped throws throwing threw thrown catches catching "
    "caught hit hits hitting swings swinging prepare prepares preparing cut cuts split "
    "splits splitting set sets surfs surfing skiing skateboarding snowboarding kiteboarding "
    "windsurfing graze grazes grazing pulls pulling pushes pushing lean leans leaning poses "
    "posing smiling drives driving drove travels traveling travelling heads heading moves "
    "moving fly flies flying flew see sees seeing saw seen shows showing shown displaying "
    "contain contains containing features featuring reach reaches reaching try tries trying "
    "tried appear appears appearing seem seems seeming keep keeps keeping kept let lets "
    "letting put puts putting give gives giving gave given stare stares staring gaze gazes "
    "gazing hang hangs hanging hung perform performs performing serve serves feed feeds "
    "feeding petting brushing enjoy enjoys enjoying swim swims swam float floats floating "
    "fills sleep sleeps slept chase chases chasing cross crosses crossing climb climbs fix "
    "fixes fixing works working read reads hug hugs hugging kiss kisses kissing cooks bites "
    "biting lick licks licking tying washes follow follows following say says saying need "
    "needs needing gather gathers gathering approach approaches approaching wander wanders "
    "wandering"
)
"""Frequent caption verbs: always a break. Forms that are mostly nouns in captions are left
out (stand, drinks, skis, waves, stop, park, work, show, rest, pet, brush, dress, tie, smile),
and so are gerunds that often modify a noun (cutting board, swimming pool, reading glasses,
serving tray): the gerund rule handles those by position."""

GENERIC_NOUNS = _words("background foreground distance way thing things stuff kind sort type bit")
"""Nouns too vague to be a concept: a break, like a function word."""

ATTRIBUTES = _words(
    # colours (orange, gold, cream, olive, lime are nouns as often: not attributes)
    "red blue green yellow white black brown gray grey pink purple violet beige tan maroon "
    "teal turquoise navy silver golden colorful colourful multicolored multicoloured multi "
    "bright dark pale blond blonde plaid "
    # sizes
    "big small large little tiny huge giant enormous massive tall short long wide narrow "
    "thin thick fat skinny medium oversized miniature gigantic extra "
    # common evaluative / state adjectives
    "old young new older younger elderly different assorted beautiful pretty nice cute "
    "adorable lovely empty full clean dirty messy wooden fresh delicious tasty healthy busy "
    "sunny cloudy rainy snowy grassy sandy rocky dry wet cold warm modern vintage antique "
    "fancy plain simple whole entire single lone unusual strange funny happy sad male female "
    "raw ripe shiny clear lush nearby high low ready open idle dull blank shallow foggy "
    "desolate captive classic retro outdoor indoor comfortable cozy cosy brand unmade "
    # irregular past participles (regular ones are caught by the -ed rule)
    "lit torn strewn fallen broken frozen hidden sunken grown overgrown shaven stolen"
)
"""Attributes are dropped from phrases ("a big red bus" -> "bus") and never a tag alone."""

PARTITIVES = _words(
    "top bottom front back side middle center centre end edge corner inside outside part "
    "rest half group bunch couple pair lot number variety assortment selection collection "
    "kind sort type piece slice bite handful spoonful mouthful body view picture photo "
    "photograph image shot closeup display row line pile stack herd flock crowd"
)
"""Dropped when followed by *of* (singular forms; plurals match too): "on top of", "a group
of", "pieces of", "a picture of", "a body of water"."""

ING_NOUNS = _words(
    "building ceiling clothing string spring evening morning wedding pudding icing frosting "
    "topping painting drawing railing awning stuffing dressing filling siding landing "
    "lightning sibling earring herring duckling dumpling seedling sapling setting meeting "
    "offering bedding seating flooring lighting housing shelving tubing piping roofing "
    "stocking darling viking ending beginning sterling outing"
)
"""Words in -ing that are nouns: never treated as verbs."""

SUFFIX_NOUNS = _words(
    "shed sled hundred watershed woodshed toolshed cowshed bloodshed kindred "
    "family belly jelly assembly butterfly firefly dragonfly housefly italy sicily rally "
    "bully gully tally doily holly monopoly supply reply anomaly grizzly trolly dolly "
    "handful spoonful mouthful cupful armful bowlful plateful"
)
"""Nouns the participle / adverb / adjective suffix rules (-ed, -ly, -ful) would skip."""

PLURAL_MODIFIERS = _words("sports arts sales savings customs")
"""Plural words that modify a following noun ("sports car"); see the plural-subject rule."""

IRREGULAR_PLURALS: Mapping[str, str] = {
    "people": "person", "persons": "person", "children": "child", "men": "man",
    "women": "woman", "mice": "mouse", "lice": "louse", "feet": "foot", "teeth": "tooth",
    "geese": "goose", "oxen": "ox", "cacti": "cactus", "fungi": "fungus",
    "leaves": "leaf", "knives": "knife", "wives": "wife", "lives": "life", "wolves": "wolf",
    "shelves": "shelf", "halves": "half", "calves": "calf", "loaves": "loaf",
    "scarves": "scarf", "hooves": "hoof", "thieves": "thief", "elves": "elf",
    "tomatoes": "tomato", "potatoes": "potato", "heroes": "hero", "mangoes": "mango",
    "volcanoes": "volcano", "echoes": "echo", "torpedoes": "torpedo", "dominoes": "domino",
    "mosquitoes": "mosquito", "buffaloes": "buffalo", "tornadoes": "tornado",
    "cookies": "cookie", "movies": "movie", "brownies": "brownie", "selfies": "selfie",
    "calories": "calorie", "hoodies": "hoodie", "goalies": "goalie", "rookies": "rookie",
    "veggies": "veggie", "smoothies": "smoothie", "zombies": "zombie", "prairies": "prairie",
    "collies": "collie", "birdies": "birdie", "beanies": "beanie", "onesies": "onesie",
    "mustaches": "mustache", "moustaches": "moustache", "niches": "niche",
    "quiches": "quiche", "caches": "cache", "headaches": "headache",
    "avalanches": "avalanche", "buses": "bus", "busses": "bus", "gases": "gas",
    "lenses": "lens", "canvases": "canvas", "atlases": "atlas", "viruses": "virus",
    "circuses": "circus", "campuses": "campus", "cactuses": "cactus", "octopuses": "octopus",
    "bonuses": "bonus", "walruses": "walrus", "irises": "iris", "platypuses": "platypus",
    "hippopotamuses": "hippopotamus", "skis": "ski", "taxis": "taxi", "kiwis": "kiwi",
    "bikinis": "bikini", "martinis": "martini", "zucchinis": "zucchini",
    "safaris": "safari", "salamis": "salami", "paninis": "panini", "chilis": "chili",
    "khakis": "khaki", "menus": "menu", "emus": "emu", "gnus": "gnu", "tutus": "tutu",
    "gurus": "guru", "bayous": "bayou", "plateaus": "plateau", "bureaus": "bureau",
}  # fmt: skip
"""Plurals the suffix rules get wrong, with their singular."""

INVARIANT = _words(
    "species series news glasses sunglasses eyeglasses scissors pants trousers jeans shorts "
    "clothes pajamas pyjamas leggings tights overalls goggles binoculars tongs pliers "
    "headphones earphones stairs fries sheep deer fish aircraft lens canvas atlas bias "
    "christmas gas pancreas mathematics physics athletics gymnastics politics economics "
    "electronics ramen omen specimen abdomen regimen stamen semen amen hymen yemen lumen "
    "acumen bitumen albumen goods texas kansas arkansas dallas vegas las alias tapas chaos "
    "thermos headquarters barracks crossroads gallows diabetes rabies"
)
"""Words left as they are by the singulariser."""


@dataclass(frozen=True, kw_only=True, eq=False)
class TagRules:
    """The word lists the extractor and normaliser use; defaults are the module's sets."""

    function_words: frozenset[str] = FUNCTION_WORDS
    verbs: frozenset[str] = VERBS
    generic_nouns: frozenset[str] = GENERIC_NOUNS
    attributes: frozenset[str] = ATTRIBUTES
    partitives: frozenset[str] = PARTITIVES
    ing_nouns: frozenset[str] = ING_NOUNS
    suffix_nouns: frozenset[str] = SUFFIX_NOUNS
    plural_modifiers: frozenset[str] = PLURAL_MODIFIERS
    irregular_plurals: Mapping[str, str] = field(default_factory=lambda: IRREGULAR_PLURALS)
    invariant: frozenset[str] = INVARIANT
    _breaks: frozenset[str] = field(init=False, repr=False)
    _classes: dict[str, int] = field(init=False, repr=False)
    _singular: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_breaks", self.function_words | self.verbs | self.generic_nouns)
        object.__setattr__(self, "_classes", {})
        object.__setattr__(self, "_singular", {})

    def word_class(self, word: str) -> int:
        """`CONTENT`, `BREAK`, `SKIP`, `GERUND` or `PARTICIPLE` of one lower-case word (cached)."""
        c = self._classes.get(word)
        if c is None:
            c = self._classify(word)
            if len(self._classes) >= _CACHE_SIZE:
                self._classes.clear()
            self._classes[word] = c
        return c

    def _classify(self, w: str) -> int:
        if len(w) < 2 or w in self._breaks:
            return BREAK
        if w in self.attributes:
            return SKIP
        if w in self.suffix_nouns:
            return CONTENT
        if w.endswith("ed") and len(w) >= 4:
            if w.endswith("eed") or (w.endswith("bed") and w[-4] not in "bm"):
                return CONTENT
            return PARTICIPLE
        if len(w) >= 5 and w.endswith(("ly", "ous", "ful")):
            return SKIP
        if w.endswith("ing") and len(w) >= 6 and w not in self.ing_nouns:
            return GERUND
        return CONTENT

    def singularise(self, word: str) -> str:
        """The singular of one lower-case word by the rules in the module docstring."""
        s = self._singular.get(word)
        if s is None:
            s = self._singularise(word)
            if len(self._singular) >= _CACHE_SIZE:
                self._singular.clear()
            self._singular[word] = s
        return s

    def _singularise(self, w: str) -> str:
        irregular = self.irregular_plurals.get(w)
        if irregular is not None:
            return irregular
        if w in self.invariant or not w.isalpha():
            return w
        if w.endswith("men") and len(w) > 4:
            return w[:-3] + "man"
        if len(w) <= 3 or not w.endswith("s") or w.endswith(("ss", "us", "is")):
            return w
        if w.endswith("ies") and len(w) > 4:
            return w[:-3] + "y"
        if w.endswith(("sses", "shes", "ches", "xes", "zzes")):
            return w[:-2]
        return w[:-1]


CONTENT, BREAK, SKIP, GERUND, PARTICIPLE = 0, 1, 2, 3, 4
_CACHE_SIZE = 1 << 20
DEFAULT_RULES = TagRules()

# A word starts with a letter (then letters or digits: "mp3"); digit-initial runs and runs of
# other characters except - and _ (which join like spaces) are breaks.
_TOKEN_RE = re.compile(r"[^\W\d_][^\W_]*|\d[^\W_]*|[^\w\s-]+")
_SPACE_RE = re.compile(r"[\s_-]+")
_ARTICLES = frozenset(("a", "an", "the"))


def singularise(word: str, *, rules: TagRules = DEFAULT_RULES) -> str:
    """The singular of one lower-case word (see the module docstring for the rules)."""
    return rules.singularise(word)


@lru_cache(maxsize=1 << 16)
def _normalise_default(text: str) -> str | None:
    return _normalise(text, DEFAULT_RULES)


def normalise_tag(text: str, *, rules: TagRules = DEFAULT_RULES) -> str | None:
    """NFKC, lower case, hyphens as spaces, end punctuation stripped, whitespace collapsed,
    leading article dropped, head word singularised; None for an empty, function-word-only or
    numeric-only tag."""
    if rules is DEFAULT_RULES:
        return _normalise_default(text)
    return _normalise(text, rules)


def _normalise(text: str, rules: TagRules) -> str | None:
    raw = _SPACE_RE.sub(" ", unicodedata.normalize("NFKC", text).lower())
    text = raw.strip(_END_STRIP)
    if not text:
        return None
    end = len(raw) - len(raw.lstrip(_END_STRIP)) + len(text)
    closing = raw[end : end + 1]
    if closing in _CLOSERS and _CLOSERS[closing] in text:  # keep a balanced "(...)"
        text += closing
    words = text.split()
    while words and words[0] in _ARTICLES:
        words = words[1:]
    if all(w in rules.function_words or not _LETTER_RE.search(w) for w in words):
        return None
    words[-1] = rules.singularise(words[-1])
    return " ".join(words)


# Every non-alphanumeric ASCII character, space included, plus common Unicode quotes and dashes.
_END_STRIP = "".join(chr(i) for i in range(32, 127) if not chr(i).isalnum()) + "‘’“”«»…–—·"
_CLOSERS = {")": "(", "]": "[", "}": "{"}
_LETTER_RE = re.compile(r"[^\W\d_]")


def extract_tags(
    caption: str | None, *, max_words: int = 3, rules: TagRules = DEFAULT_RULES
) -> list[str]:
    """Noun-phrase tags of a caption, in order, deduplicated (module docstring: the rules)."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words!r}")
    if not caption:
        return []
    if not caption.isascii():
        caption = unicodedata.normalize("NFKC", caption)
    tags: list[str] = []
    run: list[str] = []
    gerund = False
    classes = rules._classes
    for tok in _TOKEN_RE.findall(caption.lower()):
        c = classes.get(tok)
        if c is None:
            c = rules.word_class(tok) if tok[0].isalpha() else BREAK
        if c == CONTENT:
            run.append(tok)
        elif c == BREAK:
            if run:
                _flush(run, gerund, tok, tags, max_words, rules)
                run, gerund = [], False
        elif c == GERUND:
            run.append(tok)
            gerund = True
        elif c == PARTICIPLE and run:  # skipped when it opens a phrase: "a parked car"
            _flush(run, gerund, tok, tags, max_words, rules)
            run, gerund = [], False
    if run:
        _flush(run, gerund, "", tags, max_words, rules)
    return tags


def _flush(
    run: list[str], gerund: bool, after: str, tags: list[str], max_words: int, rules: TagRules
) -> None:
    """Add the phrases of one run of content words and gerunds to ``tags``."""
    if after == "of" and rules.singularise(run[-1]) in rules.partitives:
        return
    start = 0
    if gerund:  # a gerund modifies the next word only when it opens a phrase
        last = len(run) - 1
        for i, w in enumerate(run):
            if rules.word_class(w) == GERUND and (i != start or i == last):
                _add(run[start:i], tags, max_words, rules)
                start = i + 1
    _add(run[start:], tags, max_words, rules)


def _add(words: list[str], tags: list[str], max_words: int, rules: TagRules) -> None:
    if not words:
        return
    if len(words) > 1:  # plural subject + bare verb: "zebras socialize", "people wait"
        for i in range(len(words) - 1):
            w = words[i]
            if rules.singularise(w) != w and w not in rules.plural_modifiers:
                words = words[: i + 1]
                break
    words = words[-max_words:]
    head = rules.singularise(words[-1])
    tag = head if len(words) == 1 else " ".join(words[:-1]) + " " + head
    if tag not in tags:
        tags.append(tag)


_SPLIT_RE = re.compile(r"[,;|]")


def parse_tags_column(value: object, *, rules: TagRules = DEFAULT_RULES) -> list[str]:
    """Tags of one tags cell: a list of strings, a ``,``/``;``/``|``-separated string or JSON
    list text; each normalised (`normalise_tag`), deduplicated in order, empties dropped.
    None gives []; non-string list items are ignored; text in brackets that is not a valid
    JSON list is split as plain text. A list item is one tag (it is not split)."""
    if value is None:
        return []
    if isinstance(value, pa.Scalar):
        value = value.as_py()
        if value is None:
            return []
    items: Iterable[object]
    if isinstance(value, str):
        text = value.strip()
        items = _split_text(text)
    elif isinstance(value, Iterable):
        items = value
    else:
        return []
    out: list[str] = []
    for item in items:
        if isinstance(item, str):
            tag = normalise_tag(item, rules=rules)
            if tag is not None and tag not in out:
                out.append(tag)
    return out


def _split_text(text: str) -> list[str]:
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = json.loads(text)
        except ValueError:
            pass
        else:
            if isinstance(parsed, list):
                return [x for x in parsed if isinstance(x, str)]
        text = text[1:-1]
    return _SPLIT_RE.split(text)


def tags_for_table(
    table: pa.Table,
    *,
    tags_column: str | None = "tags",
    caption_column: str = "caption",
    max_words: int = 3,
    rules: TagRules = DEFAULT_RULES,
) -> pa.Array:
    """Per row (list<string>, never null): its tags column's tags when the column exists and
    the cell yields at least one tag, else the tags extracted from its caption, else []."""
    has_tags = tags_column is not None and tags_column in table.column_names
    has_caption = caption_column in table.column_names
    if not has_tags and not has_caption:
        raise KeyError(
            f"table has neither tags column {tags_column!r} nor caption column "
            f"{caption_column!r}; columns: {table.column_names}"
        )
    n = table.num_rows
    cells = _column_values(table, tags_column, lists=True) if has_tags else [None] * n
    captions = _column_values(table, caption_column, lists=False) if has_caption else [None] * n
    out: list[list[str]] = []
    for cell, caption in zip(cells, captions, strict=True):
        tags = parse_tags_column(cell, rules=rules) if cell is not None else []
        if not tags and caption:
            tags = extract_tags(caption, max_words=max_words, rules=rules)
        out.append(tags)
    return pa.array(out, type=pa.list_(pa.string()))


def _column_values(table: pa.Table, name: str, *, lists: bool) -> list:
    t = table.schema.field(name).type
    value = t.value_type if lists and (pa.types.is_list(t) or pa.types.is_large_list(t)) else t
    if not (pa.types.is_string(value) or pa.types.is_large_string(value) or pa.types.is_null(t)):
        kind = "string or list<string>" if lists else "string"
        raise TypeError(f"column {name!r} must be {kind}, got {t}")
    return table.column(name).to_pylist()
