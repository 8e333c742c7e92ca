"""Label selectors over Cilium label strings ("k8s:class=deathstar").

A selector key may carry a source prefix (``k8s:class``); without one it reads
as ``any:class`` and matches the key from any source, as in Cilium. Selectors
are parsed from Kubernetes ``LabelSelector`` YAML (matchLabels and
matchExpressions) and matched against identity label sets.

Example::

    >>> sel = parse_selector(DocRef(1), "spec.endpointSelector", {"matchLabels": {"org": "empire"}})
    >>> sel.matches(("k8s:org=empire", "k8s:class=tiefighter"))
    True
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from workbench.lab.model import NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX
from workbench.policy.fields import DocRef, Fields, join, type_name

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
OPERATORS: tuple[Operator, ...] = ("In", "NotIn", "Exists", "DoesNotExist")

# Label sources a selector key may name (Cilium's; others are a typo, not a wish).
SOURCES = {"any", "k8s", "reserved", "cidr", "container", "unspec"}

# Kubernetes label-key syntax: optional DNS-subdomain prefix "/", then a name.
_KEY_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY_RE = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_KEY_NAME}$")
_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


@dataclass(frozen=True)
class Requirement:
    """One condition on a label key: ``source:key <operator> values``."""

    source: str
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def _values_of(self, labels: Iterable[tuple[str, str, str]]) -> list[str]:
        return [v for s, k, v in labels if k == self.key and (self.source == "any" or s == self.source)]

    def matches(self, parsed: Iterable[tuple[str, str, str]]) -> bool:
        present = self._values_of(parsed)
        if self.operator == "Exists":
            return bool(present)
        if self.operator == "DoesNotExist":
            return not present
        hit = any(v in self.values for v in present)
        return hit if self.operator == "In" else not hit

    def __str__(self) -> str:
        name = f"{self.source}:{self.key}"
        if self.operator == "In" and len(self.values) == 1:
            return f"{name}={self.values[0]}"
        if self.operator in ("Exists", "DoesNotExist"):
            return f"{name} {self.operator}"
        return f"{name} {self.operator} ({','.join(self.values)})"


@dataclass(frozen=True)
class LabelSelector:
    """A conjunction of requirements; no requirements selects everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Iterable[str]) -> bool:
        return self.matches_parsed([split_label(label) for label in labels])

    def matches_parsed(self, parsed: list[tuple[str, str, str]]) -> bool:
        """Like :meth:`matches`, for labels already split by :func:`split_label`."""
        return all(req.matches(parsed) for req in self.requirements)

    def has_key(self, key: str) -> bool:
        """Whether a requirement names ``key`` (any source)."""
        return any(req.key == key for req in self.requirements)

    def has_key_prefix(self, prefix: str) -> bool:
        return any(req.key.startswith(prefix) for req in self.requirements)

    def has_source(self, source: str) -> bool:
        return any(req.source == source for req in self.requirements)

    def namespace_values(self) -> tuple[str, ...] | None:
        """The namespaces an explicit ``io.kubernetes.pod.namespace=...`` match names, if any."""
        for req in self.requirements:
            if req.key == NAMESPACE_LABEL and req.operator == "In":
                return req.values
        return None

    def with_requirement(self, req: Requirement) -> LabelSelector:
        return LabelSelector(self.requirements + (req,))

    def __str__(self) -> str:
        return ", ".join(str(r) for r in self.requirements) or "<all>"


def split_label(label: str) -> tuple[str, str, str]:
    """"k8s:class=deathstar" -> ("k8s", "class", "deathstar"); "reserved:host" -> ("reserved", "host", "")."""
    source, sep, rest = label.partition(":")
    if not sep:
        source, rest = "any", label
    key, _, value = rest.partition("=")
    return source, key, value


def split_key(key: str) -> tuple[str, str]:
    """"k8s:class" -> ("k8s", "class"); "class" -> ("any", "class")."""
    source, sep, name = key.partition(":")
    return (source, name) if sep else ("any", key)


def namespace_is(namespace: str) -> Requirement:
    """The requirement Cilium adds to scope a selector to one namespace."""
    return Requirement("k8s", NAMESPACE_LABEL, "In", (namespace,))


def in_some_namespace() -> Requirement:
    """Only pods (which always carry a namespace label), not reserved identities."""
    return Requirement("k8s", NAMESPACE_LABEL, "Exists")


def parse_selector(doc: DocRef, path: str, value: Any, *, source_prefixes: bool = True,
                   default_source: str = "any", key_prefix: str = "") -> LabelSelector:
    """Parse a Kubernetes LabelSelector at ``path`` into a :class:`LabelSelector`.

    ``source_prefixes`` allows Cilium's ``k8s:``/``any:`` key prefixes (not in
    NetworkPolicy). ``key_prefix`` is prepended to every key (used to turn a
    namespaceSelector into a selector over Cilium's namespace labels).
    """
    fields = Fields(doc, path, value, allowed={"matchLabels", "matchExpressions"})
    requirements: list[Requirement] = []
    labels = fields.mapping("matchLabels") or {}
    for key, label_value in labels.items():
        key_path = join(fields.at("matchLabels"), str(key))
        source, name = _parse_key(doc, key_path, key, source_prefixes, default_source)
        if not isinstance(label_value, str):
            if source == "reserved" and label_value is None:
                label_value = ""
            else:
                raise doc.error(key_path, f"label value must be a string, got {type_name(label_value)} "
                                f"{label_value!r}", hint="quote it in YAML")
        if not _VALUE_RE.match(label_value) or len(label_value) > 63:
            raise doc.error(key_path, f"invalid label value {label_value!r}")
        requirements.append(Requirement(source, key_prefix + name, "In", (label_value,)))
    for expr_path, expr in fields.items("matchExpressions"):
        requirements.append(_parse_expression(doc, expr_path, expr, source_prefixes, default_source,
                                              key_prefix))
    return LabelSelector(tuple(requirements))


def _parse_key(doc: DocRef, path: str, key: Any, source_prefixes: bool,
               default_source: str) -> tuple[str, str]:
    if not isinstance(key, str) or not key:
        raise doc.error(path, f"label key must be a non-empty string, got {key!r}")
    source, name = split_key(key)
    if ":" in key:
        if not source_prefixes:
            raise doc.error(path, f"label key {key!r} may not carry a source prefix here")
        if source not in SOURCES:
            raise doc.error(path, f"unknown label source {source!r} in key {key!r} "
                            f"(known: {', '.join(sorted(SOURCES))})")
    else:
        source = default_source
    if source != "reserved" and not _KEY_RE.match(name):
        raise doc.error(path, f"invalid label key {name!r}")
    return source, name


def _parse_expression(doc: DocRef, path: str, expr: Any, source_prefixes: bool, default_source: str,
                      key_prefix: str) -> Requirement:
    fields = Fields(doc, path, expr, allowed={"key", "operator", "values"})
    key = fields.string("key", required=True)
    source, name = _parse_key(doc, fields.at("key"), key, source_prefixes, default_source)
    operator = fields.string("operator", required=True)
    if operator not in OPERATORS:
        raise doc.error(fields.at("operator"), f"unknown operator {operator!r} (use one of {', '.join(OPERATORS)})")
    values: list[str] = []
    for value_path, value in fields.items("values"):
        if not isinstance(value, str):
            raise doc.error(value_path, f"must be a string, got {type_name(value)} {value!r}",
                            hint="quote it in YAML")
        values.append(value)
    if operator in ("In", "NotIn") and not values:
        raise doc.error(fields.at("values"), f"operator {operator} needs at least one value")
    if operator in ("Exists", "DoesNotExist") and values:
        raise doc.error(fields.at("values"), f"operator {operator} takes no values")
    return Requirement(source, key_prefix + name, operator, tuple(values))  # type: ignore[arg-type]


def namespace_labels(namespace: str, labels: dict[str, str]) -> tuple[str, ...]:
    """The identity labels Cilium derives from a namespace's labels."""
    merged = {"kubernetes.io/metadata.name": namespace, **labels}
    return tuple(sorted(f"k8s:{NAMESPACE_LABELS_PREFIX}{k}={v}" for k, v in merged.items()))
