"""Walking a policy document with a field path, so every error names where it is.

The parsers in this package never guess: a field they do not know, or know
but do not implement, is a :class:`~workbench.errors.ValidationError` whose
single line names the document, the field path (kubectl style,
``specs[1].ingress[0].toPorts[0].ports[0].port``) and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workbench.errors import ValidationError


@dataclass(frozen=True)
class DocRef:
    """Which document an error is about: 1-based position, kind and name, source file."""

    index: int
    kind: str = ""
    name: str = ""
    source: str = ""

    def describe(self) -> str:
        where = f"{self.source} " if self.source else ""
        what = ""
        if self.kind or self.name:
            what = f" ({self.kind or '?'} {self.name or '<unnamed>'})"
        return f"{where}policy document {self.index}{what}"

    def error(self, path: str, why: str, *, hint: str | None = None) -> ValidationError:
        """The one-line error for ``path`` in this document."""
        location = f": {path}" if path else ""
        return ValidationError(f"{self.describe()}{location}: {why}", hint=hint)


def join(path: str, key: str | int) -> str:
    """join("spec", "ingress") -> "spec.ingress"; join("spec.ingress", 0) -> "spec.ingress[0]"."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Fields:
    """Typed access to a YAML mapping at ``path`` that rejects what the compiler cannot honour.

    ``allowed`` are the keys the caller implements; ``unsupported`` maps keys the
    upstream API has but this compiler does not implement to the reason shown.
    Any other key is reported as unknown, so a typo never passes silently.
    """

    def __init__(self, doc: DocRef, path: str, value: Any, *, allowed: set[str],
                 unsupported: Mapping[str, str] | None = None) -> None:
        self.doc = doc
        self.path = path
        if not isinstance(value, dict):
            raise doc.error(path or "<document>", f"must be a mapping, got {type_name(value)}")
        self.value: dict[str, Any] = value
        unsupported = unsupported or {}
        for key in value:
            if not isinstance(key, str):
                raise doc.error(path or "<document>", f"field name {key!r} is not a string")
            if key in allowed:
                continue
            if key in unsupported:
                raise doc.error(join(path, key), unsupported[key])
            known = ", ".join(sorted(allowed))
            raise doc.error(join(path, key), f"unknown field (supported here: {known})")

    def has(self, key: str) -> bool:
        return key in self.value and self.value[key] is not None

    def at(self, key: str) -> str:
        return join(self.path, key)

    def raw(self, key: str, default: Any = None) -> Any:
        value = self.value.get(key)
        return default if value is None else value

    def string(self, key: str, *, required: bool = False, default: str = "") -> str:
        value = self.value.get(key)
        if value is None:
            if required:
                raise self.doc.error(self.at(key), "is required")
            return default
        if not isinstance(value, str):
            raise self.doc.error(self.at(key), f"must be a string, got {type_name(value)} {value!r}",
                                 hint="quote it in YAML")
        return value

    def mapping(self, key: str, *, required: bool = False) -> dict[str, Any] | None:
        value = self.value.get(key)
        if value is None:
            if required:
                raise self.doc.error(self.at(key), "is required")
            return None
        if not isinstance(value, dict):
            raise self.doc.error(self.at(key), f"must be a mapping, got {type_name(value)}")
        return value

    def items(self, key: str) -> list[tuple[str, Any]]:
        """The list at ``key`` as (path, item) pairs; absent or null is an empty list."""
        value = self.value.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.doc.error(self.at(key), f"must be a list, got {type_name(value)}")
        return [(join(self.at(key), i), item) for i, item in enumerate(value)]

    def boolean(self, key: str) -> bool | None:
        value = self.value.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.doc.error(self.at(key), f"must be true or false, got {value!r}")
        return value


def type_name(value: Any) -> str:
    """YAML-ish names for Python types in messages."""
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)
