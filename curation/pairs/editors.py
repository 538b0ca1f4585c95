"""Expert edits without weights: deterministic image editors that know what they did.

An :class:`Editor` turns an image into an edited image and the :class:`Operation` it
applied. An operation carries its parameters and says, in English and Chinese, the
instruction that performs it and the instruction that undoes it, so every pair built from
edits (``curation.pairs.combine``) gets an exact instruction without asking a model.

Built-in editors (all seeded, no weights): ``tone`` (brighter / darker / more or less
contrast or saturation), ``tint`` (a colour cast), ``recolour`` (one half or the centre of the
image turned a named colour), ``zoom`` (crop the centre and scale back up), ``flip``,
``rotate`` (90/180/270 degrees), ``blur_background`` (everything outside a centred ellipse),
``style`` (black and white, sepia, posterised, pencil sketch), ``add_text`` (a rendered word
or phrase, English or Chinese) and ``add_shape`` (a rendered coloured shape).

A real expert model plugs in through the same interface: :class:`DiffusersEditor` loads a
diffusers image-editing pipeline from a path and applies an instruction; its operation is
``expert_model`` with the instruction as given, and its inverse is unknown (pairs built from
it in the inverse direction get their instruction from the captioner's difference captions).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter, ImageOps

COLOURS = {  # name -> (RGB, Chinese name)
    "red": ((220, 30, 30), "红色"),
    "blue": ((30, 70, 220), "蓝色"),
    "green": ((30, 160, 60), "绿色"),
    "yellow": ((240, 210, 30), "黄色"),
    "purple": ((140, 50, 180), "紫色"),
    "orange": ((245, 130, 20), "橙色"),
}
REGIONS = {  # name -> (box as fractions, Chinese name)
    "left half": ((0.0, 0.0, 0.5, 1.0), "左半部分"),
    "right half": ((0.5, 0.0, 1.0, 1.0), "右半部分"),
    "top half": ((0.0, 0.0, 1.0, 0.5), "上半部分"),
    "bottom half": ((0.0, 0.5, 1.0, 1.0), "下半部分"),
    "centre": ((0.25, 0.25, 0.75, 0.75), "中央区域"),
}
CORNERS = {  # name -> (anchor as fractions, Chinese name)
    "top left": ((0.06, 0.06), "左上角"),
    "top right": ((0.94, 0.06), "右上角"),
    "bottom left": ((0.06, 0.94), "左下角"),
    "bottom right": ((0.94, 0.94), "右下角"),
}
WORDS = ["SALE", "OPEN", "HELLO", "CAFE", "EXIT", "FRESH", "NEW", "STOP"]
WORDS_ZH = ["欢迎", "出口", "新品", "咖啡", "营业中", "促销"]


@dataclass(frozen=True)
class Operation:
    """One applied edit: ``op`` + ``params``, with its instruction and inverse in en and zh.
        ``zh`` / ``inverse_en`` are None when unknown (an expert model's instruction is given in
    one language and cannot be described backwards)."""

    op: str
    params: dict[str, Any]
    en: str
    zh: str | None
    inverse_en: str | None
    inverse_zh: str | None

    def record(self) -> dict[str, Any]:
        """The JSON form stored in ``edit_pairs.operations``."""
        return {"op": self.op, **self.params}


class Editor:
    """Base class: ``edit(image, rng) -> (edited RGB image, operation)``."""

    name: str = ""

    def edit(self, image: Image.Image, rng: random.Random) -> tuple[Image.Image, Operation]:
        raise NotImplementedError


# -- the built-in editors ------------------------------------------------------------------
@dataclass
class Tone(Editor):
    name: str = "tone"

    def edit(self, image, rng):
        kind, up = rng.choice(["brightness", "contrast", "saturation"]), rng.random() < 0.5
        factor = rng.uniform(1.35, 1.6) if up else rng.uniform(0.55, 0.7)
        enhancer = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
                    "saturation": ImageEnhance.Color}[kind]  # fmt: skip
        words = {  # (more, less) in en and zh
            "brightness": (("brighter", "更亮"), ("darker", "更暗")),
            "contrast": (("higher in contrast", "对比度更高"), ("lower in contrast", "对比度更低")),
            "saturation": (("more saturated", "色彩更鲜艳"), ("less saturated", "色彩更淡")),
        }[kind]
        do, undo = (words[0], words[1]) if up else (words[1], words[0])
        op = Operation("tone", {"kind": kind, "factor": round(factor, 3)},
                       f"Make the image {do[0]}", f"让图片{do[1]}",
                       f"Make the image {undo[0]}", f"让图片{undo[1]}")  # fmt: skip
        return enhancer(image).enhance(factor), op


@dataclass
class Tint(Editor):
    name: str = "tint"

    def edit(self, image, rng):
        colour = rng.choice(sorted(COLOURS))
        rgb, zh = COLOURS[colour]
        out = Image.blend(image, Image.new("RGB", image.size, rgb), 0.3)
        op = Operation("tint", {"colour": colour}, f"Give the image a {colour} tint",
                       f"给图片加上{zh}色调", f"Remove the {colour} tint",
                       f"去掉图片的{zh}色调")  # fmt: skip
        return out, op


@dataclass
class Recolour(Editor):
    name: str = "recolour"

    def edit(self, image, rng):
        region, colour = rng.choice(sorted(REGIONS)), rng.choice(sorted(COLOURS))
        (fx0, fy0, fx1, fy1), region_zh = REGIONS[region]
        rgb, colour_zh = COLOURS[colour]
        w, h = image.size
        box = (int(fx0 * w), int(fy0 * h), int(fx1 * w), int(fy1 * h))
        part = image.crop(box)
        grey = ImageOps.grayscale(part)
        tinted = ImageOps.colorize(grey, black=(0, 0, 0), white=rgb, mid=None)
        out = image.copy()
        out.paste(Image.blend(part, tinted, 0.75), box)
        op = Operation("recolour", {"region": region, "colour": colour},
                       f"Turn the {region} of the image {colour}",
                       f"把图片的{region_zh}变成{colour_zh}",
                       f"Restore the original colours of the {region} of the image",
                       f"恢复图片{region_zh}原来的颜色")  # fmt: skip
        return out, op


@dataclass
class Zoom(Editor):
    name: str = "zoom"

    def edit(self, image, rng):
        keep = rng.choice([0.6, 0.7, 0.8])
        w, h = image.size
        cw, ch = int(w * keep), int(h * keep)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        out = image.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BICUBIC)
        op = Operation("zoom", {"keep": keep}, "Zoom in on the centre of the image",
                       "放大图片的中心部分", "Zoom out to show the whole scene",
                       "缩小画面，显示整个场景")  # fmt: skip
        return out, op


@dataclass
class Flip(Editor):
    name: str = "flip"

    def edit(self, image, rng):
        instr = ("Flip the image horizontally", "将图片水平翻转")
        return ImageOps.mirror(image), Operation("flip", {"axis": "horizontal"}, *instr, *instr)


@dataclass
class Rotate(Editor):
    name: str = "rotate"

    def edit(self, image, rng):
        angle = rng.choice([90, 180, 270])  # clockwise
        out = image.rotate(-angle, expand=True)
        text = {90: ("90 degrees clockwise", "顺时针旋转90度"),
                180: ("180 degrees", "旋转180度"),
                270: ("90 degrees counterclockwise", "逆时针旋转90度")}  # fmt: skip
        back = {90: 270, 180: 180, 270: 90}[angle]
        op = Operation("rotate", {"degrees_clockwise": angle},
                       f"Rotate the image {text[angle][0]}", f"将图片{text[angle][1]}",
                       f"Rotate the image {text[back][0]}", f"将图片{text[back][1]}")  # fmt: skip
        return out, op


@dataclass
class BlurBackground(Editor):
    name: str = "blur_background"

    def edit(self, image, rng):
        radius = rng.choice([6, 8, 10])
        w, h = image.size
        mask = Image.new("L", image.size, 0)
        ImageDraw.Draw(mask).ellipse((w * 0.25, h * 0.2, w * 0.75, h * 0.8), fill=255)
        mask = mask.filter(ImageFilter.GaussianBlur(max(w, h) / 40))
        out = Image.composite(image, image.filter(ImageFilter.GaussianBlur(radius)), mask)
        op = Operation("blur_background", {"radius": radius}, "Blur the background",
                       "把背景虚化", "Make the background sharp again",
                       "让背景重新变清晰")  # fmt: skip
        return out, op


def _sepia(image: Image.Image) -> Image.Image:
    return ImageOps.colorize(ImageOps.grayscale(image), (40, 26, 13), (255, 240, 192))


def _sketch(image: Image.Image) -> Image.Image:
    grey = ImageOps.grayscale(image)
    edges = ImageOps.invert(grey.filter(ImageFilter.FIND_EDGES))
    return ImageChops.multiply(edges, ImageOps.autocontrast(grey)).convert("RGB")


STYLES: dict[str, tuple[Callable[[Image.Image], Image.Image], tuple[str, str, str, str]]] = {
    "black_and_white": (
        lambda im: ImageOps.grayscale(im).convert("RGB"),
        ("Convert the image to black and white", "把图片变成黑白的",
         "Restore the colours of the image", "恢复图片的颜色"),
    ),
    "sepia": (_sepia, ("Apply a sepia filter", "添加复古的棕褐色滤镜",
                       "Remove the sepia filter", "去掉棕褐色滤镜")),
    "posterize": (
        lambda im: ImageOps.posterize(im, 2),
        ("Make it look like a poster with flat colours", "把图片变成色块分明的海报风格",
         "Restore the smooth colours of the photo", "恢复照片平滑的色彩"),
    ),
    "sketch": (_sketch, ("Turn the image into a pencil sketch", "把图片变成铅笔素描",
                         "Turn the sketch back into a colour photo", "把素描还原成彩色照片")),
}  # fmt: skip


@dataclass
class Style(Editor):
    name: str = "style"
    style: str | None = None  # one of STYLES; None: drawn per image

    def edit(self, image, rng):
        style = self.style or rng.choice(sorted(STYLES))
        fn, texts = STYLES[style]
        return fn(image), Operation("style", {"style": style}, *texts)


@dataclass
class AddText(Editor):
    """A rendered word (English, or Chinese with probability ``zh_prob``) in a corner."""

    name: str = "add_text"
    zh_prob: float = 0.3

    def edit(self, image, rng):
        from infra.fonts import find_font

        zh = rng.random() < self.zh_prob
        text = rng.choice(WORDS_ZH if zh else WORDS)
        corner = rng.choice(sorted(CORNERS))
        colour = rng.choice(sorted(COLOURS))
        font = find_font("cjk" if zh else "latin")
        out, _ = _draw_in_corner(image, text, font, corner, COLOURS[colour][0])
        corner_zh, colour_zh = CORNERS[corner][1], COLOURS[colour][1]
        op = Operation("add_text", {"text": text, "corner": corner, "colour": colour},
                       f'Add the {colour} text "{text}" in the {corner} corner',
                       f"在{corner_zh}添加{colour_zh}文字“{text}”",
                       f'Remove the text "{text}"', f"删除文字“{text}”")  # fmt: skip
        return out, op


def _corner_xy(
    corner: str, size: tuple[int, int], image_size: tuple[int, int], pad: int = 0
) -> tuple[int, int]:
    """Top-left position of a ``size`` box at ``corner`` of the image, ``pad`` px inside."""
    (ax, ay), _ = CORNERS[corner]
    (bw, bh), (w, h) = size, image_size
    x = int(min(max(ax * w - bw * (ax > 0.5), pad), w - bw - pad))
    y = int(min(max(ay * h - bh * (ay > 0.5), pad), h - bh - pad))
    return x, y


def _draw_in_corner(image, text, font, corner, rgb, size=None, boxed=False):
    """``text`` in ``corner``, shrunk until it fits; ``boxed``: on a plate that contrasts
    with the text colour (white behind dark text, near-black behind light text)."""
    from curation.text_render import measure_text, render_text

    plate = None
    if boxed:
        light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140
        plate = (30, 30, 30) if light else (255, 255, 255)

    w, h = image.size
    size = size or max(14, min(w, h) // 9)
    pad = 8 if boxed else 0
    for _ in range(6):  # shrink until it fits
        tw, th = measure_text(text, font=font, size=size)
        if tw + 2 * pad > w or th + 2 * pad > h:
            size = int(size * 0.8)
            continue
        x, y = _corner_xy(corner, (tw, th), image.size, pad)
        return render_text(image, text, font=font, size=size, colour=rgb, position=(x, y),
                           background=plate, padding=pad)  # fmt: skip
    raise ValueError(f"text {text!r} does not fit into a {w}x{h} image")


@dataclass
class AddShape(Editor):
    name: str = "add_shape"

    def edit(self, image, rng):
        shape, colour = rng.choice(["circle", "square"]), rng.choice(sorted(COLOURS))
        corner = rng.choice(sorted(CORNERS))
        w, h = image.size
        side = min(w, h) // 5
        corner_zh = CORNERS[corner][1]
        x, y = _corner_xy(corner, (side, side), image.size)
        out = image.copy()
        draw = ImageDraw.Draw(out)
        rgb, colour_zh = COLOURS[colour]
        (draw.ellipse if shape == "circle" else draw.rectangle)(
            (x, y, x + side, y + side), fill=rgb
        )
        shape_zh = {"circle": "圆形", "square": "正方形"}[shape]
        op = Operation("add_shape", {"shape": shape, "colour": colour, "corner": corner},
                       f"Add a {colour} {shape} in the {corner} corner",
                       f"在{corner_zh}添加一个{colour_zh}{shape_zh}",
                       f"Remove the {colour} {shape}", f"去掉{colour_zh}{shape_zh}")  # fmt: skip
        return out, op


BUILTIN: dict[str, type[Editor]] = {
    cls.name: cls
    for cls in (Tone, Tint, Recolour, Zoom, Flip, Rotate, BlurBackground, Style, AddText, AddShape)
}


@dataclass
class DiffusersEditor(Editor):
    """A real expert model: a diffusers image-editing pipeline (e.g. InstructPix2Pix, or a
    Qwen-Image-Edit / FLUX Kontext class model) loaded from ``path``, applying one of
    ``instructions`` per image. Its inverse is unknown."""

    path: str = ""
    instructions: tuple[str, ...] = ()
    steps: int = 20
    name: str = "expert_model"
    _pipe: Any = field(default=None, init=False, repr=False)

    def load(self) -> None:
        from pathlib import Path

        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"expert editor: pipeline folder {self.path!r} not found")
        if not self.instructions:
            raise ValueError("expert editor: instructions must list at least one instruction")
        from diffusers import DiffusionPipeline

        self._pipe = DiffusionPipeline.from_pretrained(self.path)

    def edit(self, image, rng):
        import torch

        if self._pipe is None:
            self.load()
        instruction = rng.choice(list(self.instructions))
        generator = torch.Generator().manual_seed(rng.randrange(2**31))
        out = self._pipe(prompt=instruction, image=image, num_inference_steps=self.steps,
                         generator=generator).images[0]  # fmt: skip
        op = Operation("expert_model", {"model": self.path, "instruction": instruction},
                       instruction, None, None, None)  # fmt: skip
        return out.convert("RGB").resize(image.size), op
