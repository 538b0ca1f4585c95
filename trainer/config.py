"""A training stage as TOML -> typed, validated config (``zfoundry train stage.toml``).

::

    name = "lowres"
    manifest = "shards/lowres/manifest.json"   # written by `zfoundry select`
    out = "checkpoints/lowres"
    steps = 2000

    [model]
    preset = "debug"                 # or pretrained = "path/to/transformer"

    [encoders]
    pipeline = "path/to/Z-Image"     # diffusers-format folder: text_encoder/, tokenizer/, vae/
    latent_space = "vae"             # or "pixel" (identity latents, see model.vae.PixelLatents)

    [data]
    token_budget = 8192

    [optim]
    lr = 1e-4

Relative paths are taken relative to the TOML file. Every field is documented below; a bad
value fails at load time naming the file, the key and the value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra import tables
from infra.config import Location, require
from trainer.flow import TimestepConfig

NOT_SET = Location("")  # an optional path or URI left empty

# the captioner's columns, then the metadata caption every shard has
CAPTION_COLUMNS = (*tables.CAPTION_COLUMNS, "caption_alt")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The transformer being trained."""

    preset: str = "debug"
    """A ``model.presets`` name (random init), used when ``pretrained`` is empty."""
    pretrained: Location = NOT_SET
    """A transformer folder (config.json + safetensors: diffusers or a zfoundry export) or a
    Z-Image pipeline folder (its ``transformer/``) to start from."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Config overrides for a preset (``cap_feat_dim`` and ``in_channels`` are set from the
    encoders automatically)."""
    attention_backend: str = "auto"
    """``auto``, ``sdpa``, ``sdpa_mask``, ``flex`` or ``flash`` (see ``model.attention``)."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (less memory, ~30% slower)."""
    compile: bool = False
    """``torch.compile`` every transformer block."""

    def __post_init__(self) -> None:
        from model.presets import PRESETS

        require(bool(self.pretrained) or self.preset in PRESETS, "preset", self.preset,
                f"must be one of {sorted(PRESETS)} (or set pretrained)")  # fmt: skip
        backends = ("auto", "sdpa", "sdpa_mask", "flex", "flash")
        require(self.attention_backend in backends, "attention_backend", self.attention_backend,
                f"must be one of {backends}")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """The frozen encoders that turn images and captions into the transformer's inputs."""

    pipeline: str = ""
    """A diffusers-format Z-Image pipeline folder (or a cached hub id): ``text_encoder/`` +
    ``tokenizer/`` (Qwen3) and ``vae/`` (Flux VAE) are loaded from it."""
    latent_space: str = "vae"
    """``vae`` (the pipeline's VAE) or ``pixel`` (identity latents: 8x8 pixel averages, 3
    channels; for toy trainings and tests, ``model.vae.PixelLatents``)."""
    max_caption_tokens: int = 512
    """Captions are truncated to this many tokens (the reference's 512)."""

    def __post_init__(self) -> None:
        require(bool(self.pipeline), "pipeline", self.pipeline, "must name a pipeline folder")
        require(self.latent_space in ("vae", "pixel"), "latent_space", self.latent_space,
                "must be 'vae' or 'pixel'")  # fmt: skip
        require(self.max_caption_tokens >= 1, "max_caption_tokens", self.max_caption_tokens,
                "must be >= 1")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """How the manifest's rows become batches. Unset fields come from the manifest."""

    resolution: str = "buckets"
    """``buckets``: each image goes to the manifest's ``resolution_buckets`` entry nearest in
    aspect ratio; ``tokens``: any aspect ratio, scaled to ``min_tokens..max_tokens`` image tokens
    (``trainer.buckets.resolution_for``)."""
    min_tokens: int = 256
    """``resolution = "tokens"``: fewest image tokens (16x16 px each)."""
    max_tokens: int = 4096
    """``resolution = "tokens"``: most image tokens (4096 = 1024x1024)."""
    token_budget: int = 8192
    """Tokens (image + caption) per batch per rank; batches are filled up to it."""
    max_batch_size: int = 0
    """Cap on samples per batch (0 = none)."""
    caption_probs: dict[str, float] = field(default_factory=dict)
    """Caption column -> probability (default: the manifest's). Missing / empty captions fall
    back to ``caption_alt``."""
    metadata_caption_prob: float = 0.05
    """Probability of training on the original metadata text (``caption_alt``) even when a
    generated caption exists."""
    caption_dropout: float = 0.1
    """Probability of an empty caption (teaches the unconditional prediction used by CFG)."""
    t2i_i2i_ratio: tuple[int, int] | None = None
    """T2I : I2I batches (default: the manifest's, 4:1). With no i2i rows, all batches are T2I."""
    samples_per_epoch: int = 0
    """Weighted draws (``sampling_weight``) per epoch; 0 = the number of rows."""
    cache: Location = NOT_SET
    """A latent/text cache written by ``zfoundry cache-latents`` to train from instead of
    decoding images and running the encoders."""
    verify_shards: bool = True
    """Check each shard's sha256 against the manifest before reading it."""

    def __post_init__(self) -> None:
        require(self.resolution in ("buckets", "tokens"), "resolution", self.resolution,
                "must be 'buckets' or 'tokens'")  # fmt: skip
        require(0 < self.min_tokens <= self.max_tokens, "min_tokens", self.min_tokens,
                f"must be in 1..max_tokens ({self.max_tokens})")  # fmt: skip
        require(self.token_budget >= 64, "token_budget", self.token_budget, "must be >= 64")
        require(self.max_batch_size >= 0, "max_batch_size", self.max_batch_size, "must be >= 0")
        for name in ("metadata_caption_prob", "caption_dropout"):
            value = getattr(self, name)
            require(0 <= value < 1, name, value, "must be in [0, 1)")
        unknown = sorted(set(self.caption_probs) - set(CAPTION_COLUMNS))
        require(not unknown, "caption_probs", self.caption_probs,
                f"keys must be among {CAPTION_COLUMNS}")  # fmt: skip
        require(all(v >= 0 for v in self.caption_probs.values()), "caption_probs",
                self.caption_probs, "must be >= 0")  # fmt: skip
        if self.caption_probs:
            require(sum(self.caption_probs.values()) > 0, "caption_probs", self.caption_probs,
                    "must not all be 0")  # fmt: skip
        if self.t2i_i2i_ratio is not None:
            require(min(self.t2i_i2i_ratio) >= 0 and sum(self.t2i_i2i_ratio) > 0,
                    "t2i_i2i_ratio", self.t2i_i2i_ratio, "must be >= 0, not both 0")  # fmt: skip
        require(self.samples_per_epoch >= 0, "samples_per_epoch", self.samples_per_epoch,
                "must be >= 0")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW, learning-rate schedule, clipping and EMA."""

    lr: float = 1e-4
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to ``lr`` over this many steps."""
    schedule: str = "constant"
    """After warm-up: ``constant`` or ``cosine`` (to ``min_lr_ratio * lr`` at the last step)."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine schedule, as a fraction of ``lr``."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping; the norm is logged either way)."""
    ema_decay: float = 0.999
    """EMA decay of the weights, exported at each checkpoint (0 = no EMA: raw weights)."""

    def __post_init__(self) -> None:
        require(self.lr > 0, "lr", self.lr, "must be > 0")
        require(all(0 <= b < 1 for b in self.betas), "betas", self.betas, "must be in [0, 1)")
        require(self.eps > 0, "eps", self.eps, "must be > 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0")
        require(self.schedule in ("constant", "cosine"), "schedule", self.schedule,
                "must be 'constant' or 'cosine'")  # fmt: skip
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        require(self.grad_clip >= 0, "grad_clip", self.grad_clip, "must be >= 0")
        require(0 <= self.ema_decay < 1, "ema_decay", self.ema_decay, "must be in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """The ``ray`` backend: Ray Train's ``ScalingConfig`` and ``RunConfig`` for one stage."""

    address: str = ""
    """Ray cluster to join (``auto``, ``ray://host:10001``); empty: ``RAY_ADDRESS`` when set,
    else a local instance on this machine."""
    num_workers: int = 2
    """Training workers (data-parallel ranks)."""
    use_gpu: bool = False
    """One GPU per worker (NCCL, bf16 autocast); CPU workers use gloo and DDP."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker; the worker's torch threads (at least 1)."""
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    """Extra custom resources per worker (e.g. ``{"accelerator_type:H100" = 0.001}``)."""
    storage: Location = NOT_SET
    """Run storage (``s3://bucket/runs``, ``gs://...``, a path). Empty: ``out``'s parent, so
    ``out`` is the run's folder in storage. Set: ``out`` is a local staging folder and every
    checkpoint (with ``metrics.jsonl``) and ``final/`` are uploaded to ``storage/<out name>``."""
    max_failures: int = 1
    """Worker-group failures retried from the last checkpoint (-1: unlimited)."""
    num_to_keep: int = 0
    """Checkpoints kept in storage (0: all; the newest is never deleted)."""
    poll_interval_s: float = 0.5
    """How often Ray Train's controller collects reports (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``
    when unset); a report waits for the previous one to be collected."""
    collective_timeout_s: int = 600
    """The process group's timeout: a rank stuck in a collective fails after this long."""

    def __post_init__(self) -> None:
        require(self.num_workers >= 1, "num_workers", self.num_workers, "must be >= 1")
        require(self.cpus_per_worker > 0, "cpus_per_worker", self.cpus_per_worker, "must be > 0")
        require(self.max_failures >= -1, "max_failures", self.max_failures, "must be >= -1")
        require(self.num_to_keep >= 0, "num_to_keep", self.num_to_keep, "must be >= 0")
        require(self.poll_interval_s > 0, "poll_interval_s", self.poll_interval_s, "must be > 0")
        require(self.collective_timeout_s > 0, "collective_timeout_s",
                self.collective_timeout_s, "must be > 0")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """One training stage: what to train on, what to train, how, and where to write."""

    name: str
    """Stage name (``lowres``, ``omni``, ``sft``...), used in logs and checkpoints."""
    manifest: Location
    """``manifest.json`` written by ``zfoundry select`` (path or URI)."""
    out: Path
    """Output folder: ``metrics.jsonl``, ``checkpoints/step-N/``, ``final/transformer``."""
    backend: str = "ray"
    """Training backend (``trainer.registry``): ``ray`` (Ray Train workers, ``[ray]``) or
    ``local`` (this process, one device)."""
    steps: int = 1000
    """Optimizer steps."""
    seed: int = 0
    """Seeds sampling, batching, noise and timesteps: same seed, same run."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``."""
    data_parallel: str = "auto"
    """How several ranks share the model: ``ddp`` (replicas, gradients all-reduced), ``fsdp``
    (FSDP2: ``fully_shard`` per block, then the root, bf16 parameters and fp32 gradient
    reduction under ``precision`` bf16; for CUDA, as FSDP2's reduce-scatter over gloo has had
    an averaging bug, pytorch/pytorch#162338) or ``auto`` (fsdp on CUDA, ddp on CPU)."""
    log_every: int = 10
    """Write a metrics line every this many steps."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every this many steps (0 = only at the end)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    encoders: EncoderConfig
    data: DataConfig = field(default_factory=DataConfig)
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        require(bool(self.name.strip()), "name", self.name, "must not be empty")
        require(self.steps >= 1, "steps", self.steps, "must be >= 1")
        require(self.log_every >= 1, "log_every", self.log_every, "must be >= 1")
        require(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every,
                "must be >= 0")  # fmt: skip
        require(self.data_parallel in ("auto", "ddp", "fsdp"), "data_parallel",
                self.data_parallel, "must be auto, ddp or fsdp")  # fmt: skip
        require(self.precision in ("auto", "fp32", "bf16"), "precision", self.precision,
                "must be auto, fp32 or bf16")  # fmt: skip
        ok = self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        require(ok, "device", self.device, "must be auto, cpu, cuda or cuda:N")
        from trainer.registry import backend_names

        require(self.backend in backend_names(), "backend", self.backend,
                f"must be one of {backend_names()}")  # fmt: skip


def load_stage(path: str | Path, overrides: dict[str, Any] | None = None) -> StageConfig:
    """A stage TOML (relative paths relative to it); ``overrides``: dotted keys (CLI). The
    local files it names are checked too (``check_local_paths``)."""
    from infra.config import blame_cli, load_toml

    config = load_toml(StageConfig, path, overrides=overrides, relative_paths=True)
    with blame_cli(overrides or {}):
        check_local_paths(config, source=str(path))
    return config


def pretrained_transformer(path: str | Path) -> Path:
    """The transformer folder ``model.pretrained`` names: a pipeline folder's (model_index.json)
    ``transformer/``, a stage out folder's ``final/transformer``, else ``path`` itself."""
    root = Path(path)
    if (root / "model_index.json").is_file():
        return root / "transformer"
    if (root / "final" / "transformer").is_dir():
        return root / "final" / "transformer"
    return root


def check_local_paths(config: StageConfig, source: str = "") -> None:
    """Checks before training what a stage reads from local paths (URIs are read at train
    time): ``manifest`` is not a folder, and ``model.pretrained`` is a transformer folder with
    a readable config.json and intact safetensors headers (``check_transformer_folder``).
    ``ConfigError`` naming ``source`` and the key."""
    from infra.config import ConfigError
    from model.s3dit import check_transformer_folder

    if "://" not in str(config.manifest) and Path(config.manifest).is_dir():
        raise ConfigError(f"{config.manifest} is a folder, not a manifest.json", source=source,
                          key="manifest")  # fmt: skip
    pretrained = str(config.model.pretrained)
    if pretrained and "://" not in pretrained:
        try:
            check_transformer_folder(pretrained_transformer(pretrained))
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(str(err), source=source, key="model.pretrained") from None
