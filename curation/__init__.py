"""Data curation engines: profiling metrics, the profile stage, ingest readers, selection
into curated shards (later: embedder, scorers, vector engine, dedup, editing pairs).
"""
