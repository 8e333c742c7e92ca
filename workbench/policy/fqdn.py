"""DNS names in policy: ``toFQDNs`` peers and ``toPorts[].rules.dns`` rules, with Cilium's matching.

One :class:`FqdnSelector` is either a ``matchName`` or a ``matchPattern``:

- names are lower-cased and compared without their trailing dot
  (``API.GitHub.com.`` is ``api.github.com``);
- ``matchName`` matches that name exactly;
- in ``matchPattern``, ``*`` matches any run (also none) of DNS characters
  (``a-z``, ``0-9``, ``-``, ``_``) **within one label**: ``*.github.com``
  matches ``api.github.com``, not ``github.com`` nor ``a.b.github.com``;
  ``part*ial.com`` matches ``partial.com`` and ``part-extra-ial.com``;
- a pattern of stars alone (``*``) matches every name, the root ``.`` too;
- a leading ``**.`` matches one or more whole labels: ``**.github.com``
  matches ``api.github.com`` and ``a.b.github.com``, not ``github.com``.
  Anywhere else ``**`` is refused (Cilium reads it as ``*`` there, which
  looks like something it is not).

A name that is no valid DNS name (an empty label, a character outside the
set above) matches no selector, except that ``*`` matches the root.

Addresses learned from DNS answers get a per-address identity (numbered
like CIDR identities, from ``1 << 24``) labelled
:func:`fqdn_identity_labels`: ``cidr:<ip>/32``, ``reserved:world`` and the
:attr:`FqdnSelector.label` of every ``toFQDNs`` selector whose names the
address was an answer for. A ``toFQDNs`` selector selects the identities
carrying its label.

Example::

    >>> FqdnSelector(match_pattern="*.github.com").matches("API.github.com.")
    True
    >>> FqdnSelector(match_pattern="*.github.com").matches("a.b.github.com")
    False
    >>> fqdn_identity_labels("192.0.2.10", [FqdnSelector(match_name="api.github.com")])
    ('cidr:192.0.2.10/32', 'fqdn:api.github.com', 'reserved:world')
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import re2

from workbench.policy.fields import DocRef, Fields

FQDN_LABEL_SOURCE = "fqdn"
MAX_FQDN_LENGTH = 255          # Cilium's limit on matchName and matchPattern
_LABEL_CHARS = "-a-z0-9_"      # what a label may hold (underscore for SRV / DNS-SD names)
_NAME_RE = re.compile(rf"^[{_LABEL_CHARS}.]+$")
_PATTERN_RE = re.compile(rf"^[{_LABEL_CHARS}.*]+$")
_VALID_NAME = re.compile(rf"^[{_LABEL_CHARS}]+(\.[{_LABEL_CHARS}]+)*$")
_ALL_STARS = re.compile(r"^\*+\.?$")
MULTI_LABEL_PREFIX = "**."

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def normalize_name(name: str) -> str:
    """A DNS name as selectors compare it: lower case, without surrounding blanks and the trailing dot."""
    name = name.strip().lower()
    return name[:-1] if name.endswith(".") else name


def _name_problem(name: str) -> str | None:
    if len(name) > MAX_FQDN_LENGTH:
        return f"is longer than {MAX_FQDN_LENGTH} characters"
    if not name or not _NAME_RE.match(name.strip().lower()):
        return (f"{name!r} is not a DNS name (only letters, digits, '-', '_' and '.' are allowed)"
                if name else "must not be empty")
    if not _VALID_NAME.match(normalize_name(name)):
        return f"{name!r} has an empty label (two dots in a row, or a leading dot)"
    return None


def _pattern_problem(pattern: str) -> str | None:
    if len(pattern) > MAX_FQDN_LENGTH:
        return f"is longer than {MAX_FQDN_LENGTH} characters"
    if not pattern:
        return "must not be empty"
    if not _PATTERN_RE.match(pattern.strip().lower()):
        return f"{pattern!r} is not a DNS pattern (only letters, digits, '-', '_', '.' and '*' are allowed)"
    if _ALL_STARS.match(pattern.strip()):
        return None
    rest = normalize_name(pattern)
    if rest.startswith(MULTI_LABEL_PREFIX):
        rest = rest[len(MULTI_LABEL_PREFIX):]
    if "**" in rest:
        return (f"{pattern!r}: '**' is a wildcard only as the leading '**.' (one or more labels); "
                "within a label write '*'")
    if not _VALID_NAME.match(rest.replace("*", "x")):
        return f"{pattern!r} has an empty label (two dots in a row, or a leading dot)"
    return None


@dataclass(frozen=True, order=True)
class FqdnSelector:
    """``matchName`` or ``matchPattern`` (exactly one), normalized (module docstring).

    Raises ``ValueError`` with the reason when the value is not a valid name
    or pattern; policy parsing reports it with the field path
    (:func:`parse_fqdn_selector`).
    """

    match_name: str = ""
    match_pattern: str = ""

    def __post_init__(self) -> None:
        if bool(self.match_name) == bool(self.match_pattern):
            raise ValueError("needs exactly one of matchName and matchPattern")
        if self.match_name:
            problem = _name_problem(self.match_name)
            if problem:
                raise ValueError(f"matchName {problem}")
            object.__setattr__(self, "match_name", normalize_name(self.match_name))
        else:
            problem = _pattern_problem(self.match_pattern)
            if problem:
                raise ValueError(f"matchPattern {problem}")
            pattern = self.match_pattern.strip().lower()
            object.__setattr__(self, "match_pattern", "*" if _ALL_STARS.match(pattern) else normalize_name(pattern))

    @property
    def matches_all(self) -> bool:
        """True for the lone ``*``: every name."""
        return self.match_pattern == "*"

    @property
    def label(self) -> str:
        """The identity label of addresses this selector selects: ``fqdn:<name or pattern>``."""
        return f"{FQDN_LABEL_SOURCE}:{self.match_name or self.match_pattern}"

    def matches(self, name: str) -> bool:
        """Does the DNS name ``name`` (any case, trailing dot or not) match? (Module docstring.)"""
        qname = normalize_name(name)
        if not qname:
            return self.matches_all and name.strip() == "."   # the root
        if not _VALID_NAME.match(qname):
            return False
        if self.match_name:
            return qname == self.match_name
        return self.matches_all or bool(_program(self.match_pattern).fullmatch(qname))

    def to_dict(self) -> dict[str, str]:
        """The selector as a policy writes it."""
        return {"matchName": self.match_name} if self.match_name else {"matchPattern": self.match_pattern}

    def __str__(self) -> str:
        return f"matchName={self.match_name}" if self.match_name else f"matchPattern={self.match_pattern}"


ALLOW_ALL_NAMES = FqdnSelector(match_pattern="*")


@lru_cache(maxsize=4096)
def _program(pattern: str) -> Any:
    """The RE2 program of a normalized pattern: linear-time matching, whatever the stars."""
    one_label = f"[{_LABEL_CHARS}]"
    out = ""
    if pattern.startswith(MULTI_LABEL_PREFIX):
        out, pattern = f"(?:{one_label}+\\.)+", pattern[len(MULTI_LABEL_PREFIX):]
    for char in pattern:
        out += {".": "\\.", "*": f"{one_label}*"}.get(char, char)
    return re2.compile(out, options=_RE2_OPTIONS)


def names_allowed(rules: Iterable[FqdnSelector], qname: str) -> bool:
    """Whether a DNS query for ``qname`` passes ``rules`` (a union: any selector matching allows it)."""
    return any(rule.matches(qname) for rule in rules)


def fqdn_identity_labels(ip: str, selectors: Iterable[FqdnSelector]) -> tuple[str, ...]:
    """The sorted labels of the identity of an address learned from DNS answers.

    ``selectors``: the ``toFQDNs`` selectors that matched a name the address
    answered (the caller decides which, e.g. with :meth:`FqdnSelector.matches`).
    """
    address = ipaddress.IPv4Address(ip)
    return tuple(sorted({f"cidr:{address}/32", "reserved:world", *(s.label for s in selectors)}))


def is_fqdn_identity(labels: Iterable[str]) -> bool:
    """Whether an identity's labels are those of an address learned from DNS (it has an ``fqdn:`` label)."""
    return any(label.startswith(FQDN_LABEL_SOURCE + ":") for label in labels)


def fqdn_identity_prefix(labels: Iterable[str]) -> str | None:
    """The ``/32`` of an fqdn identity (from its ``cidr:`` label), None for any other identity."""
    labels = tuple(labels)
    if not is_fqdn_identity(labels):
        return None
    return next((label.split(":", 1)[1] for label in labels if label.startswith("cidr:")), None)


def parse_fqdn_selector(doc: DocRef, path: str, value: Any) -> FqdnSelector:
    """One ``toFQDNs`` or ``rules.dns`` item: ``{matchName: ...}`` or ``{matchPattern: ...}``."""
    fields = Fields(doc, path, value, allowed={"matchName", "matchPattern"})
    name, pattern = fields.string("matchName"), fields.string("matchPattern")
    if bool(name) == bool(pattern):
        why = "has both matchName and matchPattern" if name else "needs matchName or matchPattern"
        raise doc.error(path, f"{why} (exactly one per item; write two items for both)")
    try:
        return FqdnSelector(match_name=name) if name else FqdnSelector(match_pattern=pattern)
    except ValueError as err:
        field = fields.at("matchName" if name else "matchPattern")
        raise doc.error(field, str(err).split(" ", 1)[1]) from None
