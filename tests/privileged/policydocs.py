"""Policy documents for privileged tests, written as short YAML bodies (indentation does not matter)."""

from __future__ import annotations

import textwrap

DEATHSTAR = "        endpointSelector: {matchLabels: {org: empire, class: deathstar}}\n"


def _document(api_version: str, kind: str, name: str, body: str, namespace: str | None) -> str:
    ns = f"\n  namespace: {namespace}" if namespace else ""
    return (f"apiVersion: {api_version}\nkind: {kind}\nmetadata:\n  name: {name}{ns}\n"
            f"spec:\n{textwrap.indent(textwrap.dedent(body).strip(), '  ')}\n")


def cnp(name: str, body: str, namespace: str | None = None) -> str:
    """A CiliumNetworkPolicy with ``body`` as its spec."""
    return _document("cilium.io/v2", "CiliumNetworkPolicy", name, body, namespace)


def knp(name: str, body: str, namespace: str | None = None) -> str:
    """A Kubernetes NetworkPolicy with ``body`` as its spec."""
    return _document("networking.k8s.io/v1", "NetworkPolicy", name, body, namespace)
