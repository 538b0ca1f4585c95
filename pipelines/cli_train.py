"""``zfoundry train``: one training stage (``trainer.config.StageConfig``) on a backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli import _fail, _parse_set, app, console

EXAMPLES = """Examples:

  zfoundry train stage.toml                       (the stage's backend, default ray)

  zfoundry train stage.toml --backend local --steps 200 --set optim.lr=3e-4

  zfoundry train curriculum.toml --set ray.num_workers=4   (lowres -> omni -> sft)

  zfoundry cache-latents stage.toml --out cache/lowres
  zfoundry train stage.toml --set data.cache=cache/lowres

A stage file names the manifest (from zfoundry select), the model preset or pretrained
transformer, the encoders' pipeline folder and the optimiser settings; a curriculum file lists
stages ([[stages]]) that start from each other's final weights; see docs/training.md.
Re-running the same command skips finished stages and resumes from the newest checkpoint.
"""


@app.command(epilog=EXAMPLES)
def train(
    stage: Annotated[
        Path,
        typer.Argument(
            help="Stage TOML (trainer.config.StageConfig) or curriculum TOML (a list of stages, "
            "trainer.curriculum)."
        ),
    ],
    backend: Annotated[
        str | None, typer.Option(help="Training backend: ray or local (default: the file's, ray).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Override the stage's steps (not for a curriculum).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a stage field: KEY=VALUE (dotted, TOML value); in a curriculum, "
            "every stage's (backend and ray.* the curriculum's).",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train one stage, or a curriculum of stages in order, on its manifests' shards; writes
    checkpoints, metrics and the final weights to `out` and resumes where a run stopped."""
    from infra.config import ConfigError
    from trainer.config import load_stage
    from trainer.curriculum import is_curriculum, load_curriculum
    from trainer.registry import get_backend, run_curriculum

    try:
        overrides = _parse_set(set_ or [])
        if backend is not None:
            overrides["backend"] = backend
        if is_curriculum(stage):
            if steps is not None:
                raise ValueError("--steps names one stage's steps; in a curriculum, set each "
                                 "stage's steps in the file")  # fmt: skip
            curriculum = load_curriculum(stage, overrides)
        else:
            config = load_stage(stage, overrides | ({} if steps is None else {"steps": steps}))
    except (ConfigError, ValueError) as err:
        _fail(err)
    try:
        if is_curriculum(stage):
            names = " -> ".join(s.name for s in curriculum.stages)
            console.print(f"curriculum [bold]{names}[/bold] on backend "
                          f"{curriculum.backend!r} -> {curriculum.out}")  # fmt: skip
            summary = run_curriculum(curriculum)
        else:
            console.print(f"stage [bold]{config.name}[/bold] on backend {config.backend!r} "
                          f"-> {config.out}")  # fmt: skip
            summary = get_backend(config.backend).run(config)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        _fail(err)
    except Exception as err:  # Ray's own (TrainingFailedError: a worker's error, retries spent)
        if not type(err).__module__.startswith("ray."):
            raise
        _fail(err)
    print(json.dumps(summary, sort_keys=True))


@app.command("cache-latents")
def cache_latents(
    source: Annotated[
        Path,
        typer.Argument(
            help="A manifest.json (with --pipeline) or a stage TOML (its manifest, encoders "
            "and resolution settings)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Cache folder (then data.cache = it).")],
    pipeline: Annotated[
        str | None, typer.Option(help="Z-Image pipeline folder (with a manifest).")
    ] = None,
    latent_space: Annotated[str, typer.Option(help="vae or pixel (with a manifest).")] = "vae",
    resolution: Annotated[
        str, typer.Option(help="buckets or tokens (with a manifest).")
    ] = "buckets",
    min_tokens: Annotated[int, typer.Option(help="resolution=tokens: fewest tokens.")] = 256,
    max_tokens: Annotated[int, typer.Option(help="resolution=tokens: most tokens.")] = 4096,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N.")] = "cpu",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run the frozen VAE and text encoder over a manifest's shards once and store latents and
    caption features as Parquet; train from it with `--set data.cache=OUT`. Shards already
    cached with the same settings are skipped. The cache records its settings: a stage with
    other encoders or resolution settings refuses it."""
    from infra.config import ConfigError
    from trainer.cache import build_cache
    from trainer.config import DataConfig, EncoderConfig, load_stage
    from trainer.data import Manifest

    try:
        if source.suffix == ".json":
            if pipeline is None:
                raise ValueError("a manifest needs --pipeline (the encoders' folder)")
            encoders = EncoderConfig(pipeline=pipeline, latent_space=latent_space)
            data = DataConfig(resolution=resolution, min_tokens=min_tokens, max_tokens=max_tokens)
            manifest = Manifest.load(str(source))
        else:
            config = load_stage(source)
            encoders, data = config.encoders, config.data
            manifest = Manifest.load(str(config.manifest))
        counts = build_cache(manifest, encoders, data, out, device=device, progress=progress)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        _fail(err)
    print(json.dumps(counts, sort_keys=True))
