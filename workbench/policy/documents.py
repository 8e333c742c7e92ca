"""Loading policy documents: YAML text, a file, or dicts -> validated :class:`PolicyDocument`.

All documents are validated before any is returned, so a batch applies
completely or not at all: one bad document raises a single-line
:class:`~workbench.errors.ValidationError` and nothing comes back.

Example::

    >>> docs = load_documents('''
    ... apiVersion: cilium.io/v2
    ... kind: CiliumNetworkPolicy
    ... metadata: {name: rule1}
    ... spec:
    ...   endpointSelector: {matchLabels: {class: deathstar, org: empire}}
    ...   ingress:
    ...   - fromEndpoints: [{matchLabels: {org: empire}}]
    ...     toPorts: [{ports: [{port: "80", protocol: TCP}]}]
    ... ''')
    >>> docs[0].key
    'default/rule1'
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from workbench.errors import NotFoundError, ValidationError
from workbench.lab.yamldocs import MalformedYAML, load_yaml_documents, read_text_file
from workbench.policy.cnp import parse_cilium_spec
from workbench.policy.fields import DocRef, Fields, type_name
from workbench.policy.knp import parse_network_policy_spec
from workbench.policy.rules import CCNP_KIND, CNP_KIND, KNP_KIND, PolicyDocument, PolicySpec

API_VERSIONS = {CNP_KIND: "cilium.io/v2", CCNP_KIND: "cilium.io/v2", KNP_KIND: "networking.k8s.io/v1"}
DEFAULT_NAMESPACE = "default"

# Written by the API server, or only descriptive: accepted, never enforced.
_METADATA_FIELDS = {"name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
                    "creationTimestamp", "managedFields", "selfLink", "finalizers"}
_METADATA_UNSUPPORTED = {"generateName": "generateName is not supported; give metadata.name"}
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

Source = str | Path | dict[str, Any] | list[dict[str, Any]]


def load_documents(source: Source, *, origin: str = "", paths: bool = True) -> list[PolicyDocument]:
    """Parse and validate every policy document in ``source``.

    ``source`` is multi-document YAML text, a path to a YAML file, one dict or a
    list of dicts. ``kind: List`` documents are flattened. Empty documents are
    skipped; a source with no document at all is refused. Raises
    :class:`ValidationError` (nothing is returned) when any document is
    invalid, and :class:`NotFoundError` for a missing file. ``paths=False``:
    a string is always YAML text, never a file name (the agent reads no path
    a client names). ``origin`` names the source in errors.
    """
    read_origin, raws = _read(source, paths, origin)
    origin = origin or read_origin
    flat: list[tuple[Any, DocRef]] = []
    for position, raw in raws:
        ref = DocRef(position, source=origin)
        if isinstance(raw, dict) and raw.get("kind") == "List" and "items" in raw:
            items = raw["items"]
            if not isinstance(items, list):
                raise ref.error("items", f"must be a list, got {type_name(items)}")
            flat.extend((item, DocRef(position, source=origin)) for item in items)
        else:
            flat.append((raw, ref))
    if not flat:
        raise ValidationError(f"{origin or 'policy text'}: no policy documents in it")

    documents = [parse_document(raw, ref) for raw, ref in flat]
    seen: dict[tuple[str, str], int] = {}
    for doc in documents:
        ident = (doc.kind, doc.key)
        if ident in seen:
            raise DocRef(doc.index, doc.kind, doc.key, origin).error(
                "metadata.name", f"{doc.kind} {doc.key} is also policy document {seen[ident]}")
        seen[ident] = doc.index
    return documents


def _read(source: Source, paths: bool, origin: str) -> tuple[str, list[tuple[int, Any]]]:
    """(file name or "", [(1-based position, decoded document)]) without empty documents."""
    # Dicts belong to the caller: keep a private copy (parsed YAML is already ours).
    if isinstance(source, dict):
        return "", [(1, copy.deepcopy(source))]
    if isinstance(source, list):
        return "", list(enumerate(copy.deepcopy(source), start=1))
    if not isinstance(source, str | Path):
        raise ValidationError(f"policy source must be YAML text, a file path, a dict or a list of dicts, "
                              f"got {type_name(source)}")
    if isinstance(source, Path) or (paths and "\n" not in source and _looks_like_path(source)):
        path = Path(source)
        if not path.is_file():
            raise NotFoundError(f"policy file {path} does not exist")
        return path.name, _parse_yaml(read_text_file(path), path.name)
    return origin, _parse_yaml(source, origin)


def _looks_like_path(text: str) -> bool:
    stripped = text.strip()
    return bool(stripped) and (Path(stripped).is_file() or stripped.endswith((".yaml", ".yml", ".json")))


def _parse_yaml(text: str, origin: str) -> list[tuple[int, Any]]:
    try:
        documents = load_yaml_documents(text, origin or "policy text")
    except MalformedYAML as err:
        raise ValidationError(f"{DocRef(err.document, source=origin).describe()}: malformed YAML{err.at}: "
                              f"{err.problem}") from None
    # Positions stay those of the YAML stream; empty documents (a trailing "---") are dropped.
    return [(i, d) for i, d in enumerate(documents, start=1) if d is not None]


def parse_document(raw: Any, ref: DocRef) -> PolicyDocument:
    """Validate one document (already YAML-decoded) into a :class:`PolicyDocument`."""
    if not isinstance(raw, dict):
        raise ref.error("", f"must be a mapping with apiVersion, kind, metadata, got {type_name(raw)}")
    kind = raw.get("kind")
    if kind is None:
        raise ref.error("kind", "is required")
    if not isinstance(kind, str) or kind not in API_VERSIONS:   # a list or mapping is unhashable
        raise ref.error("kind", f"unsupported kind {kind!r} (supported: {', '.join(API_VERSIONS)})")
    name = _name(raw, ref)
    ref = DocRef(ref.index, kind, name, ref.source)
    metadata = Fields(ref, "metadata", raw.get("metadata"), allowed=_METADATA_FIELDS,
                      unsupported=_METADATA_UNSUPPORTED)
    namespace = _namespace(ref, metadata, kind)
    if namespace:
        ref = DocRef(ref.index, kind, f"{namespace}/{name}", ref.source)
    api_version = raw.get("apiVersion")
    if api_version != API_VERSIONS[kind]:
        raise ref.error("apiVersion", f"{kind} needs apiVersion {API_VERSIONS[kind]}, got {api_version!r}")
    spec_fields = {"spec", "specs"} if kind != KNP_KIND else {"spec"}
    fields = Fields(ref, "", raw, allowed={"apiVersion", "kind", "metadata", "status"} | spec_fields,
                    unsupported={"specs": "NetworkPolicy has no specs; use spec"} if kind == KNP_KIND else {})

    specs: list[PolicySpec] = []
    if kind == KNP_KIND:
        specs.append(parse_network_policy_spec(ref, "spec", fields.mapping("spec", required=True), namespace))
    else:
        if not fields.has("spec") and not fields.has("specs"):
            raise ref.error("spec", f"{kind} needs spec or specs")
        if fields.has("spec"):
            specs.append(parse_cilium_spec(ref, "spec", fields.value["spec"], namespace))
        spec_items = fields.items("specs")
        if fields.has("specs") and not spec_items:
            raise ref.error("specs", "must list at least one rule")
        for item_path, item in spec_items:
            specs.append(parse_cilium_spec(ref, item_path, item, namespace))
    return PolicyDocument(kind=kind, api_version=str(api_version), name=name, namespace=namespace,
                          specs=tuple(specs), index=ref.index, source=ref.source, raw=raw)


def _name(raw: dict[str, Any], ref: DocRef) -> str:
    metadata = raw.get("metadata")
    if not isinstance(metadata, dict):
        raise DocRef(ref.index, str(raw.get("kind")), "", ref.source).error(
            "metadata", "is required (with a name)" if metadata is None else
            f"must be a mapping, got {type_name(metadata)}")
    name = metadata.get("name")
    bad = DocRef(ref.index, str(raw.get("kind")), "", ref.source)
    if name is None or name == "":
        raise bad.error("metadata.name", "is required")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise bad.error("metadata.name", f"{name!r} is not a valid name (lowercase letters, digits, '-', '.')")
    return name


def _namespace(ref: DocRef, metadata: Fields, kind: str) -> str:
    if kind == CCNP_KIND:
        if metadata.has("namespace"):
            raise ref.error("metadata.namespace", f"{kind} is cluster-scoped and has no namespace")
        return ""
    namespace = metadata.string("namespace", default=DEFAULT_NAMESPACE)
    if not _NAMESPACE_RE.match(namespace):
        raise ref.error("metadata.namespace", f"{namespace!r} is not a valid namespace name")
    return namespace
