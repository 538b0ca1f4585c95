"""``zfoundry sample``: images from a Z-Image checkpoint with ``model.pipeline.ZFoundryPipeline``
(text-to-image, image-to-image, reference-image editing)."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli import _fail, app, console

EXAMPLES = """Examples:

  zfoundry sample --checkpoint Z-Image-Turbo/ --prompt "a red fox in snow" --out fox.png

  zfoundry sample --checkpoint Z-Image/ --preset base --prompt "a poster" --negative "blurry"
  --size 768x1024 --seed 7 --num-images 4 --out poster.png   (writes poster_0.png .. poster_3.png)

  zfoundry sample --checkpoint Z-Image-Turbo/ --prompt "oil painting" --image in.png
  --strength 0.6 --out painted.png

  zfoundry sample --checkpoint Z-Image-Omni/ --prompt "put the cat on the sofa" --cfg 4
  --reference cat.png --reference sofa.png --out edit.png   (editing; needs siglip/)

  zfoundry sample --checkpoint runs/ckpt-2000/ --base Z-Image-Turbo/ --prompt "a cat" --out cat.png
  (a training checkpoint: transformer/ only; the other components come from --base)
"""

OUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
COMPONENTS = ("text_encoder", "tokenizer", "vae", "scheduler")


class Preset(StrEnum):
    turbo = "turbo"
    base = "base"


class DType(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


def parse_size(size: str, multiple: int) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` -> (width, height), both positive multiples of ``multiple``."""
    match = re.fullmatch(r"(\d+)[xX](\d+)", size.strip())
    if not match:
        raise ValueError(f"--size {size!r}: expected WIDTHxHEIGHT, e.g. 1024x768")
    width, height = int(match[1]), int(match[2])
    for name, value in (("width", width), ("height", height)):
        if value < multiple or value % multiple:
            raise ValueError(f"--size {size}: {name} {value} is not a multiple of {multiple}")
    return width, height


def resolve_checkpoint(checkpoint: Path, base: Path | None) -> tuple[Path, Path | None]:
    """(pipeline folder for the components, transformer folder replacing its own or None)."""
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such folder")
    if (checkpoint / "model_index.json").is_file():
        if base is not None:
            raise ValueError("--base is only for checkpoints that hold a transformer alone")
        return _pipeline_folder(checkpoint, "--checkpoint"), None
    if (checkpoint / "transformer" / "config.json").is_file():
        transformer = checkpoint / "transformer"
    elif (checkpoint / "config.json").is_file():
        transformer = checkpoint
    else:
        raise FileNotFoundError(
            f"--checkpoint {checkpoint}: neither a diffusers Z-Image pipeline folder "
            "(model_index.json) nor a training checkpoint (transformer/config.json)"
        )
    if base is None:
        raise ValueError(
            f"--checkpoint {checkpoint} holds only a transformer: pass --base DIR, a Z-Image "
            f"pipeline folder with {', '.join(f'{c}/' for c in COMPONENTS)}"
        )
    need_vae = _latent_space(transformer) == "vae"
    return _pipeline_folder(base, "--base", need_transformer=False, need_vae=need_vae), transformer


def _pipeline_folder(
    path: Path, flag: str, need_transformer: bool = True, need_vae: bool = True
) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{flag} {path}: no such folder")
    need = ("transformer", *COMPONENTS) if need_transformer else COMPONENTS
    need = tuple(c for c in need if need_vae or c != "vae")
    missing = [f"{c}/" for c in need if not (path / c).is_dir()]
    if missing:
        raise FileNotFoundError(f"{flag} {path}: missing {', '.join(missing)}")
    return path


def open_image(path: Path, flag: str):
    """The decoded image file (a PIL image); ``ValueError`` naming ``flag`` and the reason when
    it is not an image, truncated, or over PIL's decompression-bomb limit."""
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise ValueError(f"{flag} {path}: not a readable image ({err})") from None
    return image


def _check_vae_config(root: Path, flag: str) -> None:
    """``root/vae/config.json`` is a JSON object with ``block_out_channels`` (its scale)."""
    from model.s3dit import read_json_object

    file = root / "vae" / "config.json"
    try:
        channels = read_json_object(file).get("block_out_channels")
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"{flag} {root}: {err}") from None
    if not isinstance(channels, list) or not channels:
        raise ValueError(f"{flag} {root}: {file} has no block_out_channels list")


def output_paths(out: Path, n: int) -> list[Path]:
    """``out`` for one image, ``out_0``, ``out_1``, ... (same suffix) for several."""
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(n)]


def _quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@app.command(epilog=EXAMPLES)
def sample(
    checkpoint: Annotated[
        Path,
        typer.Option(
            help="A diffusers-format Z-Image pipeline folder (model_index.json, transformer/, "
            "text_encoder/, tokenizer/, vae/, scheduler/; siglip/ for --reference), or a "
            "training checkpoint (transformer/ only) together with --base."
        ),
    ],
    prompt: Annotated[list[str], typer.Option(help="Prompt; repeat for several.")],
    out: Annotated[Path, typer.Option(help="Output image; out_0.png, ... for several.")] = Path(
        "sample.png"
    ),
    negative: Annotated[
        list[str] | None,
        typer.Option(help="Negative prompt (needs --cfg > 0); once, or once per --prompt."),
    ] = None,
    preset: Annotated[
        Preset, typer.Option(help="turbo: 8 steps, no CFG; base: 50 steps, CFG 4.")
    ] = Preset.turbo,
    steps: Annotated[int | None, typer.Option(help="Euler steps (default: the preset's).")] = None,
    cfg: Annotated[
        float | None, typer.Option(help="Guidance g: cond + g (cond - uncond); 0 = off.")
    ] = None,
    cfg_normalization: Annotated[
        float | None, typer.Option(help="Cap |pred| at this times |cond| (0 = off).")
    ] = None,
    cfg_truncation: Annotated[
        float | None, typer.Option(help="No CFG at steps with t above this (1 = never).")
    ] = None,
    size: Annotated[
        str | None,
        typer.Option(help="WIDTHxHEIGHT, multiples of 16 (default: the input's, or 1024x1024)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first image; image i gets seed + i.")] = 0,
    num_images: Annotated[int, typer.Option(help="Images per prompt.")] = 1,
    image: Annotated[Path | None, typer.Option(help="Input image for image-to-image.")] = None,
    strength: Annotated[
        float, typer.Option(help="Image-to-image: share of the schedule re-noised, (0, 1].")
    ] = 0.6,
    reference: Annotated[
        list[Path] | None, typer.Option(help="Reference image for editing; repeat for several.")
    ] = None,
    base: Annotated[
        Path | None, typer.Option(help="Pipeline folder with the other components.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, or auto.")] = "auto",
    dtype: Annotated[DType, typer.Option(help="auto: bf16 on CUDA, fp32 on CPU.")] = DType.auto,
    tiling: Annotated[bool, typer.Option(help="Tiled VAE decoding (large images).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar per image batch.")] = True,
) -> None:
    """Generate images with the flow-matching Euler sampler (same results as diffusers'
    ZImagePipeline / ZImageImg2ImgPipeline / ZImageOmniPipeline for the same seed)."""
    from model.vae import pixel_multiple

    try:
        if image is not None and reference:
            raise ValueError("--image (image-to-image) excludes --reference (editing)")
        if not 0 < strength <= 1:
            raise ValueError(f"--strength {strength}: must be in (0, 1]")
        if num_images < 1:
            raise ValueError(f"--num-images {num_images}: must be >= 1")
        if out.suffix.lower() not in OUT_SUFFIXES:
            raise ValueError(f"--out {out}: the suffix must be one of {', '.join(OUT_SUFFIXES)}")
        for flag, path in [("--image", image), *(("--reference", r) for r in reference or [])]:
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"{flag} {path}: no such file")
        init = open_image(image, "--image") if image is not None else None
        refs = [open_image(r, "--reference") for r in reference] if reference else None
        root, transformer = resolve_checkpoint(checkpoint, base)
        if reference and not all((root / c).is_dir() for c in ("siglip", "siglip_processor")):
            raise FileNotFoundError(f"--reference needs siglip/ and siglip_processor/ in {root}")
        multiple = 16
        if _latent_space(transformer) == "vae":
            _check_vae_config(root, "--base" if base is not None else "--checkpoint")
            multiple = pixel_multiple(root)
        width, height = parse_size(size, multiple) if size else (None, None)
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    import torch

    from model.pipeline import ComponentError, ZFoundryPipeline

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if device.startswith("cuda") and not torch.cuda.is_available():
        _fail(ValueError(f"--device {device}: CUDA is not available on this machine"))
    if dtype is DType.auto:
        dtype = DType.bf16 if device.startswith("cuda") else DType.fp32
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    _quiet_libraries()
    console.print(f"[bold]zfoundry sample[/bold] {checkpoint} on {device} ({dtype.value})")
    try:
        pipe = ZFoundryPipeline.from_pretrained(
            root,
            transformer=transformer,
            latent_space=_latent_space(transformer),
            dtype=torch_dtype,
            device=device,
            vision=bool(reference) or None,
        )
        if tiling:
            pipe.vae.enable_tiling()
        result = pipe(
            prompt,
            negative_prompt=negative or None,
            preset=preset.value,
            steps=steps,
            guidance=cfg,
            cfg_normalization=cfg_normalization,
            cfg_truncation=cfg_truncation,
            height=height,
            width=width,
            seed=seed,
            num_images=num_images,
            image=init,
            strength=strength,
            references=refs,
            progress=progress,
        )
    except ComponentError as err:  # name the option the folder came from
        named = f"--checkpoint {checkpoint}"
        if base is not None and err.component != "transformer":
            named = f"--base {base}"
        _fail(ValueError(f"{named}: {err}"))
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    settings = {"checkpoint": str(checkpoint), "preset": preset.value, "steps": steps, "cfg": cfg}
    _save(result, out, prompt, num_images, settings)


def _latent_space(transformer: Path | None) -> str:
    """``pixel`` for a zfoundry training export made in the identity latent space."""
    if transformer is None:
        return "vae"
    from model.s3dit import read_json_object

    note = transformer.parent / "zfoundry_stage.json"
    return read_json_object(note).get("latent_space", "vae") if note.is_file() else "vae"


def _save(result, out: Path, prompts: list[str], num_images: int, settings: dict) -> None:
    """Write the images (PNGs carry prompt, seed and settings as a ``zfoundry`` text chunk)."""
    from PIL.PngImagePlugin import PngInfo

    out.parent.mkdir(parents=True, exist_ok=True)
    paths = output_paths(out, len(result.images))
    for i, (path, img) in enumerate(zip(paths, result.images, strict=True)):
        meta = {"prompt": prompts[i // num_images], "seed": result.seeds[i], **settings}
        info = PngInfo()
        info.add_text("zfoundry", json.dumps(meta))
        img.save(path, pnginfo=info) if path.suffix.lower() == ".png" else img.save(path)
        print(f"{path}\t{img.width}x{img.height}\tseed {result.seeds[i]}")
