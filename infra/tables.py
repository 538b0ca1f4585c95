"""Arrow schemas of every run table, defined once (DESIGN.md "CLI and tables").

Writers call :func:`conform` before writing, so a table on disk always has exactly its
contract's columns, in order and with these types. ``vectors`` / ``text_vectors`` depend on
the model's dimension (:func:`vectors_schema`). Later issues add their tables here.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

SAMPLES = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),  # source-relative key the id hashes
        pa.field("uri", pa.string(), nullable=False),
        pa.field("image", pa.binary()),  # null when the bytes stay at `uri`
        pa.field("caption_alt", pa.string()),
        pa.field("meta", pa.string()),  # JSON object
        pa.field("content_sha256", pa.string()),  # null when `image` is null
    ]
)

PROFILES = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("file_bytes", pa.int64()),
        pa.field("format", pa.string()),
        pa.field("mode", pa.string()),
        pa.field("n_frames", pa.int32()),
        pa.field("bit_depth", pa.int32()),
        pa.field("aspect_ratio", pa.float64()),
        pa.field("phash", pa.uint64()),
        pa.field("content_sha256", pa.string()),
        pa.field("compression_ratio", pa.float64()),
        pa.field("jpeg_bpp", pa.float64()),
        pa.field("border_variance", pa.float64()),
        pa.field("sharpness", pa.float64()),
        pa.field("noise_sigma", pa.float64()),
        pa.field("color_cast", pa.float64()),
        pa.field("saturated_fraction", pa.float64()),
        pa.field("error", pa.string()),
    ]
)

REJECTS = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
    ]
)

# The generated caption columns (captions/ -> shards -> the trainer's caption sampling).
CAPTION_COLUMNS = (
    "caption_long",
    "caption_medium",
    "caption_short",
    "caption_tags",
    "caption_user_prompt",
)

# Curated shard rows (the trainer's input).
SHARD = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("caption_alt", pa.string()),
        # captions/ (null when the sample was not captioned or its captions were rejected)
        pa.field("caption_long", pa.string()),
        pa.field("caption_medium", pa.string()),
        pa.field("caption_short", pa.string()),
        pa.field("caption_tags", pa.string()),
        pa.field("caption_user_prompt", pa.string()),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("sampling_weight", pa.float64(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        # knowledge-graph concept ids (weights/; ids >= the graph's node count are concepts/)
        pa.field("concepts", pa.list_(pa.int64())),
        # i2i rows (task = 'i2i', from edit_pairs/): the edit's input image and instruction
        pa.field("source_image", pa.binary()),
        pa.field("instruction", pa.string()),
    ]
)

# Editing pairs (the editing-pair constructors write them; select turns them into i2i rows).
# `source_id` / `target_id` are sample_ids of the samples table.
# One editing pair per row. Each end is a sample (``source_id`` / ``target_id``) or an image
# stored inline (``source_image`` / ``target_image``, JPEG), never both. ``base_id``: the sample
# or clip the pair was made from (null for imported pairs). ``width``/``height``: the target's.
# A null ``instruction`` waits for a difference caption (select skips it).
EDIT_PAIRS = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("base_id", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("target_id", pa.string()),
        pa.field("source_image", pa.binary()),
        pa.field("target_image", pa.binary()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("instruction", pa.string()),
        pa.field("instruction_zh", pa.string()),
        pa.field("kind", pa.string(), nullable=False),  # expert|inverse|mixed|video|text_render
        pa.field("operations", pa.string()),  # JSON list of {"op": ..., ...}
        pa.field("provenance", pa.string()),  # JSON object
    ]
)

# ``clips``: one video file or folder of frames per row (the video pairs' input).
CLIPS = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # video | frames
        pa.field("frames", pa.list_(pa.string())),  # frame files in order (kind frames)
    ]
)


def vectors_schema(dim: int, dtype: str = "float16") -> pa.Schema:
    """``vectors`` / ``text_vectors``: one L2-normalised embedding per sample."""
    value = {"float16": pa.float16(), "float32": pa.float32()}[dtype]
    return pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(value, dim), nullable=False),
        ]
    )


SCORES = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("aesthetic", pa.float64()),
        pa.field("aesthetic_version", pa.string()),
        pa.field("aigc_prob", pa.float64()),
        pa.field("aigc_version", pa.string()),
        pa.field("nsfw_prob", pa.float64()),
        pa.field("nsfw_version", pa.string()),
        pa.field("clip_score", pa.float64()),  # cosine(image, alt caption); null: no caption
    ]
)

DEDUP = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("community", pa.int64(), nullable=False),  # duplicate group; singletons too
        pa.field("community_size", pa.int64(), nullable=False),
        pa.field("keep", pa.bool_(), nullable=False),  # exactly one keeper per community
        pa.field("dup_of", pa.string()),  # the keeper's sample_id; null for keepers
        pa.field("semantic_cluster", pa.int64(), nullable=False),  # coarser Leiden level
    ]
)

KNN_EDGES = pa.schema(
    [
        pa.field("src", pa.string(), nullable=False),
        pa.field("dst", pa.string(), nullable=False),
        pa.field("sim", pa.float32(), nullable=False),
    ]
)


def vectors_table(ids: list[str], model: str, matrix: np.ndarray) -> pa.Table:
    """A ``vectors`` / ``text_vectors`` table from an (n, D) float16 or float32 matrix."""
    flat = pa.array(matrix.reshape(-1), type=pa.from_numpy_dtype(matrix.dtype))
    return pa.table(
        {
            "sample_id": pa.array(ids, pa.string()),
            "model": pa.array([model] * len(ids), pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1]),
        }
    )


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The (n, D) float32 matrix of a non-null ``embedding`` column."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return np.asarray(arr.flatten()).reshape(len(arr), -1).astype(np.float32)


# One row per sample (zfoundry caption). A row whose captions were rejected keeps its OCR
# text, has null caption columns and `error` set (a rejects/ row says why); `caption_tags`
# is comma-separated; `prompt_version` names the prompt files (captioner.programs).
CAPTIONS = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("caption_long", pa.string()),
        pa.field("caption_medium", pa.string()),
        pa.field("caption_short", pa.string()),
        pa.field("caption_tags", pa.string()),
        pa.field("caption_user_prompt", pa.string()),
        pa.field("ocr_text", pa.string()),  # "" when the image has no text; null: OCR failed
        pa.field("caption_lang", pa.string()),  # en | zh
        pa.field("prompt_version", pa.string()),
        pa.field("model", pa.string()),  # the captioning backend; null: OCR only
        pa.field("ocr_engine", pa.string()),  # rapidocr-... | the VLM | null: no OCR
        pa.field("error", pa.string()),
    ]
)

# Samples nearest to failure cases (zfoundry prune); recipes exclude them with
# "sample_id NOT IN (SELECT sample_id FROM prune)".
PRUNE = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("failure", pa.string(), nullable=False),
        pa.field("sim", pa.float32(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "samples": SAMPLES,
    "profiles": PROFILES,
    "rejects": REJECTS,
    "prune": PRUNE,
    "scores": SCORES,
    "dedup": DEDUP,
    "knn_edges": KNN_EDGES,
    "captions": CAPTIONS,
    "edit_pairs": EDIT_PAIRS,
    "clips": CLIPS,
}

# Stage outputs may carry this extra column next to `error`; the framework moves it into
# rejects/ `detail` and drops it before the table is written.
ERROR_DETAIL = "error_detail"

# Large binary columns: stored uncompressed (JPEG/PNG bytes do not compress further).
BINARY_COLUMNS = frozenset({"image", "source_image", "target_image"})


class SchemaError(ValueError):
    """A table does not match its contract."""


def conform(table: pa.Table, schema: pa.Schema, *, name: str) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, order and types.

    Raises :class:`SchemaError` naming the missing/extra columns or the column whose values
    cannot be cast, so a writer bug never reaches disk.
    """
    have, want = set(table.column_names), set(schema.names)
    if have != want:
        raise SchemaError(
            f"table {name!r}: missing columns {sorted(want - have)}, "
            f"unexpected columns {sorted(have - want)}"
        )
    table = table.select(schema.names)
    for field in schema:
        col = table.column(field.name)
        if not field.nullable and col.null_count:
            raise SchemaError(f"table {name!r}: column {field.name!r} has {col.null_count} nulls")
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise SchemaError(f"table {name!r}: {err}") from err
