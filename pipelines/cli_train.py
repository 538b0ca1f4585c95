"""``zfoundry train``: one training stage (``trainer.config.StageConfig``) on a backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli import _fail, _parse_set, app, console

EXAMPLES = """Examples:

  zfoundry train stage.toml                       (the stage's backend, default local)

  zfoundry train stage.toml --backend local --steps 200 --set optim.lr=3e-4

  zfoundry cache-latents stage.toml --out cache/lowres
  zfoundry train stage.toml --set data.cache=cache/lowres

A stage file names the manifest (from zfoundry select), the model preset or pretrained
transformer, the encoders' pipeline folder and the optimiser settings; see docs/training.md.
Re-running the same command resumes from the newest complete checkpoint in `out`.
"""


@app.command(epilog=EXAMPLES)
def train(
    stage: Annotated[Path, typer.Argument(help="Stage TOML (trainer.config.StageConfig).")],
    backend: Annotated[
        str | None, typer.Option(help="Training backend (default: the stage's, 'local').")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Override the stage's steps.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a stage field: KEY=VALUE (dotted, TOML value)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train one stage on its manifest's shards; writes checkpoints and metrics to `out`."""
    from infra.config import ConfigError
    from trainer.config import load_stage
    from trainer.registry import get_backend

    try:
        overrides = _parse_set(set_ or [])
        if backend is not None:
            overrides["backend"] = backend
        if steps is not None:
            overrides["steps"] = steps
        _reject_curriculum(stage)
        config = load_stage(stage, overrides)
    except (ConfigError, ValueError) as err:
        _fail(err)
    console.print(f"stage [bold]{config.name}[/bold] on backend {config.backend!r} "
                  f"-> {config.out}")  # fmt: skip
    try:
        summary = get_backend(config.backend).run(config)
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    print(json.dumps(summary, sort_keys=True))


def _reject_curriculum(path: Path) -> None:
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return  # load_stage reports it with the file named
    if "stages" in data:
        raise ValueError(f"{path}: curriculum files ([[stages]]) run on the Ray backend, which "
                         "is not available yet; train each stage file on its own")  # fmt: skip


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
