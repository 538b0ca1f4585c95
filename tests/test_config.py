"""Tests for infra.config: TOML -> frozen kw_only dataclasses, with precise error messages."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from infra.config import ConfigError, field_docs, from_dict, load_toml, require, to_dict


@dataclass(frozen=True, kw_only=True)
class Profile:
    jpeg_quality: int = 85
    """JPEG quality of re-encoded images, 1-100."""
    max_side: float = 1024.0
    """Longest image side in pixels."""
    mode: Literal["fast", "exact"] = "fast"
    """Resize mode."""

    def __post_init__(self) -> None:
        q = self.jpeg_quality
        require(1 <= q <= 100, "jpeg_quality", q, "must be in [1, 100]")


@dataclass(frozen=True, kw_only=True)
class Source:
    path: Path
    """Input directory."""
    weight: float = 1.0
    """Sampling weight."""
    label: str | None = None


@dataclass(frozen=True, kw_only=True)
class Ingest:
    name: str
    """Run name (required)."""
    dry_run: bool = False
    """Plan only, write nothing."""
    out_dir: Path = Path("out")
    """Output directory."""
    limit: int | None = None
    """Stop after this many items; None for no limit."""
    tags: tuple[str, ...] = ()
    """Free-form tags."""
    extra: dict[str, int] = field(default_factory=dict)
    """Extra integer knobs."""
    profile: Profile = field(default_factory=Profile)
    """Image profile."""
    sources: list[Source] = field(default_factory=list)
    """Input sources, an array of tables."""
    derived: str = field(init=False, default="")
    """Computed from name; not a config key."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "derived", self.name.upper())


FULL = """
name = "run1"
dry_run = true
out_dir = "/data/out"
limit = 10
tags = ["a", "b"]
extra = { x = 1 }

[profile]
jpeg_quality = 70
max_side = 512
mode = "exact"

[[sources]]
path = "/data/s0"

[[sources]]
path = "/data/s1"
weight = 2
label = "second"
"""


def write(tmp_path: Path, text: str, name: str = "pipeline.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str, **kwargs) -> tuple[Path, str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_toml(Ingest, path, **kwargs)
    return path, str(exc.value)


def test_load_full_config_coerces_types(tmp_path: Path) -> None:
    cfg = load_toml(Ingest, write(tmp_path, FULL))
    assert cfg.name == "run1"
    assert cfg.dry_run is True
    assert cfg.limit == 10
    assert cfg.out_dir == Path("/data/out")
    assert isinstance(cfg.out_dir, Path)
    assert cfg.tags == ("a", "b")
    assert isinstance(cfg.tags, tuple)
    assert cfg.extra == {"x": 1}
    assert cfg.profile == Profile(jpeg_quality=70, max_side=512.0, mode="exact")
    assert cfg.sources == [
        Source(path=Path("/data/s0")),
        Source(path=Path("/data/s1"), weight=2.0, label="second"),
    ]
    assert cfg.derived == "RUN1"


def test_defaults_and_optional_none(tmp_path: Path) -> None:
    cfg = load_toml(Ingest, write(tmp_path, 'name = "r"'))
    assert cfg == Ingest(name="r")
    assert cfg.limit is None
    assert cfg.profile.jpeg_quality == 85
    assert cfg.sources == []
    assert from_dict(Ingest, {"name": "r", "limit": None}).limit is None


def test_int_accepted_for_float_and_converted(tmp_path: Path) -> None:
    cfg = load_toml(Ingest, write(tmp_path, FULL))
    assert type(cfg.profile.max_side) is float
    assert cfg.profile.max_side == 512.0
    assert type(cfg.sources[1].weight) is float
    assert cfg.sources[1].weight == 2.0


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path, msg = load_error(tmp_path, 'name = "r"\nnmae = "x"')
    assert msg == (
        f"{path}: unknown key 'nmae' (did you mean 'name'?); valid keys: "
        "dry_run, extra, limit, name, out_dir, profile, sources, tags"
    )


def test_unknown_nested_key(tmp_path: Path) -> None:
    path, msg = load_error(tmp_path, 'name = "r"\n[profile]\njpeg_qualty = 90')
    assert msg == (
        f"{path}: unknown key 'profile.jpeg_qualty' (did you mean 'jpeg_quality'?); "
        "valid keys under 'profile': jpeg_quality, max_side, mode"
    )


def test_unknown_key_in_array_of_tables_with_section(tmp_path: Path) -> None:
    text = """
[ingest]
name = "r"
[[ingest.sources]]
path = "a"
[[ingest.sources]]
path = "b"
[[ingest.sources]]
path = "c"
colour = "red"
"""
    path, msg = load_error(tmp_path, text, section="ingest")
    assert msg == (
        f"{path}: unknown key 'ingest.sources[2].colour'; "
        "valid keys under 'ingest.sources[2]': label, path, weight"
    )


def test_init_false_field_is_not_a_key(tmp_path: Path) -> None:
    path, msg = load_error(tmp_path, 'name = "r"\nderived = "X"')
    assert msg.startswith(f"{path}: unknown key 'derived'")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[profile]\njpeg_quality = "high"', "profile.jpeg_quality: expected int, got str 'high'"),
        ("[profile]\njpeg_quality = true", "profile.jpeg_quality: expected int, got bool True"),
        ("[profile]\njpeg_quality = 90.5", "profile.jpeg_quality: expected int, got float 90.5"),
        ("[profile]\nmax_side = true", "profile.max_side: expected float, got bool True"),
        ("dry_run = 1", "dry_run: expected bool, got int 1"),
        ('dry_run = "yes"', "dry_run: expected bool, got str 'yes'"),
        ("limit = '5'", "limit: expected int, got str '5'"),
        ("out_dir = 3", "out_dir: expected Path, got int 3"),
        ('tags = "a"', "tags: expected array, got str 'a'"),
        ("tags = ['a', 2]", "tags[1]: expected str, got int 2"),
        ("extra = { x = 'y' }", "extra.x: expected int, got str 'y'"),
        ('profile = "hq"', "profile: expected table, got str 'hq'"),
        (
            "[[sources]]\npath = 'a'\n[[sources]]\npath = 7",
            "sources[1].path: expected Path, got int 7",
        ),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, expected: str) -> None:
    path, msg = load_error(tmp_path, 'name = "r"\n' + text)
    assert msg == f"{path}: {expected}"


def test_literal_violation_lists_choices(tmp_path: Path) -> None:
    path, msg = load_error(tmp_path, 'name = "r"\n[profile]\nmode = "slow"')
    assert msg == f"{path}: profile.mode: expected one of 'fast', 'exact', got str 'slow'"


def test_missing_required_field(tmp_path: Path) -> None:
    path, msg = load_error(tmp_path, "dry_run = true")
    assert msg == f"{path}: name: missing required key"
    path, msg = load_error(tmp_path, 'name = "r"\n[[sources]]\npath = "a"\n[[sources]]\nweight = 1')
    assert msg == f"{path}: sources[1].path: missing required key"


def test_post_init_error_reraised_with_path(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "r"\n[profile]\njpeg_quality = 150')
    with pytest.raises(ConfigError) as exc:
        load_toml(Ingest, path)
    assert str(exc.value) == f"{path}: profile.jpeg_quality: must be in [1, 100], got 150"
    assert (exc.value.source, exc.value.key) == (str(path), "profile.jpeg_quality")
    assert isinstance(exc.value.__cause__, ValueError)
    assert isinstance(exc.value, ValueError)


def test_from_dict_default_source() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(Profile, {"jpeg_quality": 0})
    assert str(exc.value) == "<config>: jpeg_quality: must be in [1, 100], got 0"


def test_overrides_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "toml"\nlimit = 3\n[profile]\njpeg_quality = 70\nmax_side = 10')
    overrides = {"name": "cli", "profile.jpeg_quality": 90, "dry_run": True}
    cfg = load_toml(Ingest, path, overrides=overrides)
    assert cfg.name == "cli"
    assert cfg.profile.jpeg_quality == 90
    assert cfg.dry_run is True
    assert cfg.limit == 3
    assert cfg.profile.max_side == 10.0
    assert cfg.profile.mode == "fast"
    assert cfg.out_dir == Path("out")


def test_overrides_create_missing_tables_and_respect_section(tmp_path: Path) -> None:
    path = write(tmp_path, '[ingest]\nname = "r"')
    cfg = load_toml(Ingest, path, section="ingest", overrides={"profile.mode": "exact"})
    assert cfg.profile == Profile(mode="exact")
    assert cfg.name == "r"


def test_unknown_override_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "r"')
    with pytest.raises(ConfigError) as exc:
        load_toml(Ingest, path, overrides={"profile.jpeg_qualty": 90})
    assert str(exc.value) == (
        "CLI: unknown key 'profile.jpeg_qualty' (did you mean 'jpeg_quality'?); "
        "valid keys under 'profile': jpeg_quality, max_side, mode"
    )
    with pytest.raises(ConfigError) as exc:
        load_toml(Ingest, path, overrides={"name.x": 1})
    assert str(exc.value) == "CLI: unknown key 'name.x': 'name' is not a table"


def test_override_bad_value_blames_cli(tmp_path: Path) -> None:
    path = write(tmp_path, '[ingest]\nname = "r"')
    with pytest.raises(ConfigError) as exc:
        load_toml(Ingest, path, section="ingest", overrides={"profile.jpeg_quality": "90"})
    assert str(exc.value) == "CLI: profile.jpeg_quality: expected int, got str '90'"
    with pytest.raises(ConfigError) as exc:
        load_toml(Ingest, path, section="ingest", overrides={"profile.jpeg_quality": 0})
    assert str(exc.value) == "CLI: profile.jpeg_quality: must be in [1, 100], got 0"


def test_toml_syntax_error_names_file(tmp_path: Path) -> None:
    path, msg = load_error(tmp_path, 'name = "r"\nlimit = = 3')
    assert msg.startswith(f"{path}: invalid TOML: ")
    assert "line 2" in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as exc:
        load_toml(Ingest, path)
    assert str(exc.value) == f"{path}: config file not found"


def test_to_dict_round_trip(tmp_path: Path) -> None:
    cfg = load_toml(Ingest, write(tmp_path, FULL))
    data = to_dict(cfg)
    assert data["out_dir"] == "/data/out"
    assert data["tags"] == ["a", "b"]
    assert data["profile"] == {"jpeg_quality": 70, "max_side": 512.0, "mode": "exact"}
    assert data["sources"][1] == {"path": "/data/s1", "weight": 2.0, "label": "second"}
    assert "derived" not in data
    assert json.loads(json.dumps(data)) == data
    assert from_dict(Ingest, data) == cfg
    assert from_dict(Ingest, json.loads(json.dumps(data))) == cfg


def test_field_docs() -> None:
    assert field_docs(Profile) == {
        "jpeg_quality": "JPEG quality of re-encoded images, 1-100.",
        "max_side": "Longest image side in pixels.",
        "mode": "Resize mode.",
    }
    assert field_docs(Source) == {"path": "Input directory.", "weight": "Sampling weight."}
    docs = field_docs(Ingest)
    assert docs["name"] == "Run name (required)."
    assert list(docs)[-1] == "derived"


def test_field_docs_without_source() -> None:
    dynamic = dataclasses.make_dataclass("Dynamic", [("x", int)])
    assert field_docs(dynamic) == {}


def test_require() -> None:
    require(True, "f", 1, "must be positive")
    with pytest.raises(ValueError, match=r"^f: must be positive, got -1$"):
        require(False, "f", -1, "must be positive")
