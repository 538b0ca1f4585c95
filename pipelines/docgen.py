"""Generate the config reference in docs/usage.md from the config dataclasses themselves.

``python -m pipelines.docgen`` rewrites the block between the markers; a test checks that
the committed docs equal what this prints, so the reference cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from pathlib import Path

from captioner.backends import BackendConfig
from captioner.stage import CaptionStage
from curation.dedup.run import DedupConfig
from curation.ingest import Source
from curation.pairs.stage import ExpertPairs, PairsConfig, TextPairs, VideoPairs
from curation.select import PairSelection, Recipe, Sampling
from curation.stages.embed import EmbedImagesStage
from curation.stages.profile import ProfileStage
from curation.stages.score import ScoreStage
from infra.config import field_docs
from knowledge_graph.sampling import WeightsConfig
from knowledge_graph.weights import WeightConfig
from pipelines.config import (
    ExecutorConfig,
    IngestConfig,
    PipelineConfig,
    PruneConfig,
    SelectConfig,
)

SECTIONS = [
    ("Pipeline file: top level", PipelineConfig),
    ("Pipeline file: `[executor]`", ExecutorConfig),
    ("Pipeline file: `[ingest]`", IngestConfig),
    ("Pipeline file: `[[ingest.sources]]`", Source),
    ("Pipeline file: `[profile]`", ProfileStage),
    ("Pipeline file: `[embed]`", EmbedImagesStage),
    ("Pipeline file: `[score]`", ScoreStage),
    ("Pipeline file: `[dedup]`", DedupConfig),
    ("Pipeline file: `[prune]`", PruneConfig),
    ("Pipeline file: `[weights]`", WeightsConfig),
    ("Pipeline file: `[weights.bm25]`", WeightConfig),
    ("Pipeline file: `[caption]`", CaptionStage),
    ("Pipeline file: `[caption.backend]`", BackendConfig),
    ("Pipeline file: `[pairs]`", PairsConfig),
    ("Pipeline file: `[pairs.expert]`", ExpertPairs),
    ("Pipeline file: `[pairs.text]`", TextPairs),
    ("Pipeline file: `[pairs.video]`", VideoPairs),
    ("Pipeline file: `[select]`", SelectConfig),
    ("Recipe: top level", Recipe),
    ("Recipe: `[sampling]`", Sampling),
    ("Recipe: `[pairs]`", PairSelection),
]
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
USAGE = Path(__file__).resolve().parents[1] / "docs" / "usage.md"


def _type_name(tp: object) -> str:
    text = re.sub(r"<class '([\w.]+)'>", r"\1", str(tp)).replace("typing.", "")
    text = re.sub(r"\b(?:[a-z_]+\.)+([A-Z]\w*)", r"\1", text)  # drop module paths
    return text.replace("|", "\\|")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`"
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return "(table)" if dataclasses.is_dataclass(value) else f"`{value!r}`"
    return "required"


def config_reference() -> str:
    out = [START]
    for title, cls in SECTIONS:
        docs, hints = field_docs(cls), typing.get_type_hints(cls)
        out += ["", f"### {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            if f.init:
                doc = " ".join(docs.get(f.name, "").split()).replace("``", "`")
                kind = _type_name(hints[f.name])
                out.append(f"| `{f.name}` | `{kind}` | {_default(f)} | {doc} |")
    return "\n".join([*out, "", END])


def render(text: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return head + config_reference() + tail


if __name__ == "__main__":
    USAGE.write_text(render(USAGE.read_text()))
    sys.stdout.write(f"updated {USAGE}\n")
