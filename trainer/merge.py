"""Model merging: a weighted sum of transformer checkpoints, tensor by tensor (the Z-Image
report's merging of SFT models; ``zfoundry merge``).

Inputs (``resolve_transformer``): a diffusers-format transformer folder (``config.json`` +
``diffusion_pytorch_model.safetensors``, or shards with their ``.index.json``), or a folder
with one in ``transformer/``: a training ``out/final/``, a checkpoint
``out/checkpoints/step-N/`` or a Z-Image pipeline folder.

Checks, all before anything is written: the weights (one per checkpoint, finite, negative only
with ``allow_negative``, summing to 1 within ``SUM_TOLERANCE`` unless ``normalize`` rescales
them); every config field (missing fields count as ``S3DiT``'s defaults); the tensor names,
shapes and, for non-float tensors, dtypes; the latent space of the inputs' stage notes.

Arithmetic: ``merged = w_1 * t_1 + w_2 * t_2 + ...`` in float32, left to right, each product
rounded to float32 (no fused multiply-add), checkpoints with weight 0 skipped -- so weights
``1, 0`` reproduce the first checkpoint bit for bit. The result is cast to ``dtype``: ``same``
(each tensor's dtype in the first checkpoint), ``fp32``, ``bf16`` or ``fp16``. Non-float tensors
must be equal in every checkpoint and are copied. Memory: one output shard plus a tensor per
input (``safe_open`` reads one tensor at a time).

Output ``out/`` (written to ``.tmp-NAME`` and renamed): ``transformer/`` (the first checkpoint's
``config.json`` and safetensors, sharded like diffusers above ``max_shard_bytes``; loads with
``S3DiT.from_pretrained`` and diffusers' ``ZImageTransformer2DModel.from_pretrained``),
``zfoundry_merge.json`` (inputs, weights, sha256 of each input weights file) and the first
``zfoundry_stage.json`` among the inputs (the first checkpoint's if it has one), so
``zfoundry sample --checkpoint out --base PIPELINE`` samples in its latent space; ``out`` can
be merged again.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.s3dit import index_shards, read_json_object
from trainer.checkpoint import STAGE_FILE

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = f"{WEIGHTS_NAME}.index.json"
MERGE_FILE = "zfoundry_merge.json"
CLASS_NAMES = ("ZImageTransformer2DModel", "S3DiT")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FLOATS = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
SUM_TOLERANCE = 1e-6
MAX_LISTED = 10
MAX_SHARD_BYTES = 10 * 10**9  # diffusers' default max_shard_size, "10GB"


@dataclass(frozen=True)
class Source:
    """One input checkpoint: its transformer folder, config and tensors (from the headers)."""

    label: str  # "checkpoint 2 (path)", for messages
    path: Path
    transformer: Path
    config: dict[str, Any]
    files: dict[str, Path]  # tensor name -> safetensors file
    meta: dict[str, tuple[tuple[int, ...], str]]  # tensor name -> (shape, safetensors dtype)


def resolve_transformer(path: Path | str) -> Path:
    """The transformer folder of ``path``: itself (``config.json`` there) or ``path/transformer``
    (a training ``final/`` or ``checkpoints/step-N/``, a diffusers pipeline folder)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder")
    for folder in (path, path / "transformer"):
        if (folder / "config.json").is_file():
            return folder
    raise FileNotFoundError(
        f"{path}: not a transformer folder (config.json + safetensors) and no transformer/ in "
        "it (a training final/ or checkpoints/step-N/, or a diffusers pipeline folder)"
    )


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a diffusers transformer folder: one, or the index's shards."""
    index = folder / INDEX_NAME
    if index.is_file():
        names = index_shards(index)
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are missing: {missing}")
        return [folder / n for n in names]
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    found = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} nor {INDEX_NAME} (found: {found}); "
                            "only diffusers-format safetensors can be merged")  # fmt: skip


def check_weights(
    weights: Sequence[float] | None,
    n: int,
    *,
    normalize: bool = False,
    allow_negative: bool = False,
) -> list[float]:
    """One finite weight per checkpoint (default 1/n), summing to 1 (or rescaled to)."""
    if n < 1:
        raise ValueError("no checkpoints to merge")
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights {weights} for {n} checkpoints: give one each")
    for i, w in enumerate(weights, 1):
        if not math.isfinite(w):
            raise ValueError(f"weight {i} is {w}: weights must be finite")
        if w < 0 and not allow_negative:
            raise ValueError(f"weight {i} is {w}: negative weights extrapolate; pass "
                             "--allow-negative (allow_negative=True) to mean it")  # fmt: skip
    total = math.fsum(weights)
    if normalize:
        if abs(total) < SUM_TOLERANCE:
            raise ValueError(f"weights {weights} sum to {total}: cannot normalize them")
        return [w / total for w in weights]
    if abs(total - 1) > SUM_TOLERANCE:
        raise ValueError(f"weights {weights} sum to {total}, not 1; pass --normalize "
                         "(normalize=True) to rescale them")  # fmt: skip
    return weights


def load_source(path: Path | str, index: int) -> Source:
    """Resolve one input and read its config and safetensors headers (no tensor data)."""
    transformer = resolve_transformer(path)
    label = f"checkpoint {index} ({path})"
    try:
        config = read_json_object(transformer / "config.json")
        name = config.get("_class_name", CLASS_NAMES[0])
        if name not in CLASS_NAMES:
            raise ValueError(f"{transformer / 'config.json'} is a {name}, not a Z-Image "
                             f"transformer ({' / '.join(CLASS_NAMES)})")  # fmt: skip
        files_to_read = weight_files(transformer)
    except ValueError as err:
        raise ValueError(f"{label}: {err}") from None
    files: dict[str, Path] = {}
    meta: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in files_to_read:
        try:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    if key in files:
                        raise ValueError(f"{label}: tensor {key!r} is in {files[key].name} "
                                         f"and {file.name}")  # fmt: skip
                    piece = f.get_slice(key)
                    files[key], meta[key] = file, (tuple(piece.get_shape()), piece.get_dtype())
        except (OSError, SafetensorError) as err:
            raise ValueError(f"{label}: cannot read {file}: {err}") from err
    return Source(label, Path(path), transformer, config, files, meta)


def _architecture(config: dict[str, Any]) -> dict[str, Any]:
    """Public config fields, S3DiT's defaults for missing ones, lists as tuples."""
    import inspect

    from model.s3dit import S3DiT

    params = inspect.signature(S3DiT.__init__).parameters.values()
    fields = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    fields.update({k: v for k, v in config.items() if not k.startswith("_")})
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def check_sources(sources: list[Source]) -> None:
    """Configs, tensor names, shapes and non-float dtypes agree with the first checkpoint's."""
    first = sources[0]
    arch = _architecture(first.config)
    for src in sources[1:]:
        other = _architecture(src.config)
        keys = [k for k in sorted(arch.keys() | other.keys()) if arch.get(k) != other.get(k)]
        diff = [f"{k} = {other.get(k)!r} vs {arch.get(k)!r}" for k in keys]
        if diff:
            raise ValueError(f"config of {src.label} differs from {first.label}: {'; '.join(diff)}")
        missing, extra = sorted(first.meta.keys() - src.meta), sorted(src.meta.keys() - first.meta)
        if missing or extra:
            raise ValueError(f"{src.label} has other tensors than {first.label}: "
                             f"missing {_listed(missing)}; extra {_listed(extra)}")  # fmt: skip
        for key, (shape, dtype) in first.meta.items():
            other_shape, other_dtype = src.meta[key]
            floats = dtype in FLOATS and other_dtype in FLOATS
            if other_shape != shape or (not floats and other_dtype != dtype):
                got, want = f"{other_dtype} {list(other_shape)}", f"{dtype} {list(shape)}"
                raise ValueError(
                    f"tensor {key!r}: {got} in {src.label} but {want} in {first.label}"
                )


def _listed(keys: list[str]) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return f"{len(keys)}: {', '.join(keys[:MAX_LISTED])}{more}"


def _stage_note(sources: list[Source]) -> Path | None:
    """The first stage note among the inputs (``final/`` has one, ``checkpoints/step-N/`` and
    released folders do not); the notes present must agree on the latent space."""
    notes = {s.label: s.transformer.parent / STAGE_FILE for s in sources}
    notes = {label: note for label, note in notes.items() if note.is_file()}
    spaces = {}
    for label, note in notes.items():
        try:
            spaces[label] = read_json_object(note).get("latent_space", "vae")
        except ValueError as err:
            raise ValueError(f"{label}: {err}") from None
    if len(set(spaces.values())) > 1:
        raise ValueError(f"the checkpoints were trained in different latent spaces: {spaces}")
    return next(iter(notes.values()), None)


def merge_checkpoints(
    paths: Sequence[Path | str],
    weights: Sequence[float] | None,
    out: Path | str,
    *,
    dtype: str = "same",
    normalize: bool = False,
    allow_negative: bool = False,
    overwrite: bool = False,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> dict[str, Any]:
    """Write ``sum_i weights[i] * checkpoint_i`` to ``out`` (see the module docstring);
    returns the summary (``zfoundry_merge.json`` plus ``out``)."""
    if dtype != "same" and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose same, {', '.join(DTYPES)}")
    weights = check_weights(weights, len(paths), normalize=normalize, allow_negative=allow_negative)
    sources = [load_source(p, i) for i, p in enumerate(paths, 1)]
    check_sources(sources)
    note = _stage_note(sources)
    out = Path(out)
    _check_out(out, sources, overwrite)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "transformer").mkdir(parents=True)
    try:
        shutil.copyfile(sources[0].transformer / "config.json", tmp / "transformer" / "config.json")
        written = _write_merged(sources, weights, dtype, tmp / "transformer", max_shard_bytes)
        if note is not None:
            shutil.copyfile(note, tmp / STAGE_FILE)
        summary = {
            "method": "linear",
            "inputs": [
                {
                    "path": str(s.path),
                    "transformer": str(s.transformer.resolve()),
                    "weight": w,
                    "sha256": {
                        str(f.relative_to(s.transformer)): _sha256(f)
                        for f in sorted(set(s.files.values()))
                    },
                }
                for s, w in zip(sources, weights, strict=True)
            ],
            "weights": weights,
            "normalized": normalize,
            "dtype": dtype,
            "stage_note": str(note) if note is not None else None,
            **written,
        }
        (tmp / MERGE_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".old-{out.name}")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return {**summary, "out": str(out)}


def _check_out(out: Path, sources: list[Source], overwrite: bool) -> None:
    target = out.resolve()
    for src in sources:
        for folder in (src.path.resolve(), src.transformer.resolve()):
            if folder == target or target in folder.parents or folder in target.parents:
                raise ValueError(f"--out {out} overlaps {src.label}: write the merge elsewhere")
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it")


def _merged(key: str, sources: list[Source], weights: list[float], opened, dtype: str):
    """One output tensor: the weighted float32 sum, cast; non-float tensors copied."""
    first_dtype = sources[0].meta[key][1]
    if first_dtype not in FLOATS or any(s.meta[key][1] not in FLOATS for s in sources):
        tensors = [opened[s.files[key]].get_tensor(key) for s in sources]
        for src, t in zip(sources[1:], tensors[1:], strict=True):
            if not torch.equal(t, tensors[0]):
                raise ValueError(f"non-float tensor {key!r} differs between {src.label} and "
                                 f"{sources[0].label}: it cannot be interpolated")  # fmt: skip
        return tensors[0]
    acc = None
    for src, w in zip(sources, weights, strict=True):
        if w == 0:
            continue
        term = opened[src.files[key]].get_tensor(key).float() * w  # (shape), float32
        acc = term if acc is None else acc.add_(term)
    target = FLOATS[first_dtype] if dtype == "same" else DTYPES[dtype]
    return acc.to(target).contiguous()


def _write_merged(
    sources: list[Source], weights: list[float], dtype: str, folder: Path, max_shard_bytes: int
) -> dict[str, Any]:
    """Merge every tensor into shards of at most ``max_shard_bytes`` (diffusers' names)."""
    shard_keys: list[list[str]] = []
    shard: dict[str, torch.Tensor] = {}
    size = total = params = 0
    with ExitStack() as stack:
        opened = {f: stack.enter_context(safe_open(f, framework="pt"))
                  for s in sources for f in sorted(set(s.files.values()))}  # fmt: skip
        for key in sorted(sources[0].meta):
            tensor = _merged(key, sources, weights, opened, dtype)
            nbytes = tensor.numel() * tensor.element_size()
            if shard and size + nbytes > max_shard_bytes:
                shard_keys.append(_flush(shard, folder, len(shard_keys)))
                shard, size = {}, 0
            shard[key], size = tensor, size + nbytes
            total, params = total + nbytes, params + tensor.numel()
        shard_keys.append(_flush(shard, folder, len(shard_keys)))
    n = len(shard_keys)
    names = [WEIGHTS_NAME] if n == 1 else [
        WEIGHTS_NAME.replace(".safetensors", f"-{i:05d}-of-{n:05d}.safetensors")
        for i in range(1, n + 1)
    ]  # fmt: skip
    weight_map = {}
    for i, (name, keys) in enumerate(zip(names, shard_keys, strict=True)):
        (folder / f"shard-{i:05d}.tmp").rename(folder / name)
        weight_map.update(dict.fromkeys(keys, name))
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return {"tensors": len(weight_map), "parameters": params, "files": names}


def _flush(shard: dict[str, torch.Tensor], folder: Path, i: int) -> list[str]:
    """Write one shard under a temporary name (renamed once the shard count is known)."""
    save_file(shard, folder / f"shard-{i:05d}.tmp", metadata={"format": "pt"})
    return list(shard)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()
