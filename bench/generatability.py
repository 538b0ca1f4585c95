"""Visual-generatability judge: precision / recall of rules, head and rules+head, and speed.

    python bench/generatability.py            # 1M titles through the rules
    python bench/generatability.py --quick    # 100k titles, < 1 minute after the model loads

Reports, side by side for the judges ``rules``, ``head`` and ``rules+head``:
1. the held-out 20% of the seed list (``seed_split``, the split the shipped head never saw);
2. a sanity list of 60 clear titles written apart from the seed list (``SANITY``, 30 each);
3. real article titles of the shared Wikipedia XML fragment (ns 0, no redirects, with the
   dump's disambiguation flag): what each rule rejects, and how many of those the head alone
   would have kept (what the rules add);
4. throughput: rules over N titles, the head over N precomputed vectors, MiniLM encoding.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from knowledge_graph.encoders import load_encoder  # noqa: E402
from knowledge_graph.generatability import (  # noqa: E402
    GeneratabilityConfig,
    evaluate,
    judge_titles,
    load_head,
    load_seed_list,
    rule_reason,
)

XML = Path("/work/shared/data/wikipedia") / (
    "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
SANITY_CONCRETE = (  # noqa: SIM905
    "Golden retriever|Eiffel Tower|Violin|Sunset|Fire hydrant|Croissant|Sailboat|Lighthouse|"
    "Teapot|Snowman|Wind turbine|Red fox|Grand piano|Koi|Sandcastle|Totem pole|Rubber duck|"
    "Pocket watch|Cowboy hat|Windsurfing|Bonsai|Tiramisu|Cherry blossom|Excavator|Sushi|"
    "Hot air balloon festival|Mont Blanc|Pagoda|Lantern|Carousel"
).split("|")
SANITY_ABSTRACT = (  # noqa: SIM905
    "Inflation (economics)|Monetary policy|Epistemology|Tort|Subjunctive mood|Fiscal policy|"
    "Copyright|Opportunity cost|Sovereignty|Due process|Bayesian inference|Deontology|"
    "Cognitive dissonance|Free will|Compound interest|Jurisdiction|Federalism|Causality|Ontology|"
    "Hypothesis|Recursion|Statistical significance|Intellectual property|Human capital|"
    "Meritocracy|Bureaucracy|Irony|Metaphor|Nostalgia|Justice"
).split("|")


def table(title: str, result: dict) -> None:
    print(f"\n{title}")
    print(f"{'judge':<11} {'n':>5} {'acc':>6} | {'P(abs)':>6} {'R(abs)':>6} {'F1(abs)':>7} | "
          f"{'P(gen)':>6} {'R(gen)':>6} {'F1(gen)':>7}")  # fmt: skip
    for judge, m in result["judges"].items():
        a, g = m["abstract"], m["generatable"]
        print(
            f"{judge:<11} {m['n']:>5} {m['accuracy']:>6.3f} | {a['precision']:>6.3f} "
            f"{a['recall']:>6.3f} {a['f1']:>7.3f} | {g['precision']:>6.3f} {g['recall']:>6.3f} "
            f"{g['f1']:>7.3f}"
        )


def xml_titles() -> tuple[list[str], list[bool]]:
    from knowledge_graph.dumps.xml import XmlDump
    from knowledge_graph.wikitext import is_disambiguation

    pages = [p for p in XmlDump(XML).pages() if p.ns == 0 and p.redirect is None]
    return [p.title for p in pages], [is_disambiguation(p.text, p.title) for p in pages]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k titles for the rules timing")
    ap.add_argument("--n", type=int, default=None, help="titles for the rules / head timing")
    args = ap.parse_args()
    n = args.n or (100_000 if args.quick else 1_000_000)

    t0 = time.perf_counter()
    enc = load_encoder()
    print(f"encoder {enc.name} ({enc.dim}-d) loaded in {time.perf_counter() - t0:.1f} s")
    head = load_head(GeneratabilityConfig(), enc)
    seed = set(load_seed_list()["title"].to_pylist())
    assert not seed & set(SANITY_CONCRETE + SANITY_ABSTRACT), "sanity titles leaked into seed"

    held = evaluate(encoder=enc)
    table(f"held-out 20% of the seed list (head C={head.C})", held)
    sanity = evaluate(
        titles=SANITY_CONCRETE + SANITY_ABSTRACT,
        labels=[1] * len(SANITY_CONCRETE) + [0] * len(SANITY_ABSTRACT),
        encoder=enc,
    )
    table("sanity list (60 titles written apart from the seed list)", sanity)

    titles, flags = xml_titles() if XML.exists() else ([], [])
    if titles:
        rules = [rule_reason(t, f) for t, f in zip(titles, flags, strict=True)]
        hits = [i for i, r in enumerate(rules) if r]
        head_only = judge_titles(
            [titles[i] for i in hits], cfg=GeneratabilityConfig(judge="head"), encoder=enc
        )
        kept = head_only["generatable"].to_pylist()
        print(f"\nWikipedia XML fragment: {len(titles)} articles, rules reject {len(hits)}")
        for reason, count in sorted(Counter(r for r in rules if r).items()):
            kept_here = sum(k for i, k in zip(hits, kept, strict=True) if rules[i] == reason)
            print(f"  {reason:<22} {count:>3}   head alone would keep {kept_here}")
        print("  head alone keeps: " + ", ".join(
            titles[i] for i, k in zip(hits, kept, strict=True) if k))  # fmt: skip

    pool = load_seed_list()["title"].to_pylist() + titles
    many = [pool[i % len(pool)] for i in range(n)]
    t0 = time.perf_counter()
    n_rejected = sum(rule_reason(t) is not None for t in many)
    rules_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, enc.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t0 = time.perf_counter()
    judge_titles(many, vectors=x)
    judge_s = time.perf_counter() - t0
    sample = pool[: 2000 if args.quick else 3000]
    t0 = time.perf_counter()
    enc.encode(sample)
    enc_s = time.perf_counter() - t0
    print(f"\nthroughput ({os.cpu_count()} CPUs)")
    print(f"  rules                     {n / rules_s:>10,.0f} titles/s  ({n:,} titles, "
          f"{n_rejected:,} rejected)")  # fmt: skip
    print(f"  judge_titles with vectors {n / judge_s:>10,.0f} titles/s  (rules + head, no encoder)")
    print(f"  {enc.name} encoding  {len(sample) / enc_s:>10,.0f} titles/s  "
          f"-> 1M titles ~{1e6 / (len(sample) / enc_s) / 60:.0f} min")  # fmt: skip

    h, s = held["judges"], sanity["judges"]
    print(
        json.dumps(
            {
                "bench": "generatability",
                "n_test": h["head"]["n"],
                "rules_f1_abstract": h["rules"]["abstract"]["f1"],
                "head_f1_abstract": h["head"]["abstract"]["f1"],
                "rules_head_f1_abstract": h["rules+head"]["abstract"]["f1"],
                "rules_head_accuracy": h["rules+head"]["accuracy"],
                "sanity_accuracy": s["rules+head"]["accuracy"],
                "rules_titles_per_s": round(n / rules_s),
                "judge_with_vectors_titles_per_s": round(n / judge_s),
                "encode_titles_per_s": round(len(sample) / enc_s),
            }
        )
    )


if __name__ == "__main__":
    main()
