"""JSON input takes the json module's fast path and decodes exactly as the YAML parser would."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.errors import ValidationError
from workbench.lab import yamldocs
from workbench.lab.yamldocs import load_yaml_documents

# Scalars on which JSON and YAML 1.1 agree (YAML 1.1 reads "1e5" or "on" its own way, so floats and
# bare words are left out; strings are always quoted in JSON).
# YAML refuses control characters and treats U+0085/U+2028/U+2029 as line breaks.
printable = st.characters(whitelist_categories=("L", "N", "P", "S", "Zs"), blacklist_characters="\x85")
scalars = st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.text(printable, max_size=12)
keys = st.text(printable, max_size=6)
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(keys, inner, max_size=4), max_leaves=30)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, documents, max_size=5) | st.lists(documents, max_size=5))
def test_json_text_decodes_as_yaml_does(document: object) -> None:
    text = json.dumps(document)
    assert load_yaml_documents(text) == [document]
    # PyYAML cannot read JSON's surrogate-pair escapes; unescaped, the same text is YAML too.
    unescaped = json.dumps(document, ensure_ascii=False)
    assert load_yaml_documents(unescaped) == [yaml.load(unescaped, Loader=yaml.CSafeLoader)]


def test_json_is_not_parsed_as_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_yaml(*args: object, **kwargs: object) -> None:
        raise AssertionError("the YAML parser ran on JSON input")
    monkeypatch.setattr(yamldocs, "_Loader", no_yaml)
    assert load_yaml_documents(' \n{"spec": {"ingress": [{"toPorts": []}]}}') == [{"spec": {"ingress": [{"toPorts": []}]}}]


def test_flow_style_yaml_that_is_not_json_still_parses() -> None:
    assert load_yaml_documents("{a: b, c: [1, two]}") == [{"a": "b", "c": [1, "two"]}]
    assert load_yaml_documents('{"a": 1}\n---\n{"b": 2}\n') == [{"a": 1}, {"b": 2}]


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a": ' * 100_000 + "1" + "}" * 100_000])
def test_deep_json_is_one_line_error(text: str) -> None:
    with pytest.raises(ValidationError) as err:
        load_yaml_documents(text, "deep.json")
    assert "deep.json document 1: nested too deeply" in str(err.value)
    assert "\n" not in str(err.value)
