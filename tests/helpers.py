"""Small helpers for tests: build runs without the CLI."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curation.ingest import Source
from curation.stages.profile import ProfileStage
from infra.storage import RunDir
from pipelines.config import IngestConfig
from pipelines.executors import get_executor
from pipelines.steps import ingest


def ingest_folders(run_dir: Path, *folders: Path, rows_per_shard: int = 8) -> RunDir:
    run = RunDir(run_dir)
    sources = [Source(path=f, name=f.name) for f in folders]
    ingest(run, IngestConfig(sources=sources, rows_per_shard=rows_per_shard), progress=False)
    return run


def profile(run: RunDir, executor: str = "local", **settings) -> dict:
    return get_executor(executor, progress=False).run_stage(ProfileStage(**settings), run)


def read_table(run: RunDir, table: str) -> pa.Table:
    files = run.data_files(table)
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else pa.table({})


def by_key(run: RunDir, table: str) -> dict[str, dict]:
    """Rows of ``table`` keyed by the sample's ingest key."""
    keys = dict(
        zip(
            read_table(run, "samples").column("sample_id").to_pylist(),
            read_table(run, "samples").column("key").to_pylist(),
            strict=True,
        )
    )
    return {keys[r["sample_id"]]: r for r in read_table(run, table).to_pylist()}


def train_bpe_tokenizer(
    corpus: list[str],
    special_tokens: list[str],
    *,
    vocab_size: int,
    padding_side: str,
    chat_template: str,
):
    """A byte-level BPE tokenizer trained on ``corpus`` (the ``tokenizers`` library, no
    downloads), padding with ``<|endoftext|>`` and ending turns with ``<|im_end|>`` as Qwen's do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        padding_side=padding_side,
        chat_template=chat_template,
    )
