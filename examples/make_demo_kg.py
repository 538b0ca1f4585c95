"""Build ``examples/kg/``: the demo's small concept graph, so ``make demo`` runs the
knowledge-graph weights end to end without ``../shared``.

    python examples/make_demo_kg.py --shared ../shared/data --out examples/kg

Nodes: the articles of the real English Wikipedia dump fragment in
``shared/data/wikipedia`` (CC BY-SA), with its links and redirects, plus the 80 COCO object
categories and their 12 supercategories (``shared/data/coco-mini/instances_val2017.json``,
CC BY 4.0) linked category <-> supercategory, titled as Wikipedia would ("Dining table").
PageRank keeps every node, and the visual-generatability judge (rules + the shipped head)
drops the articles an image cannot show ("Anarchism", "Algebra", "List of ..."), so only
depictable concepts receive tags and appear as voids. ``concepts/`` is the tag taxonomy of
the bundled coco25 captions plus the COCO category names (``kg taxonomy``), with every
kept title embedded by the bundled MiniLM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from knowledge_graph.build import build_kg, write_graph
from knowledge_graph.concepts import ConceptsConfig, build_concepts
from knowledge_graph.generatability import GeneratabilityConfig
from knowledge_graph.prune import PruneConfig, prune
from knowledge_graph.tags import extract_tags
from knowledge_graph.taxonomy import TaxonomyConfig

HERE = Path(__file__).resolve().parent
FRAGMENT = "wikipedia/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def _title(name: str) -> str:
    return name[:1].upper() + name[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=HERE / "kg")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        frag = Path(tmp) / "fragment"
        build_kg([args.shared / FRAGMENT], frag)
        nodes = pq.read_table(frag / "nodes")
        edges = pq.read_table(frag / "edges")
        aliases = pq.read_table(frag / "aliases")
    titles = nodes.column("title").to_pylist()
    dis = nodes.column("is_disambiguation").to_pylist()
    src = edges.column("src").to_pylist()
    dst = edges.column("dst").to_pylist()
    position = {t: i for i, t in enumerate(titles)}

    def node(title: str) -> int:
        if title not in position:
            position[title] = len(titles)
            titles.append(title)
            dis.append(False)
        return position[title]

    coco = json.loads((args.shared / "coco-mini" / "instances_val2017.json").read_text())
    for cat in coco["categories"]:
        child, parent = node(_title(cat["name"])), node(_title(cat["supercategory"]))
        if child != parent:  # "person" is its own supercategory
            src += [child, parent]
            dst += [parent, child]
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    write_graph(
        out,
        titles,
        np.array(src),
        np.array(dst),
        is_disambiguation=dis,
        aliases=aliases,
        source="shared wikipedia fragment + COCO categories",
    )
    pruned = prune(
        out,
        PruneConfig(keep_fraction=1.0, min_in_links=0, generatability=GeneratabilityConfig()),
    )
    captions = sorted((HERE / "data" / "coco25").glob("*.txt"))
    tags = [extract_tags(p.read_text().strip()) for p in captions]
    tags.append([c["name"] for c in coco["categories"]])
    stats = build_concepts(
        out,
        pa.array(tags, pa.list_(pa.string())),
        ConceptsConfig(taxonomy=TaxonomyConfig(levels=(24, 6))),
        source="examples/data/coco25 captions + COCO category names",
    )
    shutil.rmtree(out / "_cache")  # the text-vector cache; concepts/ keeps what is needed
    kept = {k: pruned[k] for k in ("kept", "removed_not_generatable", "not_generatable_by_reason")}
    print(json.dumps({"nodes": len(titles), "edges": len(src), **kept, **stats}, indent=1))


if __name__ == "__main__":
    main()
