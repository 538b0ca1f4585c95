"""Vector engine, retrieval side: faiss indexes over L2-normalised CLIP embeddings (cosine =
inner product) and the explorations built on them (distributional voids, failure neighbours).
"""

from curation.vectors.explore import PRUNE_SCHEMA, nearest_to_failures, prune_list, voids
from curation.vectors.index import (
    INDEX_SPECS,
    IndexCache,
    build_index,
    choose_index_spec,
    choose_nlist,
    default_nprobe,
    get_index_spec,
    load_index,
    save_index,
    search,
    set_nprobe,
)

__all__ = [
    "INDEX_SPECS",
    "PRUNE_SCHEMA",
    "IndexCache",
    "build_index",
    "choose_index_spec",
    "choose_nlist",
    "default_nprobe",
    "get_index_spec",
    "load_index",
    "nearest_to_failures",
    "prune_list",
    "save_index",
    "search",
    "set_nprobe",
    "voids",
]
