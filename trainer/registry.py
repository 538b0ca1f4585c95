"""Training backends: a spec registry (torchtitan's ``TrainSpec``), so another trainer can be
plugged in without touching curation or the CLI.

A backend is a name and a ``run(config) -> dict`` callable that trains one stage and returns
its summary. ``local`` (this module) runs ``trainer.Trainer`` in-process; ``ray``
(``trainer.ray_backend``) hosts the same class in a thin Ray Train worker function. Register
your own with ``register_backend("mine", BackendSpec(run=..., description=...))`` before
``zfoundry train`` resolves the stage's ``backend``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.config import StageConfig
    from trainer.curriculum import Curriculum


@dataclass(frozen=True)
class BackendSpec:
    """How a backend trains one stage."""

    run: Callable[[StageConfig], dict[str, Any]]
    description: str = ""
    run_curriculum: Callable[[Curriculum], list[dict[str, Any]]] | None = None
    """How the backend runs a whole curriculum (default: ``run`` on each unfinished stage in
    order, ``trainer.curriculum.run_in_order``)."""


_BACKENDS: dict[str, BackendSpec] = {}


def register_backend(name: str, spec: BackendSpec) -> None:
    """Add a backend; a name can be registered once (a second registration raises)."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"backend name {name!r}: letters, digits, '-' and '_' only")
    if name in _BACKENDS:
        raise ValueError(f"training backend {name!r} is already registered")
    _BACKENDS[name] = spec


def get_backend(name: str) -> BackendSpec:
    if name not in _BACKENDS:
        raise KeyError(f"unknown training backend {name!r}; registered: {backend_names()}")
    return _BACKENDS[name]


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def _run_local(config: StageConfig) -> dict[str, Any]:
    from trainer.trainer import Trainer

    return Trainer(config).fit()


def _run_ray(config: StageConfig) -> dict[str, Any]:
    from trainer.ray_backend import run

    return run(config)


def _run_ray_curriculum(curriculum: Curriculum) -> list[dict[str, Any]]:
    from trainer.ray_backend import run_curriculum

    return run_curriculum(curriculum)


def run_curriculum(curriculum: Curriculum) -> list[dict[str, Any]]:
    """Train every unfinished stage of ``curriculum`` on its backend; one summary per stage."""
    from trainer.curriculum import run_in_order

    spec = get_backend(curriculum.backend)
    return (spec.run_curriculum or run_in_order)(curriculum)


register_backend("local", BackendSpec(run=_run_local, description="in-process, one device"))
register_backend(
    "ray",
    BackendSpec(
        run=_run_ray,
        run_curriculum=_run_ray_curriculum,
        description="Ray Train workers (DDP; a curriculum is one Ray Train run)",
    ),
)
