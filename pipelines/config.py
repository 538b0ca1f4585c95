"""Pipeline files: TOML -> a typed :class:`PipelineConfig` (ordered steps + settings).

Relative paths inside a pipeline file are taken relative to that file. Unknown keys,
wrong types and out-of-range values fail at load time, naming the file and the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from captioner.stage import CaptionStage
from curation.dedup.run import DedupConfig
from curation.ingest import Source
from curation.pairs.stage import PairsConfig
from curation.stages.embed import EmbedImagesStage
from curation.stages.profile import ProfileStage
from curation.stages.score import ScoreStage
from infra.config import Location, load_toml, require
from knowledge_graph.concepts import TaxonomyStep
from knowledge_graph.sampling import WeightsConfig

Step = Literal[
    "ingest",
    "profile",
    "embed",
    "score",
    "dedup",
    "prune",
    "taxonomy",
    "weights",
    "caption",
    "pairs",
    "select",
]
STEPS: tuple[Step, ...] = ("ingest", "profile", "select")


@dataclass(frozen=True, kw_only=True)
class ExecutorConfig:
    """Where per-batch stages run."""

    kind: Literal["local", "ray"] = "ray"
    """``ray``: Ray Data (a local Ray instance unless ``address`` is set); ``local``: in-process."""
    address: str | None = None
    """Ray cluster address (``auto`` inside ``ray job submit``); unset starts local Ray."""
    num_cpus: int | None = None
    """CPUs for a locally started Ray instance (default: all)."""
    progress: bool = True
    """Show progress bars."""


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """Raw pools -> ``samples/``."""

    sources: list[Source]
    """One ``[[ingest.sources]]`` table per pool."""
    rows_per_shard: int = 256
    """Samples per ``samples/`` shard: the unit of parallelism and of resume."""

    def __post_init__(self) -> None:
        require(bool(self.sources), "sources", self.sources, "must list at least one source")
        require(self.rows_per_shard >= 1, "rows_per_shard", self.rows_per_shard, "must be >= 1")
        names = [s.source_name for s in self.sources]
        require(len(set(names)) == len(names), "sources", names, "source names must be unique")


@dataclass(frozen=True, kw_only=True)
class SelectConfig:
    """A recipe -> curated shards + ``manifest.json``."""

    recipe: Path
    """Recipe TOML (name, ``where`` predicates, shard size, sampling settings)."""
    out: str = "shards"
    """Output folder; relative values are inside the run directory."""

    def __post_init__(self) -> None:
        require(self.recipe.is_file(), "recipe", str(self.recipe), "must be an existing file")
        from curation.select import Recipe

        load_toml(Recipe, self.recipe, relative_paths=True)  # bad recipes fail at load time


@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    """Failure-case pruning: samples nearest to what the model gets wrong -> ``prune/``."""

    failures: Location
    """A text file of failure prompts (one per line) or a folder of failure images."""
    k: int = 20
    """Nearest samples per failure case."""
    threshold: float | None = None
    """Only samples at least this similar (cosine)."""

    def __post_init__(self) -> None:
        require(os.path.exists(self.failures), "failures", str(self.failures), "must exist")
        require(self.k >= 1, "k", self.k, "must be >= 1")


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """A pipeline file: the ordered steps and each step's settings."""

    steps: tuple[Step, ...] = STEPS
    """Steps to run, in order."""
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    """Executor for per-batch stages."""
    ingest: IngestConfig | None = None
    """Settings of the ingest step (required when it is listed)."""
    profile: ProfileStage = field(default_factory=ProfileStage)
    """Settings of the profile stage."""
    embed: EmbedImagesStage = field(default_factory=EmbedImagesStage)
    """CLIP model and batching for the embed step (image and caption towers)."""
    score: ScoreStage = field(default_factory=ScoreStage)
    """Head files for the score step (unset heads leave their column null)."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    """Semantic dedup settings (method, k, thresholds, keeper order)."""
    prune: PruneConfig | None = None
    """Failure cases for the prune step (required when it is listed)."""
    taxonomy: TaxonomyStep | None = None
    """Tag taxonomy of the run's tags written into a knowledge graph's concepts/ (required
    when listed; ``kg`` names the graph)."""
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    """Sampling weights (tags, optional knowledge graph, BM25 parameters)."""
    caption: CaptionStage = field(default_factory=CaptionStage)
    """OCR engine, captioning backend and prompts of the caption step (default: OCR only)."""
    pairs: PairsConfig = field(default_factory=PairsConfig)
    """Editing-pair constructors of the pairs step (expert edits, rendered text, video
    frames) and the difference-caption backend."""
    select: SelectConfig | None = None
    """Settings of the select step (required when it is listed)."""

    def __post_init__(self) -> None:
        require(len(set(self.steps)) == len(self.steps), "steps", self.steps, "must be unique")
        for step in ("ingest", "prune", "taxonomy", "select"):
            if step in self.steps:
                require(getattr(self, step) is not None, step, None, f"needs a [{step}] table")


def load_pipeline(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    return load_toml(PipelineConfig, path, overrides=overrides, relative_paths=True)
