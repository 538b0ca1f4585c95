"""Select: a recipe's DuckDB predicates over a run's tables -> curated shards + manifest.

A global step (CONVENTIONS.md 1b): one SQL query over the compute-once tables, so changing
a threshold re-runs only this and never decodes an image. Rows are ordered by
``sample_id`` and cut into fixed-size shards, so the same run + recipe gives the same
bytes. Samples whose profile has an ``error`` are never selected.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from curation.edit_pairs import KINDS
from infra import catalog
from infra.config import ConfigError, require, to_dict
from infra.storage import (
    RunDir,
    read_bytes,
    resolve_uri,
    shard_name,
    write_bytes_atomic,
    write_parquet_atomic,
)
from infra.tables import CAPTION_COLUMNS, SHARD, conform

MANIFEST_FORMAT = "zfoundry.manifest/1"
# Per-sample tables joined to samples when present (LEFT JOIN, so predicates may use them).
OPTIONAL_TABLES = ("scores", "dedup", "weights", "captions")
BALANCE = ("weights", "concepts", "none")


def _fraction(expr: str, salt: str) -> str:
    """SQL: a number in [0, 1) fixed by ``expr`` and ``salt`` (deterministic subsampling)."""
    return f"(('0x' || substr(md5({expr} || '{salt}'), 1, 8))::UBIGINT / 4294967296.0)"


def i2i_query(pairs: PairSelection) -> str:
    """Editing pairs -> i2i rows. A pair is kept when its instruction is known, its kind is
    listed (and survives ``keep``), its source is decodable (a profiled sample without error,
    or inline bytes) and its anchor passes the recipe: the target sample, or for a generated
    target the sample it was made from (``base_id``). Video pairs come from clips, which no
    recipe predicate can see; they are kept by kind only. The row takes the target image
    (inline bytes, else the sample's), the target size, and the anchor's alt caption, weight
    and concepts."""
    kinds = ", ".join(f"'{k}'" for k in pairs.kinds)
    keep = " AND ".join(
        f"(p.kind <> '{k}' OR {_fraction('p.pair_id', 'keep')} < {float(f)!r})"
        for k, f in sorted(pairs.keep.items())
    )
    zh = _fraction("p.pair_id", "zh")
    return (
        "SELECT p.pair_id AS sample_id, coalesce(p.target_image, sel.image) AS image, "
        "CASE WHEN p.target_image IS NULL THEN sel.uri END AS uri, sel.caption_alt, "
        + ", ".join(f"NULL::VARCHAR AS {c}" for c in CAPTION_COLUMNS)
        + ", coalesce(p.width, sel.width) AS width, coalesce(p.height, sel.height) AS height, "
        "coalesce(sel.sampling_weight, 1.0) AS sampling_weight, 'i2i' AS task, sel.concepts, "
        "CASE WHEN p.target_image IS NULL THEN sel.profiled_sha256 END AS profiled_sha256, "
        "coalesce(p.source_image, src.image) AS source_image, "
        "CASE WHEN p.source_image IS NULL THEN src.uri END AS source_uri, "
        "sp.content_sha256 AS source_sha256, "
        f"CASE WHEN p.instruction_zh IS NOT NULL AND {zh} < {float(pairs.zh_fraction)!r} "
        "THEN p.instruction_zh ELSE p.instruction END AS instruction, p.kind AS pair_kind "
        "FROM edit_pairs p "
        "LEFT JOIN selected sel ON sel.sample_id = coalesce(p.target_id, p.base_id) "
        "LEFT JOIN samples src ON src.sample_id = p.source_id "
        "LEFT JOIN profiles sp ON sp.sample_id = p.source_id "
        f"WHERE p.instruction IS NOT NULL AND p.kind IN ({kinds}) "
        "AND (sel.sample_id IS NOT NULL OR (p.kind = 'video' AND p.target_image IS NOT NULL)) "
        "AND (p.source_image IS NOT NULL OR (src.sample_id IS NOT NULL AND sp.error IS NULL))"
        + (f" AND {keep}" if keep else "")
    )


@dataclass(frozen=True, kw_only=True)
class PairSelection:
    """Which editing pairs become i2i rows (``[pairs]`` in a recipe)."""

    kinds: tuple[str, ...] = KINDS
    """Pair kinds to use (expert, inverse, mixed, video, text_render)."""
    keep: dict[str, float] = field(default_factory=dict)
    """Fraction of a kind's pairs kept, picked by ``pair_id`` (e.g. ``{ text_render = 0.2 }``:
    the report downsamples rendered text in SFT); unlisted kinds are kept whole."""
    zh_fraction: float = 0.0
    """Fraction of pairs (by ``pair_id``) whose Chinese instruction, where there is one, is the
    training instruction."""
    match_ratio: bool = False
    """Cap the i2i rows at ``t2i rows x i2i/t2i`` of ``sampling.t2i_i2i_ratio`` (dropping by
    ``pair_id`` order), so the shards themselves hold that mix; otherwise the trainer applies
    the ratio when it draws."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        require(not unknown, "kinds", unknown, f"unknown; kinds are {list(KINDS)}")
        unknown = sorted(set(self.keep) - set(KINDS))
        require(not unknown, "keep", unknown, f"unknown kinds; kinds are {list(KINDS)}")
        bad = {k: v for k, v in self.keep.items() if not 0 <= v <= 1}
        require(not bad, "keep", bad, "fractions must be in [0, 1]")
        require(0 <= self.zh_fraction <= 1, "zh_fraction", self.zh_fraction, "must be in [0, 1]")


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """How the trainer samples the stage's rows (copied into manifest.json)."""

    weights_column: str = "sampling_weight"
    """Shard column holding per-row sampling weights."""
    t2i_i2i_ratio: tuple[int, int] = (4, 1)
    """Text-to-image : image-to-image mix."""
    caption_probs: dict[str, float] = field(default_factory=lambda: {"caption_alt": 1.0})
    """Probability of each caption column being the training caption (sums to 1)."""
    resolution_buckets: tuple[tuple[int, int], ...] = ((256, 256),)
    """Training resolutions (width, height) for the stage."""
    balance: str = "weights"
    """Where ``sampling_weight`` comes from: ``weights`` (the run's ``weights/`` table, 1.0
    without one), ``concepts`` (recomputed over the selected rows' concepts, so the stage
    itself is concept-balanced; needs ``weights/``), or ``none`` (all 1.0)."""

    def __post_init__(self) -> None:
        probs = self.caption_probs
        require(all(v >= 0 for v in probs.values()), "caption_probs", probs, "must be >= 0")
        require(math.isclose(sum(probs.values()), 1.0), "caption_probs", probs, "must sum to 1")
        require(min(self.t2i_i2i_ratio) >= 0, "t2i_i2i_ratio", self.t2i_i2i_ratio, "must be >= 0")
        ok = all(
            w > 0 and h > 0 and w % 16 == 0 and h % 16 == 0 for w, h in self.resolution_buckets
        )
        require(
            ok, "resolution_buckets", self.resolution_buckets, "must be positive multiples of 16"
        )
        require(self.balance in BALANCE, "balance", self.balance, f"must be one of {BALANCE}")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A curriculum stage's selection: predicates, shard size, sampling settings."""

    name: str
    """Stage name written into the manifest (e.g. ``lowres``)."""
    where: tuple[str, ...] = ()
    """DuckDB predicates, AND-ed, over the run's tables joined by sample_id."""
    rows_per_shard: int = 1000
    """Rows per output shard."""
    sampling: Sampling = field(default_factory=Sampling)
    """Sampling settings for the trainer."""
    pairs: PairSelection = field(default_factory=PairSelection)
    """Which editing pairs (``edit_pairs/``) become i2i rows."""

    def __post_init__(self) -> None:
        require(self.rows_per_shard >= 1, "rows_per_shard", self.rows_per_shard, "must be >= 1")
        require(bool(self.name.strip()), "name", self.name, "must not be empty")


def _from_clause(con: duckdb.DuckDBPyConnection) -> tuple[str, str]:
    present = set(catalog.views(con))
    for needed in ("samples", "profiles"):
        if needed not in present:
            raise FileNotFoundError(f"select needs the {needed}/ table; run its step first")
    joins = ["samples", "JOIN profiles USING (sample_id)"]
    joins += [f"LEFT JOIN {t} USING (sample_id)" for t in OPTIONAL_TABLES if t in present]
    weight = "coalesce(weights.sampling_weight, 1.0)" if "weights" in present else "1.0"
    return " ".join(joins), weight


def funnel(con: duckdb.DuckDBPyConnection, recipe: Recipe, source: str) -> list[dict[str, Any]]:
    """Rows left after each predicate, cumulatively; an invalid predicate names itself."""
    frm, _ = _from_clause(con)
    conds = ["profiles.error IS NULL"]
    steps = [{"predicate": "profiles.error IS NULL (decodable)"}]
    steps[0]["rows"] = con.execute(f"SELECT count(*) FROM {frm} WHERE {conds[0]}").fetchone()[0]
    for i, pred in enumerate(recipe.where):
        conds.append(f"({pred})")
        try:
            n = con.execute(f"SELECT count(*) FROM {frm} WHERE {' AND '.join(conds)}").fetchone()
        except duckdb.Error as err:
            raise ConfigError(f"{pred!r}: {err}", source=source, key=f"where[{i}]") from None
        steps.append({"predicate": pred, "rows": n[0]})
    return steps


def require_complete(run: RunDir, table: str, source: str | None) -> None:
    """``table`` has every shard of ``source``, each computed from the current input (with
    ``source`` None: only that the step writing ``table`` finished)."""
    inputs, done = (run.completed(source), run.completed(table)) if source else ({}, {})
    stale = [i for i in inputs if done.get(i, {}).get("input_sha256") != inputs[i].get("sha256")]
    if not run.exists(run.success_path(table)) or stale:
        raise FileNotFoundError(
            f"{table}/ is incomplete in {run.display}: {len(stale)} of {len(inputs)} shards "
            f"missing or stale; run its step first"
        )


def select(run: RunDir, recipe: Recipe, out: str, *, recipe_source: str = "<recipe>") -> dict:
    """Write ``out/00000.parquet ...`` and ``out/manifest.json``; return the manifest."""
    require_complete(run, "profiles", "samples")
    con = catalog.connect(run)
    steps = funnel(con, recipe, recipe_source)
    frm, weight = _from_clause(con)
    where = " AND ".join(["profiles.error IS NULL", *(f"({p})" for p in recipe.where)])
    has_weights = "weights" in catalog.views(con)
    balance = recipe.sampling.balance
    if balance == "none":
        weight = "1.0"
    elif balance == "concepts":
        frm, weight = _balance_by_concepts(run, con, frm, where)
    concepts = "weights.concepts" if has_weights else "NULL::BIGINT[]"
    captioned = "captions" in catalog.views(con)
    captions = ", ".join(
        f"captions.{c}" if captioned else f"NULL::VARCHAR AS {c}" for c in CAPTION_COLUMNS
    )
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW selected AS SELECT samples.sample_id, samples.image, "
        f"samples.uri, samples.caption_alt, {captions}, profiles.width, profiles.height, "
        f"{weight} AS sampling_weight, {concepts} AS concepts, "
        f"profiles.content_sha256 AS profiled_sha256 FROM {frm} WHERE {where}"
    )
    query = (
        f"SELECT sample_id, image, uri, caption_alt, {', '.join(CAPTION_COLUMNS)}, width, "
        "height, sampling_weight, "
        "'t2i' AS task, concepts, profiled_sha256, NULL::BLOB AS source_image, "
        "NULL AS source_uri, NULL AS source_sha256, NULL::VARCHAR AS instruction, "
        "NULL::VARCHAR AS pair_kind FROM selected"
    )
    if "edit_pairs" in catalog.views(con):
        require_complete(run, "edit_pairs", None)
        i2i = i2i_query(recipe.pairs)
        t2i, i2i_share = recipe.sampling.t2i_i2i_ratio
        if recipe.pairs.match_ratio and t2i:  # i2i rows at most t2i rows x i2i/t2i
            cap = con.execute("SELECT count(*) FROM selected").fetchall()[0][0] * i2i_share // t2i
            order = "row_number() OVER (ORDER BY md5(sample_id))"
            i2i = f"SELECT * FROM ({i2i}) QUALIFY {order} <= {cap}"
        query += f" UNION ALL {i2i}"
    query = f"SELECT * FROM ({query}) ORDER BY sample_id"
    reader = con.sql(query).to_arrow_reader(recipe.rows_per_shard)
    fs, root = resolve_uri(out)
    fs.create_dir(root, recursive=True)
    shards: list[dict[str, Any]] = []
    pending: list[pa.RecordBatch] = []
    dropped: collections.Counter[str] = collections.Counter()
    by_kind: collections.Counter[str] = collections.Counter()
    for batch in reader:
        batch = _fill_images(batch, dropped)
        by_kind.update(k for k in batch.column("pair_kind").to_pylist() if k is not None)
        batch = batch.drop_columns(["pair_kind"])
        if not batch.num_rows:
            continue
        pending.append(batch)
        while sum(b.num_rows for b in pending) >= recipe.rows_per_shard:
            table = pa.Table.from_batches(pending)
            shards.append(_write_shard(fs, root, len(shards), table[: recipe.rows_per_shard]))
            rest = table[recipe.rows_per_shard :]
            pending = rest.to_batches() if rest.num_rows else []
    if pending:
        shards.append(_write_shard(fs, root, len(shards), pa.Table.from_batches(pending)))

    manifest = {
        "format": MANIFEST_FORMAT,
        "stage": recipe.name,
        "run_dir": run.display,
        "recipe": to_dict(recipe),
        "shards": shards,
        "totals": {
            "rows": sum(s["rows"] for s in shards),
            "shards": len(shards),
            "bytes": sum(s["bytes"] for s in shards),
            "profiled_ok": steps[0]["rows"],
            "dropped": dict(sorted(dropped.items())),
            "i2i": sum(by_kind.values()),
            "i2i_by_kind": dict(sorted(by_kind.items())),
        },
        "funnel": steps,
        "sampling": to_dict(recipe.sampling),
        "columns": SHARD.names,
    }
    _write_manifest(fs, root, manifest)
    _delete_stale(fs, root, {s["path"] for s in shards})
    return manifest


def _balance_by_concepts(run: RunDir, con, frm: str, where: str) -> tuple[str, str]:
    """Weights recomputed over the selected rows' concepts, joined as ``balanced``."""
    from knowledge_graph.sampling import balanced_weights
    from knowledge_graph.weights import WeightConfig

    if "weights" not in catalog.views(con):
        raise FileNotFoundError(
            "sampling.balance = 'concepts' needs the weights/ table; run `zfoundry weights`"
        )
    rows = con.sql(
        f"SELECT samples.sample_id, weights.concepts FROM {frm} WHERE {where}"
    ).to_arrow_table()
    settings = run.read_json(run.path("weights", "_settings.json"))
    cfg = WeightConfig(**settings.get("bm25", {}))
    w = balanced_weights(
        rows.column("concepts"),
        settings.get("kg"),
        cfg,
        hierarchy=settings.get("hierarchy", True),
        boost=settings.get("boost", True),
        prior=settings.get("prior", "uniform"),
    )
    con.register("balanced", pa.table({"sample_id": rows.column("sample_id"), "w": w}))
    return f"{frm} LEFT JOIN balanced USING (sample_id)", "coalesce(balanced.w, 1.0)"


def _fill_images(batch: pa.RecordBatch, dropped: collections.Counter) -> pa.RecordBatch:
    """Read the bytes of samples kept only as a URI, and check they are what was profiled:
    a file that changed or vanished since profiling is dropped and counted. The same for the
    source image of i2i rows."""
    keep = np.ones(batch.num_rows, bool)
    for column, uri, sha in (("image", "uri", "profiled_sha256"),
                             ("source_image", "source_uri", "source_sha256")):  # fmt: skip
        images = batch.column(column)
        needed = pc.and_(pc.is_null(images), pc.is_valid(batch.column(uri)))
        if not pc.any(needed).as_py():
            continue
        values = images.to_pylist()
        uris, shas = batch.column(uri).to_pylist(), batch.column(sha).to_pylist()
        for i in np.flatnonzero(needed.to_numpy(zero_copy_only=False)):
            if not keep[i]:
                continue
            try:
                values[i] = read_bytes(uris[i])
            except OSError:
                dropped["unreadable"] += 1
                keep[i] = False
                continue
            if hashlib.sha256(values[i]).hexdigest() != shas[i]:
                dropped["changed_since_profile"] += 1
                keep[i] = False
        index = batch.schema.get_field_index(column)
        batch = batch.set_column(index, column, pa.array(values, pa.binary()))
    if not keep.all():
        batch = batch.take(np.flatnonzero(keep))
    return batch.drop_columns(["uri", "profiled_sha256", "source_uri", "source_sha256"])


def _write_shard(fs, root: str, index: int, table: pa.Table) -> dict[str, Any]:
    table = conform(table, SHARD, name="shard")
    written = write_parquet_atomic(fs, f"{root}/{shard_name(index)}", table)
    return {"path": shard_name(index), **written}


def _write_manifest(fs, root: str, manifest: dict) -> None:
    data = json.dumps(manifest, indent=2, sort_keys=False).encode() + b"\n"
    write_bytes_atomic(fs, f"{root}/manifest.json", data)


def _delete_stale(fs, root: str, keep: set[str]) -> None:
    """Shards of an earlier, larger selection in the same folder."""
    for info in fs.get_file_info(pafs.FileSelector(root)):
        name = info.base_name
        if name.endswith(".parquet") and not name.startswith("_") and name not in keep:
            fs.delete_file(info.path)
