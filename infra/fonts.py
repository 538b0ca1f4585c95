"""Font discovery: one ``find_font(script)`` for the renderers that draw text on images.

``script`` is ``"latin"`` or ``"cjk"``. The search order is:

1. an explicit ``path`` (it must exist and PIL must load it, else ``FontNotFound`` names it;
   for ``"cjk"`` it must also draw CJK glyphs);
2. the environment variable ``ZFOUNDRY_FONT`` (latin) / ``ZFOUNDRY_CJK_FONT`` (cjk);
3. for cjk, ``fc-list :lang=zh file`` when fontconfig is installed;
4. common system paths (Debian/Ubuntu ``fonts-wqy-zenhei``, ``fonts-noto-cjk``; DejaVu Sans
   for latin);
5. the ``mplfonts`` package's bundled Noto Sans CJK SC (a dependency, so rendered Chinese
   works on machines without system fonts; also the latin fallback of last resort).

A cjk candidate counts only if it really has CJK glyphs: "中" must render non-empty and
differently from a private-use codepoint that no font maps (its .notdef box). The search
(steps 2-5) is cached per script; an explicit path is checked every call.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFont

SCRIPTS = ("latin", "cjk")
ENV_VARS = {"latin": "ZFOUNDRY_FONT", "cjk": "ZFOUNDRY_CJK_FONT"}
SYSTEM_PATHS = {
    "latin": (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    ),
    "cjk": (
        "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
        "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
        "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
        "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
        "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
        "/System/Library/Fonts/PingFang.ttc",
        "C:/Windows/Fonts/msyh.ttc",
    ),
}
MPLFONTS_FILE = "NotoSansCJKsc-Regular.otf"
FIX_HINTS = {
    "latin": "`apt-get install fonts-dejavu-core`",
    "cjk": "`apt-get install fonts-wqy-zenhei` or `apt-get install fonts-noto-cjk`",
}
_PROBE_CJK = "中"
_PROBE_MISSING = "\U000f0000"  # supplementary private use: mapped by no ordinary font


class FontNotFound(FileNotFoundError):
    """No usable font for a script, or an explicit font path that cannot be used."""


def find_font(script: str = "latin", path: str | None = None) -> str:
    """Path of a font file that PIL can load and that draws ``script`` ("latin" / "cjk")."""
    if script not in SCRIPTS:
        raise ValueError(f"script must be one of {SCRIPTS}, got {script!r}")
    if path is not None:
        problem = _problem(path, script)
        if problem:
            raise FontNotFound(f"font path {path!r} {problem}")
        return str(path)
    return _search(script)


@functools.cache  # = lru_cache(maxsize=None)
def _search(script: str) -> str:
    env = ENV_VARS[script]
    tried: list[str] = []
    env_path = os.environ.get(env)
    if env_path:
        problem = _problem(env_path, script)
        if problem:  # a set but broken env var is a mistake to report, not to skip past
            raise FontNotFound(f"{env}={env_path!r} {problem}")
        return env_path
    tried.append(f"${env} (unset)")
    candidates = [*(_fc_list_cjk() if script == "cjk" else []), *SYSTEM_PATHS[script]]
    mpl = _mplfonts_path()
    for cand in [*candidates, *([mpl] if mpl else [])]:
        if _problem(cand, script) is None:
            return cand
        tried.append(cand)
    if mpl is None:
        tried.append("the mplfonts package (not installed)")
    raise FontNotFound(
        f"no {script} font found; searched: {', '.join(tried)}. To fix: "
        f"{FIX_HINTS[script]}, or `pip install mplfonts` (ships Noto Sans CJK, which also "
        f"covers latin), or set {env} to a font file"
    )


def _fc_list_cjk() -> list[str]:
    """Font files fontconfig says cover Chinese (empty when fc-list is absent or fails)."""
    exe = shutil.which("fc-list")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, ":lang=zh", "file"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    files = (line.strip().rstrip(":").strip() for line in out.splitlines())
    return sorted({f for f in files if f})


def _mplfonts_path() -> str | None:
    try:
        import mplfonts
    except ImportError:
        return None
    return str(Path(mplfonts.__file__).parent / "fonts" / MPLFONTS_FILE)


def _problem(path: str, script: str) -> str | None:
    """Why ``path`` is not a usable ``script`` font, or None when it is."""
    if not Path(path).is_file():
        return "does not exist"
    try:
        font = ImageFont.truetype(path, 32)
    except OSError as e:
        return f"cannot be loaded by PIL ({e})"
    if script == "cjk" and not has_cjk_glyphs(font):
        return "has no CJK glyphs"
    return None


def has_cjk_glyphs(font: ImageFont.FreeTypeFont) -> bool:
    """True when "中" draws ink that differs from the font's missing-glyph box."""
    cjk, missing = _draw(font, _PROBE_CJK), _draw(font, _PROBE_MISSING)
    return cjk.getbbox() is not None and ImageChops.difference(cjk, missing).getbbox() is not None


def _draw(font: ImageFont.FreeTypeFont, text: str) -> Image.Image:
    img = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(img).text((8, 8), text, font=font, fill=255)
    return img
