"""Training backends: a spec registry (torchtitan's ``TrainSpec``), so another trainer can be
plugged in without touching curation or the CLI.

A backend is a name and a ``run(config) -> dict`` callable that trains one stage and returns
its summary. ``local`` (this module) runs ``trainer.Trainer`` in-process; the Ray Train backend
(issue 11) hosts the same class in a thin worker function. Register your own with
``register_backend("mine", BackendSpec(run=..., description=...))`` before ``zfoundry train``
resolves the stage's ``backend``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.config import StageConfig


@dataclass(frozen=True)
class BackendSpec:
    """How a backend trains one stage."""

    run: Callable[[StageConfig], dict[str, Any]]
    description: str = ""


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


register_backend("local", BackendSpec(run=_run_local, description="in-process, one device"))
