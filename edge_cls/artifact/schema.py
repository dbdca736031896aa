"""Typed reads of a manifest's JSON: every field checked for type and range, every problem an
:class:`ArtifactError` that names the file and the field (``files[1].sha256``, ``preprocess.mean``).

A manifest comes from disk and may have been written by anyone: nothing here trusts a value's
type, size or depth, and nothing raises anything but :class:`ArtifactError`.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from edge_cls.errors import ArtifactError

MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 32  # edge-cls writes depth 4 (search.candidates[i].key)
MAX_LABEL_CHARS = 1000
MAX_TEXT_CHARS = 10_000
MAX_INPUT_SIDE = 4096  # a 3x4096x4096 float32 input is 200 MB; larger would make preprocessing the hazard
MAX_FILES = 1000
SHA256 = re.compile(r"[0-9a-f]{64}")

_KINDS: dict[type, str] = {
    str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object", list: "a list",
}


def parse_json(raw: bytes, source: str) -> Any:
    """Parse manifest bytes: UTF-8 JSON, no duplicate keys, nesting at most :data:`MAX_DEPTH`."""
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=lambda pairs: _unique_keys(pairs, source))
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{source} is not UTF-8 text ({e}): rebuild the artifact") from e
    except RecursionError as e:
        raise ArtifactError(f"{source} is nested too deeply to be a manifest: rebuild the artifact") from e
    except ValueError as e:  # JSONDecodeError, and ints of more than 4300 digits
        raise ArtifactError(f"{source} is not valid JSON ({e}): rebuild the artifact") from e
    if json_depth(data) > MAX_DEPTH:
        raise ArtifactError(f"{source} is nested more than {MAX_DEPTH} levels deep: not a manifest edge-cls wrote")
    try:  # "\ud800" escapes decode to lone surrogates, which no terminal or file can take
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise ArtifactError(f"{source} holds text that is not valid Unicode ({e.reason}): rebuild the artifact") from e
    return data


def _unique_keys(pairs: list[tuple[str, Any]], source: str) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ArtifactError(f"{source}: key {duplicate!r} appears twice in one object; the manifest is ambiguous")
    return data


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), computed without recursion."""
    depth, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            depth = max(depth, level + 1)
            stack.extend((child, level + 1) for child in children)
    return depth


def is_kind(value: Any, kind: type) -> bool:
    """JSON typing: bool is not a number, an int is a number (float), None is null."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float))
    if kind is type(None):
        return value is None
    return isinstance(value, kind)


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    return _KINDS.get(type(value), type(value).__name__)


class Fields:
    """One JSON object of a manifest, read field by field with type and range checks."""

    def __init__(self, data: Any, source: str, prefix: str = "") -> None:
        self.source, self.prefix = source, prefix
        if not isinstance(data, dict):
            where = f"field {prefix.rstrip('.')!r}" if prefix else "the manifest"
            raise ArtifactError(f"{source}: {where} must be {_KINDS[dict]}, got {kind_of(data)}")
        self.data = data

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def fail(self, key: str, problem: str) -> ArtifactError:
        return ArtifactError(f"{self.source}: field {self.name(key)!r} {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], *, optional: bool = False, default: Any = None) -> Any:
        if self.data.get(key) is None:
            if optional:
                return default
            if key not in self.data:
                raise ArtifactError(f"{self.source}: missing field {self.name(key)!r}")
        return self.check(key, self.data[key], kind)

    def check(self, key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not any(is_kind(value, k) for k in kinds):
            expected = " or ".join(_KINDS.get(k, "null") for k in kinds)
            raise self.fail(key, f"must be {expected}, got {kind_of(value)}")
        return value

    def text(self, key: str, *, optional: bool = False, default: str = "", limit: int = MAX_TEXT_CHARS) -> str:
        value = self.get(key, str, optional=optional, default=default)
        if len(value) > limit:
            raise self.fail(key, f"is {len(value)} characters long; at most {limit} are allowed")
        return printable(self, key, value)

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.text(key, limit=100)
        if value not in choices:
            raise self.fail(key, f"is {value!r}, expected one of {choices}")
        return value

    def integer(self, key: str, *, minimum: int | None = None, maximum: int | None = None,
                optional: bool = False) -> int | None:
        value = self.get(key, int, optional=optional)
        if value is not None:
            check_range(self, key, value, minimum, maximum)
        return value

    def number(self, key: str, *, minimum: float | None = None, maximum: float | None = None,
               optional: bool = False, finite: bool = True) -> float | None:
        value = self.get(key, float, optional=optional)
        if value is None:
            return None
        value = float(value)
        if math.isnan(value) and not finite:
            return value
        if finite and not math.isfinite(value):
            raise self.fail(key, f"must be a finite number, got {value}")
        check_range(self, key, value, minimum, maximum)
        return value

    def block(self, key: str) -> Fields:
        """A required nested object."""
        return Fields(self.get(key, dict), self.source, f"{self.name(key)}.")

    def optional_block(self, key: str) -> Fields | None:
        """A nested object that may be absent or null."""
        return None if self.data.get(key) is None else self.block(key)

    def items(self, key: str, *, limit: int, optional: bool = False) -> list[Any] | None:
        value = self.get(key, list, optional=optional)
        if value is not None and len(value) > limit:
            raise self.fail(key, f"has {len(value)} entries; at most {limit} are allowed")
        return value

    def each(self, key: str, values: list[Any], read: Callable[[str, Any], Any]) -> list[Any]:
        """``read(name, value)`` for every element, with the element's index in its name."""
        return [read(f"{key}[{i}]", value) for i, value in enumerate(values)]


def check_range(fields: Fields, key: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        low = "" if minimum is None else f">= {minimum}"
        high = "" if maximum is None else f"<= {maximum}"
        raise fields.fail(key, f"must be {' and '.join(filter(None, (low, high)))}, got {value}")


def printable(fields: Fields, key: str, value: str) -> str:
    """Text without control characters: manifest text is printed to terminals (an escape sequence
    in a label or a tool name could rewrite what the user sees)."""
    bad = next((c for c in value if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise fields.fail(key, f"contains the control character {bad!r}; manifest text must be printable")
    return value


def label(fields: Fields, key: str, value: Any) -> str:
    """A class label: a non-empty printable string."""
    fields.check(key, value, str)
    if not value or len(value) > MAX_LABEL_CHARS:
        raise fields.fail(key, f"must be 1 to {MAX_LABEL_CHARS} characters long, got {len(value)}")
    return printable(fields, key, value)


def relative_path(fields: Fields, key: str, value: Any) -> str:
    """A file path inside the artifact: relative, POSIX, no ``..``/``.``/empty parts, no NUL."""
    fields.check(key, value, str)
    parts = value.split("/")
    if (not value or len(value) > 1024 or "\x00" in value or "\\" in value or value.startswith("/")
            or any(part in ("", ".", "..") for part in parts) or PurePosixPath(value).is_absolute()):
        raise fields.fail(key, f"is {value!r}: a path must stay inside the artifact directory "
                          "(relative, '/'-separated, no '..', '.' or empty parts)")
    return value


def sha256_hex(fields: Fields, key: str, value: Any) -> str:
    fields.check(key, value, str)
    if not SHA256.fullmatch(value):
        raise fields.fail(key, "must be 64 lowercase hex digits (a sha256)")
    return value


def scalar_map(fields: Fields, key: str, value: Any, kinds: tuple[type, ...]) -> dict[str, Any]:
    """An object whose values are all of ``kinds`` (``type(None)`` allowed for null)."""
    fields.check(key, value, dict)
    inner = Fields(value, fields.source, f"{fields.name(key)}.")
    for k, v in value.items():
        inner.check(k, v, kinds)
        printable(inner, k, k)
        if isinstance(v, str):
            printable(inner, k, v)
    return dict(value)


SCALARS = (str, float, bool, type(None))
