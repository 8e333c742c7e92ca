"""Policy documents for privileged tests, written as short YAML bodies (indentation does not matter)."""

from __future__ import annotations

import textwrap

DEATHSTAR = "        endpointSelector: {matchLabels: {org: empire, class: deathstar}}\n"
CNP_VERSION = "cilium.io/v2"


def _body(body: str) -> str:
    return textwrap.dedent(body).strip()


def _document(api_version: str, kind: str, name: str, body: str, namespace: str | None,
              key: str = "spec") -> str:
    ns = f"\n  namespace: {namespace}" if namespace else ""
    return f"apiVersion: {api_version}\nkind: {kind}\nmetadata:\n  name: {name}{ns}\n{key}:\n{body}\n"


def cnp(name: str, body: str, namespace: str | None = None) -> str:
    """A CiliumNetworkPolicy with ``body`` as its spec."""
    return _document(CNP_VERSION, "CiliumNetworkPolicy", name, textwrap.indent(_body(body), "  "), namespace)


def ccnp(name: str, body: str) -> str:
    """A CiliumClusterwideNetworkPolicy (no namespace) with ``body`` as its spec."""
    return _document(CNP_VERSION, "CiliumClusterwideNetworkPolicy", name, textwrap.indent(_body(body), "  "), None)


def cnp_specs(name: str, *bodies: str, namespace: str | None = None) -> str:
    """A CiliumNetworkPolicy whose ``specs:`` list holds one spec per body."""
    items = [textwrap.indent(_body(body), "    ").replace("    ", "  - ", 1) for body in bodies]
    return _document(CNP_VERSION, "CiliumNetworkPolicy", name, "\n".join(items), namespace, key="specs")


def knp(name: str, body: str, namespace: str | None = None) -> str:
    """A Kubernetes NetworkPolicy with ``body`` as its spec."""
    return _document("networking.k8s.io/v1", "NetworkPolicy", name, textwrap.indent(_body(body), "  "), namespace)
