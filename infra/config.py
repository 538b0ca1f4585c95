"""Typed config loading: frozen, kw_only dataclasses built from TOML.

Conventions (after torchtitan's ``job_config.py``):

* A config is a ``@dataclass(frozen=True, kw_only=True)``; each field has a type annotation, a
  default where one makes sense, and an attribute docstring -- a string literal on the line after
  the field -- which :func:`field_docs` reads for ``--help`` text and docs.
* Nested tables are nested dataclasses; arrays of tables are ``list[SomeDataclass]``.
* Validation lives in ``__post_init__``, written with :func:`require` so that messages start with
  the field name; :func:`from_dict` re-raises them as :class:`ConfigError` with the file and the
  dotted key path.
* Precedence is CLI > TOML > default: :func:`load_toml` merges ``overrides`` (dotted keys) over
  the file, and fields missing from both take their dataclass default.
* Every error names the source (file path or ``'CLI'``), the dotted key path (``a.b[2].c``) and
  the bad value.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import inspect
import itertools
import textwrap
import tomllib
import types
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

__all__ = [
    "ConfigError",
    "Location",
    "field_docs",
    "from_dict",
    "load_toml",
    "require",
    "to_dict",
]

T = TypeVar("T")
# Folder that relative Path values are resolved against (set by load_toml(relative_paths=True)).
_BASE_DIR: ContextVar[Path | None] = ContextVar("_BASE_DIR", default=None)
_NONE = type(None)


class Location(str):
    """A local path or a filesystem URI (``s3://bucket/key``, ``gs://...``). In a config file
    a relative local path is taken relative to the file (with ``relative_paths``); URIs are
    kept as written."""

    @property
    def is_uri(self) -> bool:
        return "://" in self


class ConfigError(ValueError):
    """A config value or key is wrong. str(err) names the source (file path or 'CLI'), the dotted
    key path and the bad value."""

    def __init__(self, detail: str, *, source: str = "", key: str = "") -> None:
        self.detail, self.source, self.key = detail, source, key
        super().__init__(": ".join(part for part in (source, key, detail) if part))


def error_reason(err: BaseException, limit: int = 200) -> str:
    """``Type: message`` of an error, first line only, at most ``limit`` characters: the
    reason a loader gives when it turns a library's error into one naming its input."""
    return f"{type(err).__name__}: {err}".splitlines()[0][:limit]


def require(cond: bool, field: str, value: Any, expectation: str) -> None:
    """For ``__post_init__``: raise ``ValueError("<field>: <expectation>, got <value!r>")``."""
    if not cond:
        raise ValueError(f"{field}: {expectation}, got {value!r}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _init_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _unknown_key(cls: type, path: str, names: list[str], source: str) -> ConfigError:
    valid = sorted(_init_fields(cls))
    keys = ", ".join(repr(_join(path, n)) for n in names)
    hints = [m for n in names for m in difflib.get_close_matches(n, valid, n=1)]
    hint = f" (did you mean {', '.join(map(repr, hints))}?)" if hints else ""
    where = f" under {path!r}" if path else ""
    plural = "s" if len(names) > 1 else ""
    msg = f"unknown key{plural} {keys}{hint}; valid keys{where}: {', '.join(valid)}"
    return ConfigError(msg, source=source)


def _describe(value: Any) -> str:
    return "None" if value is None else f"{type(value).__name__} {value!r}"


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, get_args(tp)))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple) or tp in (list, tuple):
        return "array"
    if origin in (dict, Mapping) or tp is dict or _is_dataclass_type(tp):
        return "table"
    return "None" if tp is _NONE else getattr(tp, "__name__", repr(tp))


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it converted (int->float, str->Path,
    array->tuple, table->dataclass)."""
    origin, args = get_origin(tp), get_args(tp)

    def bad() -> ConfigError:
        msg = f"expected {_type_name(tp)}, got {_describe(value)}"
        return ConfigError(msg, source=source, key=key)

    if tp is Any:
        return value
    if origin is Literal:
        if any(type(value) is type(c) and value == c for c in args):
            return value
        raise bad()
    if origin in (Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        members = [a for a in args if a is not _NONE]
        if len(members) == 1:  # Optional[X]: report X's own, more precise error
            return _coerce(members[0], value, source, key)
        for member in members:
            try:
                return _coerce(member, value, source, key)
            except ConfigError:
                continue
        raise bad()
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad()
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                msg = f"expected array of {len(args)} items, got {len(value)}: {value!r}"
                raise ConfigError(msg, source=source, key=key)
            types_ = list(args)
        else:
            types_ = [args[0] if args else Any] * len(value)
        pairs = enumerate(zip(types_, value, strict=True))
        items = [_coerce(t, v, source, f"{key}[{i}]") for i, (t, v) in pairs]
        return tuple(items) if tuple in (origin, tp) else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise bad()
        key_tp, val_tp = args or (Any, Any)
        return {
            _coerce(key_tp, k, source, f"{key}.{k}"): _coerce(val_tp, v, source, f"{key}.{k}")
            for k, v in value.items()
        }
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise bad()
        return from_dict(tp, value, source=source, path=key)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad()
    if isinstance(tp, type) and issubclass(tp, Location):
        if isinstance(value, (str, PurePath)):
            text, base = str(value), _BASE_DIR.get()
            if not text or "://" in text or base is None or PurePath(text).is_absolute():
                return tp(text)  # ("" stays empty: "not set")
            return tp(base / text)
        raise bad()
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(value, (str, PurePath)):
            base = _BASE_DIR.get()
            if base is not None and not PurePath(value).is_absolute():
                return tp(base / value)
            return tp(value)
        raise bad()
    if not isinstance(tp, type):
        raise TypeError(f"{key}: unsupported annotation {tp!r}")
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise bad()
    return value


def from_dict(
    cls: type[T], data: Mapping[str, Any], *, source: str = "<config>", path: str = ""
) -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and types (see module docstring)."""
    if not _is_dataclass_type(cls):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected table, got {_describe(data)}", source=source, key=path)
    fields = _init_fields(cls)
    unknown = [str(k) for k in data if k not in fields]
    if unknown:
        raise _unknown_key(cls, path, unknown, source)
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], source, _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError("missing required key", source=source, key=_join(path, name))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        msg = str(err)
        name, sep, rest = msg.partition(": ")
        if sep and name in fields:  # message from require(): "<field>: ..."
            raise ConfigError(rest, source=source, key=_join(path, name)) from err
        raise ConfigError(msg, source=source, key=path) from err


def _override_type(cls: type, key: str) -> Any:
    """Annotation of the field that dotted ``key`` names, walking nested dataclass fields."""
    tp: Any = cls
    parts = key.split(".")
    for i, part in enumerate(parts):
        members = [a for a in get_args(tp) if a is not _NONE]
        if get_origin(tp) in (Union, types.UnionType) and len(members) == 1:
            tp = members[0]  # Optional[SomeDataclass]
        prefix = ".".join(parts[:i])
        if not _is_dataclass_type(tp):
            raise ConfigError(f"unknown key {key!r}: {prefix!r} is not a table", source="CLI")
        if part not in _init_fields(tp):
            raise _unknown_key(tp, prefix, [part], "CLI")
        tp = get_type_hints(tp)[part]
    return tp


def load_toml(
    cls: type[T],
    path: str | Path,
    *,
    section: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    relative_paths: bool = False,
) -> T:
    """Load ``cls`` from TOML file ``path`` (optionally only its top-level table ``section``, which
    counts as empty if absent), with ``overrides`` -- dotted keys relative to ``cls`` -> values --
    taking precedence over the file. With ``relative_paths``, relative ``Path`` values are taken
    relative to the file's folder (and overrides' relative to the working directory)."""
    token = _BASE_DIR.set(Path(path).resolve().parent if relative_paths else None)
    try:
        return _load_toml(cls, path, section, dict(overrides or {}))
    finally:
        _BASE_DIR.reset(token)


def apply_overrides(cls: type, data: dict, overrides: dict[str, Any]) -> None:
    """Set dotted ``overrides`` (CLI ``--set``) in the raw table ``data`` of ``cls``, in place:
    each key must name a field of ``cls`` and each value fit its type (errors name ``CLI``);
    relative paths are made absolute against the working directory (in ``overrides`` too)."""
    for key, value in overrides.items():
        target = _override_type(cls, key)
        pathlike = isinstance(target, type) and issubclass(target, PurePath | Location)
        if pathlike and isinstance(value, str | PurePath) and "://" not in str(value):
            overrides[key] = value = str(Path(value).resolve())  # CLI paths: relative to cwd
        _coerce(target, value, "CLI", key)  # type errors name the CLI
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[leaf] = value


@contextlib.contextmanager
def paths_relative_to(path: str | Path) -> Iterator[None]:
    """Within the block, ``from_dict`` takes relative paths relative to file ``path``'s folder."""
    token = _BASE_DIR.set(Path(path).resolve().parent)
    try:
        yield
    finally:
        _BASE_DIR.reset(token)


def read_toml(path: str | Path) -> dict[str, Any]:
    """The TOML file as a dict; ``ConfigError`` (naming the file) when missing or invalid."""
    source = str(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config file not found", source=source) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"invalid TOML: {err}", source=source) from None
    except OSError as err:
        raise ConfigError(f"cannot read config file: {err.strerror}", source=source) from None


def _load_toml(cls: type[T], path: str | Path, section: str | None, overrides: dict) -> T:
    source = str(path)
    data: Any = read_toml(path)
    if section is not None:
        data = data.get(section, {})
        if not isinstance(data, dict):
            raise ConfigError(f"expected table, got {_describe(data)}", source=source, key=section)
    apply_overrides(cls, data, overrides)
    with blame_cli(overrides, section or ""):
        return from_dict(cls, data, source=source, path=section or "")


@contextlib.contextmanager
def blame_cli(overrides: Mapping[str, Any], path: str = "") -> Iterator[None]:
    """A check failing on a value that came from ``overrides`` (``--set``, keys relative to
    table ``path``) names the CLI and the key as given there, not the file."""
    try:
        yield
    except ConfigError as err:
        for key in overrides:
            full = _join(path, key)
            if err.key == full or err.key.startswith((f"{full}.", f"{full}[")):
                cli_key = err.key[len(full) - len(key) :]
                raise ConfigError(err.detail, source="CLI", key=cli_key) from err
        raise


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass instance -> plain dict (Path -> str, tuple -> list, nested dataclasses recursed;
    ``init=False`` fields left out, ``None`` kept), so ``from_dict(type(x), to_dict(x)) == x``."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict needs a dataclass instance, got {obj!r}")
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of ``cls``'s fields (base classes included), in field order; ``{}``
    if the source is unavailable."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in itertools.pairwise(body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return {f.name: docs[f.name] for f in dataclasses.fields(cls) if f.name in docs}
