"""A curriculum: training stages run in order, each starting from the previous stage's weights.

The Z-Image report trains in stages (section 4): low-resolution pre-training, "omni"
pre-training (arbitrary resolutions, text-to-image and editing, multi-level captions) and
supervised fine-tuning on a curated, concept-balanced set. A curriculum file lists them::

    out = "runs/z"              # stage NAME writes to runs/z/NAME (checkpoints, metrics, final/)
    backend = "ray"             # every stage's backend ("ray" or "local")

    [ray]                       # trainer.config.RayConfig, shared by every stage
    num_workers = 2

    [defaults]                  # StageConfig fields every stage starts from (merged per table)
    encoders = { pipeline = "models/Z-Image" }
    model = { preset = "debug" }

    [[stages]]
    name = "lowres"
    manifest = "shards/lowres/manifest.json"
    steps = 2000
    data = { resolution = "buckets", t2i_i2i_ratio = [1, 0] }

    [[stages]]
    name = "omni"
    manifest = "shards/omni/manifest.json"
    steps = 4000

A stage is a ``trainer.config.StageConfig`` (without ``out``, ``backend`` and ``ray``, which
the curriculum sets). Stages after the first start from the previous stage's ``final/``
(their ``model.pretrained`` is set for them; setting it is an error). Re-running the file skips
finished stages (``final/zfoundry_stage.json`` at the stage's ``steps``) and resumes the
unfinished one where it stopped. Relative paths are relative to the file.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.config import (
    ConfigError,
    apply_overrides,
    blame_cli,
    from_dict,
    paths_relative_to,
    read_toml,
    require,
)
from trainer.config import RayConfig, StageConfig, check_local_paths

CURRICULUM_KEYS = ("out", "backend", "ray", "defaults", "stages")
SET_BY_CURRICULUM = ("out", "backend", "ray")


@dataclass(frozen=True, kw_only=True)
class CurriculumSettings:
    """The curriculum file's top-level keys (besides ``defaults`` and ``stages``)."""

    out: Path
    """Root folder: stage ``NAME`` writes to ``out/NAME``."""
    backend: str = "ray"
    """Training backend of every stage (``trainer.registry``)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Ray Train settings (``backend = "ray"``); the whole curriculum is one Ray Train run."""

    def __post_init__(self) -> None:
        from trainer.registry import backend_names

        require(self.backend in backend_names(), "backend", self.backend,
                f"must be one of {backend_names()}")  # fmt: skip


@dataclass(frozen=True)
class Curriculum:
    """Loaded and validated: every stage's full config, in order."""

    out: Path
    backend: str
    stages: tuple[StageConfig, ...]


def is_curriculum(path: str | Path) -> bool:
    """Whether a TOML file is a curriculum (has ``[[stages]]``); False when unreadable."""
    try:
        return "stages" in read_toml(path)
    except ConfigError:
        return False


def load_curriculum(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Curriculum:
    """Load a curriculum file; ``overrides`` (CLI ``--set``, dotted ``StageConfig`` keys) apply
    to every stage, except ``backend`` and ``ray.*``, which apply to the curriculum."""
    source = str(path)
    data = read_toml(path)
    unknown = sorted(set(data) - set(CURRICULUM_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; a curriculum has {list(CURRICULUM_KEYS)}",
                          source=source, key=unknown[0])  # fmt: skip
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
        raise ConfigError("expected one or more [[stages]] tables", source=source, key="stages")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError("expected a table", source=source, key="defaults")
    for key in SET_BY_CURRICULUM:
        if key in defaults:
            raise ConfigError("set once for the curriculum, at the top level", source=source,
                              key=f"defaults.{key}")  # fmt: skip
    head_data = {k: data[k] for k in SET_BY_CURRICULUM if k in data}
    stage_overrides = dict(overrides or {})
    for key in list(stage_overrides):
        if key == "backend" or key.startswith("ray."):
            apply_overrides(CurriculumSettings, head_data, {key: stage_overrides.pop(key)})
        elif key == "out":
            raise ConfigError("set the curriculum's out in the file (stages write to out/NAME)",
                              source="CLI", key="out")  # fmt: skip
        elif key == "model.pretrained":
            raise ConfigError("set the first stage's model.pretrained in the file (later stages "
                              "start from the stage before)", source="CLI", key=key)  # fmt: skip
    with paths_relative_to(path):
        with blame_cli(overrides or {}, ""):
            head = from_dict(CurriculumSettings, head_data, source=source)
        configs: list[StageConfig] = []
        for i, table in enumerate(stages):
            where = f"stages[{i}]"
            for key in SET_BY_CURRICULUM:
                if key in table:
                    raise ConfigError("set once for the curriculum, at the top level",
                                      source=source, key=f"{where}.{key}")  # fmt: skip
            merged = _merge(defaults, table)
            for key in ("model", "data", "encoders", "optim", "timesteps"):
                if key in merged and not isinstance(merged[key], dict):
                    raise ConfigError("expected a table", source=source, key=f"{where}.{key}")
            if i > 0 and merged.get("model", {}).get("pretrained"):
                raise ConfigError("a later stage starts from the previous stage's final weights",
                                  source=source, key=f"{where}.model.pretrained")  # fmt: skip
            apply_overrides(StageConfig, merged, dict(stage_overrides))
            name = merged.get("name")
            if not isinstance(name, str) or not name.strip() or "/" in name:
                raise ConfigError("every stage needs a name (no '/'): its folder under out",
                                  source=source, key=f"{where}.name")  # fmt: skip
            out = Path(head.out).resolve() / name
            merged |= {"out": str(out), "backend": head.backend, "ray": head.ray}
            with blame_cli(stage_overrides, where):
                config = from_dict(StageConfig, merged, source=source, path=where)
                check_local_paths(config, source=f"{source}: {where}")
            if configs:  # starts from the previous stage's final/transformer
                model = dataclasses.replace(config.model, pretrained=str(configs[-1].out))
                config = dataclasses.replace(config, model=model)
            configs.append(config)
    names = [c.name for c in configs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"stage name {name!r} is used twice", source=source,
                              key=f"stages[{i}].name")  # fmt: skip
    return Curriculum(out=Path(head.out).resolve(), backend=head.backend, stages=tuple(configs))


def final_step(config: StageConfig, location: str = "") -> int | None:
    """The step recorded in the stage's ``final/`` note (None without one, or one of another
    stage); ``location``: the stage's folder in run storage (a URI) instead of ``config.out``."""
    from infra.storage import join_uri, read_bytes
    from trainer.checkpoint import STAGE_FILE

    try:
        info = json.loads(read_bytes(join_uri(location or str(config.out), "final", STAGE_FILE)))
        return int(info["step"]) if info.get("stage") == config.name else None
    except (OSError, ValueError, TypeError, KeyError):
        return None


def stage_done(config: StageConfig, location: str = "") -> bool:
    """Whether the stage's ``final/`` holds its last step (a finished stage is skipped)."""
    step = final_step(config, location)
    return step is not None and step >= config.steps


def done_summary(config: StageConfig) -> dict[str, Any]:
    return {"stage": config.name, "steps": config.steps, "final": str(Path(config.out) / "final"),
            "already_done": True}  # fmt: skip


def run_in_order(curriculum: Curriculum) -> list[dict[str, Any]]:
    """The default way to run a curriculum: each stage on its backend, one after the other."""
    from trainer.registry import get_backend

    return [done_summary(stage) if stage_done(stage) else get_backend(stage.backend).run(stage)
            for stage in curriculum.stages]  # fmt: skip


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, merging tables key by key."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
