"""Property-based fuzzing of the policy and manifest loaders (no root: pure parsers).

Whatever a user hands ``policy apply`` or ``lab up`` (random text, random
bytes, random JSON-like documents, valid documents with one subtree replaced
by junk), the loaders either return a validated result or raise the project's
error type (:class:`~workbench.errors.WorkbenchError`) with a one-line
message. Any other exception, or a message with a line break, is a bug.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.errors import WorkbenchError
from workbench.lab.manifests import DEMO_MANIFEST, LabSpec, parse_manifests
from workbench.lab.yamldocs import decode_text, load_yaml_documents
from workbench.policy.documents import load_documents
from workbench.policy.rules import PolicyDocument

pytestmark = pytest.mark.unprivileged

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

RULE1_L7 = yaml.safe_load("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default, labels: {a: b}}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: POST, path: /v1/request-landing, headers: ["X-Ok"]}]}
  egress:
  - toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]
    toPorts: [{ports: [{port: "53", endPort: 60, protocol: UDP}]}]
""")
KNP = yaml.safe_load("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [web]}]}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}, {namespaceSelector: {}}]
    ports: [{port: http, protocol: TCP}, {port: 8000, endPort: 8080}]
""")
MANIFESTS = list(yaml.safe_load_all(DEMO_MANIFEST.read_text()))

# Scalars a YAML or JSON document can carry, with the awkward ones made likely.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["", " ", "\n", "80", "-1", "65536", "TCP", "ANY", "0x50", "a\nb", "é", "\u2028",
                     "/v1/(a+)+", "(?=x)", "\\1", "*", "~", "null", "1e309", "10.0.0.0/33", "0.0.0.0/0"]),
)
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=12) | st.sampled_from(["port", "ports", "name", "spec",
                                                                               "matchLabels", "http", "rules"]),
                                      inner, max_size=4), max_leaves=20)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a node of a decoded document."""
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += paths(child, (*prefix, index))
    return out


@st.composite
def mutated(draw: st.DrawFn, documents: list[Any]) -> Any:
    """One of ``documents`` with one node replaced by junk (or deleted from its mapping)."""
    doc = copy.deepcopy(draw(st.sampled_from(documents)))
    path = draw(st.sampled_from(paths(doc)))
    if not path:
        return draw(junk)
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(junk)
    return doc


def one_line_error(err: BaseException) -> None:
    assert isinstance(err, WorkbenchError), f"{type(err).__name__}: {err}"
    message = str(err)
    assert len(message.splitlines()) == 1, repr(message)
    assert "Traceback" not in message


def as_text(doc: Any, style: str) -> str:
    if style == "json":
        return json.dumps(doc, default=str)
    return yaml.safe_dump(doc, allow_unicode=True) if style == "yaml" else yaml.safe_dump_all([doc, doc])


def load_policy(text: str) -> list[PolicyDocument] | None:
    try:
        return load_documents(text, paths=False)
    except Exception as err:
        one_line_error(err)
        return None


def load_manifest(text: str) -> LabSpec | None:
    try:
        return parse_manifests([("fuzz.yaml", text)])
    except Exception as err:
        one_line_error(err)
        return None


@FUZZ
@given(st.text(max_size=400))
def test_any_text_is_a_policy_or_one_line_error(text):
    load_policy(text)


@FUZZ
@given(st.text(max_size=400))
def test_any_text_is_a_lab_or_one_line_error(text):
    load_manifest(text)


@FUZZ
@given(mutated([RULE1_L7, KNP]), st.sampled_from(["json", "yaml", "stream"]))
def test_mutated_policies_load_or_fail_in_one_line(doc, style):
    result = load_policy(as_text(doc, style))
    if result is not None and style != "stream":
        assert len(result) == 1 and result[0].name     # a valid result is a whole, named document


@FUZZ
@given(mutated([RULE1_L7, KNP]))
def test_mutated_policy_dicts_load_or_fail_in_one_line(doc):
    try:
        load_documents(doc)
    except Exception as err:
        one_line_error(err)


@FUZZ
@given(st.lists(mutated(MANIFESTS), min_size=1, max_size=4), st.sampled_from(["json", "yaml"]))
def test_mutated_manifests_load_or_fail_in_one_line(docs, style):
    if style == "json":
        text = "\n---\n".join(json.dumps(d, default=str) for d in docs)
    else:
        text = yaml.safe_dump_all(docs, allow_unicode=True)
    spec = load_manifest(text)
    if spec is not None:
        assert all(pod.name and pod.namespace for pod in spec.pods)


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_are_text_or_one_line_error(data):
    try:
        text = decode_text(data, "fuzz.bin")
    except Exception as err:
        one_line_error(err)
        return
    load_policy(text)
    load_manifest(text)


@FUZZ
@given(st.recursive(st.sampled_from(["a", "1", "[]", "{}", "*x", "&x a", "!!python/object:os.system x",
                                     "!!binary AAAA", "? a", "<<: *x", "|", ">", "- ", "-", ":", "'", '"']),
                    lambda inner: st.builds(lambda a, b, sep: f"{a}{sep}{b}", inner, inner,
                                            st.sampled_from(["\n", ": ", "\n  ", ", ", "\n- ", " "])),
                    max_leaves=12))
def test_yaml_shaped_text_decodes_or_fails_in_one_line(text):
    try:
        load_yaml_documents(text, "fuzz.yaml")
    except Exception as err:
        one_line_error(err)
