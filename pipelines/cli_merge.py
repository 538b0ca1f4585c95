"""``zfoundry merge``: a weighted sum of transformer checkpoints (``trainer.merge``)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli import _fail, app, console

EXAMPLES = """Examples:

  zfoundry merge sft-a/final sft-b/final --out merged       (equal weights, 1/2 each)

  zfoundry merge a/final b/checkpoints/step-0004000 Z-Image-Turbo/ --weights 0.5,0.3,0.2
  --dtype bf16 --out merged

  zfoundry merge a/final b/final --weights 3,1 --normalize --out merged     (0.75, 0.25)

  zfoundry merge base/ sft/final --weights -0.5,1.5 --allow-negative --out extrapolated

  zfoundry sample --checkpoint merged --base Z-Image-Turbo/ --prompt "a cat" --out cat.png

A checkpoint is a transformer folder (config.json + safetensors) or a folder with one in
transformer/: a training final/ or checkpoints/step-N/, or a diffusers pipeline folder. The
output holds transformer/, zfoundry_merge.json (inputs, weights, sha256 of their files) and the
first zfoundry_stage.json among the inputs (so zfoundry sample keeps the latent space); it can
be merged again. The sum is taken in float32; see trainer/merge.py for every check.
"""


class MergeDType(StrEnum):
    same = "same"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


def parse_weights(text: str) -> list[float]:
    """``"0.25,0.75"`` -> [0.25, 0.75]."""
    weights = []
    for part in text.split(","):
        try:
            weights.append(float(part))
        except ValueError:
            raise ValueError(f"--weights {text!r}: {part.strip()!r} is not a number") from None
    return weights


@app.command(epilog=EXAMPLES)
def merge(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(help="Transformer folders, or folders with transformer/ (two or more)."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder (new, or with --overwrite).")],
    weights: Annotated[
        str | None,
        typer.Option(help="Comma-separated, one per checkpoint, summing to 1 (default: 1/n)."),
    ] = None,
    normalize: Annotated[
        bool, typer.Option("--normalize", help="Rescale the weights to sum to 1.")
    ] = False,
    allow_negative: Annotated[
        bool, typer.Option("--allow-negative", help="Allow negative weights (extrapolation).")
    ] = False,
    dtype: Annotated[
        MergeDType, typer.Option(help="Output dtype; same: the first checkpoint's.")
    ] = MergeDType.same,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out.")] = False,
) -> None:
    """Linear interpolation of the checkpoints' parameters (in float32), after checking that
    their configs, tensor names and shapes agree. Prints a JSON summary."""
    from trainer.merge import merge_checkpoints

    try:
        if len(checkpoints) < 2:
            raise ValueError(f"got {len(checkpoints)} checkpoint: merging needs two or more")
        parsed = parse_weights(weights) if weights is not None else None
        console.print(f"[bold]zfoundry merge[/bold] {len(checkpoints)} checkpoints -> {out}")
        summary = merge_checkpoints(
            checkpoints,
            parsed,
            out,
            dtype=dtype.value,
            normalize=normalize,
            allow_negative=allow_negative,
            overwrite=overwrite,
        )
    except (ValueError, OSError) as err:
        _fail(err)
    print(json.dumps(summary, sort_keys=True))
