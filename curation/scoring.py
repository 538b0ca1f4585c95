"""Run-level glue for the heads: train one from labels on a run's stored embeddings.

This is the first half of the report's active-learning loop: label a few hundred samples,
fit a head on the embeddings already computed, check its held-out metric, score the pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from curation.retrieval import load_vectors, run_model
from curation.stages.score import run_contract
from infra.storage import RunDir


def train_head_on_run(
    run: RunDir, name: str, labels: Path, out: Path, *, label_column: str = "label", seed: int = 0
) -> dict[str, Any]:
    """Fit head ``name`` on (sample_id, label) rows joined to the run's vectors; save it with
    the run's embedding contract; return its metrics and where it went."""
    from curation.heads import FeatureContract, fit_head, save_head

    table = pq.read_table(labels)
    for col in ("sample_id", label_column):
        if col not in table.column_names:
            raise ValueError(
                f"{labels}: needs columns sample_id and {label_column}, has {table.column_names}"
            )
    vectors = load_vectors(run)
    row = {sid: i for i, sid in enumerate(vectors.ids)}
    pairs = [
        (row[s], y)
        for s, y in zip(
            table.column("sample_id").to_pylist(),
            table.column(label_column).to_pylist(),
            strict=True,
        )
        if s in row and y is not None
    ]
    missing = table.num_rows - len(pairs)
    if not pairs:
        raise ValueError(f"{labels}: none of its sample_ids have vectors in {run.display}")
    index, y = zip(*pairs, strict=True)
    stage = run_model(run)
    model, weights = run_contract(stage.model, stage.pretrained)
    contract = FeatureContract(clip_model=model, pretrained=weights, dim=vectors.matrix.shape[1])
    head, metrics = fit_head(
        name, vectors.matrix[list(index)], np.asarray(y, np.float32), seed=seed
    )
    metrics = dict(metrics) | {"labels_without_vectors": missing}
    version = save_head(head, out, contract, name=name, metrics=metrics)
    return {
        "head": name,
        "path": str(out),
        "version": version,
        "contract": contract.describe(),
        **metrics,
    }
