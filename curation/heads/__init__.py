"""Scoring heads over stored CLIP image embeddings: aesthetic (LAION MLP), AI-generated
(UnivFD linear probe) and NSFW (MLP classifier), with safetensors I/O that records the
embedding contract next to the weights, and a seeded CPU trainer with held-out metrics.
"""

from curation.heads.io import (
    LAION_AESTHETIC_CONTRACT,
    UNIVFD_CONTRACT,
    FeatureContract,
    check_contract,
    load_head,
    save_head,
    weights_version,
)
from curation.heads.modules import (
    HEADS,
    AestheticMLP,
    Head,
    LinearProbe,
    MLPClassifier,
    get_head,
    head_class,
    register_head,
)
from curation.heads.train import fit_head, roc_auc

__all__ = [
    "HEADS",
    "LAION_AESTHETIC_CONTRACT",
    "UNIVFD_CONTRACT",
    "AestheticMLP",
    "FeatureContract",
    "Head",
    "LinearProbe",
    "MLPClassifier",
    "check_contract",
    "fit_head",
    "get_head",
    "head_class",
    "load_head",
    "register_head",
    "roc_auc",
    "save_head",
    "weights_version",
]
