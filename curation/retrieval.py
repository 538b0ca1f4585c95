"""Retrieval over a run's ``vectors/``: search, distributional voids, failure-case pruning.

Queries are embedded with the same CLIP model that made the run's vectors (read back from
``vectors/_settings.json``). The faiss index is built once and cached under
``RUN_DIR/_index/`` (or the user cache for runs in object storage), keyed by the vectors
table's shard hashes, so it is rebuilt only when the vectors change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curation.clip import cache_dir, encode_images
from curation.profiling.decode import decode, to_rgb8
from curation.stages.embed import EmbedImagesStage
from curation.vectors import IndexCache, nearest_to_failures, prune_list, search, voids
from infra.storage import RunDir, shard_name
from infra.tables import PRUNE, conform, embedding_matrix


@dataclass
class RunVectors:
    ids: list[str]
    matrix: np.ndarray  # (n, d) float32, unit rows
    fingerprint: str
    model: str


def load_vectors(run: RunDir, table: str = "vectors") -> RunVectors:
    """Every committed row of ``table``. zfoundry's own tables are fingerprinted by their
    shard hashes; a table another tool wrote to the contract (no markers) by file names,
    sizes and modification times."""
    markers = run.completed(table)
    if markers and not run.exists(run.success_path(table)):
        raise FileNotFoundError(f"{table}/ is incomplete in {run.display}; run embed")
    files = run.committed_files(table)
    if not files:
        raise FileNotFoundError(f"{table}/ is missing in {run.display}; run embed")
    data = pa.concat_tables([pq.read_table(f, filesystem=run.fs) for f in files])
    matrix = embedding_matrix(data.column("embedding"))
    if markers:
        parts = [markers[i]["sha256"] for i in sorted(markers)]
    else:
        infos = run.fs.get_file_info(files)
        parts = [f"{i.path}:{i.size}:{i.mtime_ns}" for i in infos]
    fingerprint = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    models = set(data.column("model").to_pylist())
    if len(models) != 1:
        raise ValueError(f"{table}/ mixes embeddings of several models: {sorted(models)}")
    return RunVectors(data.column("sample_id").to_pylist(), matrix, fingerprint, models.pop())


def run_model(run: RunDir) -> EmbedImagesStage:
    """The embed stage (model, weights, device) that wrote the run's vectors."""
    settings = dict(run.read_json(run.path("vectors", "_settings.json")))
    settings.pop("stage", None)
    return EmbedImagesStage(**settings)


def index_for(run: RunDir, vectors: RunVectors, spec: str | None = None):
    if run.fs.type_name == "local":
        where = Path(run.root) / "_index"
    else:
        where = cache_dir() / "index" / hashlib.sha256(run.display.encode()).hexdigest()[:16]
    return IndexCache(where).get_or_build(
        lambda: vectors.matrix, vectors.fingerprint, vectors.model, spec=spec
    )


def embed_texts(stage: EmbedImagesStage, texts: list[str]) -> np.ndarray:
    import torch

    clip = stage.clip
    with torch.inference_mode():
        out = clip.model.encode_text(clip.tokenizer(texts).to(clip.device)).float().cpu().numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def embed_images(stage: EmbedImagesStage, paths: list[Path]) -> np.ndarray:
    images = [to_rgb8(decode(p.read_bytes(), max_pixels=10**9).image) for p in paths]
    return encode_images(stage.clip, images)


def search_run(
    run: RunDir, *, text: str | None = None, image: Path | None = None, k: int = 10
) -> list[dict[str, Any]]:
    """The ``k`` pool items nearest to a text or an image query."""
    if (text is None) == (image is None):
        raise ValueError("give exactly one of text or image")
    vectors = load_vectors(run)
    stage = run_model(run)
    query = embed_texts(stage, [text]) if text is not None else embed_images(stage, [image])
    sims, ids = search(index_for(run, vectors), query, min(k, len(vectors.ids)))
    return [
        {"rank": r, "sample_id": vectors.ids[i], "sim": float(s)}
        for r, (s, i) in enumerate(zip(sims[0], ids[0], strict=True))
        if i >= 0
    ]


def run_voids(run: RunDir, concepts: list[str], *, threshold: float, k: int = 100) -> list[dict]:
    """Concepts whose neighbourhood in the pool is sparse, sparsest first."""
    vectors = load_vectors(run)
    queries = embed_texts(run_model(run), concepts)
    k = min(k, len(vectors.ids))
    return voids(index_for(run, vectors), queries, concepts, threshold=threshold, k=k)


def run_prune(
    run: RunDir,
    *,
    prompts: list[str] | None = None,
    images: list[Path] | None = None,
    k: int = 20,
    threshold: float | None = None,
) -> pa.Table:
    """Samples nearest to failure cases (prompts the model fails on, or failed images);
    written as the ``prune`` table that recipes can exclude."""
    vectors = load_vectors(run)
    stage = run_model(run)
    if prompts:
        queries, names = embed_texts(stage, prompts), prompts
    elif images:
        queries, names = embed_images(stage, images), [p.name for p in images]
    else:
        raise ValueError("give failure prompts or failure images")
    k = min(k, len(vectors.ids))
    rows = nearest_to_failures(index_for(run, vectors), queries, names, k=k, threshold=threshold)
    table = prune_list(rows, vectors.ids)
    run.write_parquet("prune", shard_name(0), conform(table, PRUNE, name="prune"))
    run.write_json(run.success_path("prune"), {"rows": table.num_rows})
    return table


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and _is_image(p))


def _is_image(path: Path) -> bool:
    try:
        with Image.open(path):
            return True
    except Exception:
        return False
