"""Reading YAML that a user hands us (manifests, policies) within bounds.

Three things can make a small input expensive, and each is refused with one line:

- **size**: more than :data:`MAX_BYTES` (3 MiB, the Kubernetes API server's request limit) of text;
- **nesting**: libyaml (the C parser used here) refuses more than 1000 levels
  with a clean error, so no deep input reaches Python's recursion limit;
- **aliases**: anchors referring to anchors expand exponentially ("billion
  laughs"). The rule is the one Kubernetes' YAML decoder (go-yaml v3) applies:
  once a document decodes to more than 1000 nodes with more than 100 of them
  reached through aliases, the share of alias-reached nodes may be at most
  99 % (up to 400k nodes), falling linearly to 10 % at 4M nodes.

Binary input (a NUL byte, or bytes that are not UTF-8) is refused before parsing.

A text that is one JSON document (generated policies often are) is read with
the json module: JSON has no aliases, and it is about twenty times faster than
building YAML nodes, which keeps a 100k-rule policy within seconds.

Example::

    >>> load_yaml_documents("a: 1\\n---\\nb: [x, y]\\n", "demo.yaml")
    [{'a': 1}, {'b': ['x', 'y']}]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from workbench.errors import NotFoundError, ValidationError

# Kubernetes' API server refuses request bodies over 3 MiB (and etcd objects over 1.5 MiB), so no real
# manifest or policy is larger; PyYAML builds about 1 MiB of nodes per 1-2 s, which keeps any input's
# parse within seconds.
MAX_BYTES = 3 * 1024 * 1024
ALIAS_RATIO_LOW, ALIAS_RATIO_HIGH = 400_000, 4_000_000

try:  # libyaml: fast, and it bounds nesting depth itself
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - every supported install has libyaml
    _Loader = yaml.SafeLoader


class MalformedYAML(ValidationError):
    """Text that is not YAML; ``document`` (1-based), ``at`` (" at line L, column C") and ``problem`` say where."""

    def __init__(self, where: str, document: int, at: str, problem: str) -> None:
        super().__init__(f"{where} document {document}: malformed YAML{at}: {problem}")
        self.document, self.at, self.problem = document, at, problem


def allowed_alias_ratio(decoded: int) -> float:
    """The share of alias-reached nodes a document of ``decoded`` nodes may have (go-yaml v3's rule)."""
    if decoded <= ALIAS_RATIO_LOW:
        return 0.99
    if decoded >= ALIAS_RATIO_HIGH:
        return 0.10
    return 0.99 - 0.89 * (decoded - ALIAS_RATIO_LOW) / (ALIAS_RATIO_HIGH - ALIAS_RATIO_LOW)


def expansion(root: yaml.Node) -> tuple[int, int]:
    """(nodes the document decodes to with every alias expanded, distinct nodes), without expanding.

    A node reached a second time is an alias: its whole subtree is decoded again.
    Iterative, memoised per node, so a bomb costs time linear in its text.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done or not children:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)], len(sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_aliasing(node: yaml.Node, where: str) -> None:
    decoded, distinct = expansion(node)
    via_alias = decoded - distinct
    if via_alias > 100 and decoded > 1000 and via_alias / decoded > allowed_alias_ratio(decoded):
        raise ValidationError(f"{where}: excessive aliasing (the anchors expand to {decoded:,} nodes "
                              f"from {distinct:,}); write the values out")


def decode_text(data: bytes, where: str) -> str:
    """UTF-8 text of ``data``, or a one-line error for binary input."""
    if len(data) > MAX_BYTES:
        raise ValidationError(f"{where}: {len(data):,} bytes is more than the {MAX_BYTES:,} a document may have")
    nul = data.find(b"\0")
    if nul >= 0:
        raise ValidationError(f"{where}: binary data, not YAML (a NUL byte at offset {nul})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValidationError(f"{where}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})") from None


def read_text_file(path: Path) -> str:
    """A YAML file's text within the bounds above (NotFoundError when it is missing)."""
    if not path.is_file():
        raise NotFoundError(f"file {path} does not exist")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ValidationError(f"{path.name}: {size:,} bytes is more than the {MAX_BYTES:,} a document may have")
    return decode_text(path.read_bytes(), path.name)


def load_yaml_documents(text: str, where: str = "input") -> list[Any]:
    """Every document of a YAML stream, decoded (None for an empty one); bounded as described above.

    Raises ValidationError (MalformedYAML for bad syntax) whose text is one line.
    """
    if len(text) > MAX_BYTES:
        raise ValidationError(f"{where}: {len(text):,} characters is more than the {MAX_BYTES:,} a document "
                              "may have")
    if "\0" in text:
        raise ValidationError(f"{where}: binary data, not YAML (a NUL character at offset {text.index(chr(0))})")
    as_json = _json_document(text, where)
    if as_json is not _NOT_JSON:
        return [as_json]
    has_anchors = "&" in text
    loader = _Loader(text)
    documents: list[Any] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                documents.append(None)
                continue
            if has_anchors:  # no anchor, no alias: skip the walk (a third of the time of a big document)
                _check_aliasing(node, f"{where} document {len(documents) + 1}")
            documents.append(loader.construct_document(node))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = (getattr(err, "problem", None) or str(err)).splitlines()[0]
        raise MalformedYAML(where, len(documents) + 1, at, problem) from None
    finally:
        loader.dispose()
    return documents


_NOT_JSON = object()


def _json_document(text: str, where: str) -> Any:
    """The decoded document when ``text`` is one JSON object or array, else ``_NOT_JSON`` (parse it as YAML)."""
    if not text.lstrip().startswith(("{", "[")):
        return _NOT_JSON
    try:
        return json.loads(text)
    except RecursionError:
        raise ValidationError(f"{where} document 1: nested too deeply (JSON input)") from None
    except ValueError:  # flow-style YAML such as {a: b} is no JSON: the YAML parser decides
        return _NOT_JSON
