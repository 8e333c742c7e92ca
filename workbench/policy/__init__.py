"""Policy compiler, in pure stages (no kernel access anywhere here).

1. :func:`load_documents` — YAML text / file / dicts -> validated :class:`PolicyDocument` (all or nothing).
2. :mod:`.rules` — the typed rules both CiliumNetworkPolicy and NetworkPolicy become.
3. :func:`compile_policies` — rules + endpoints + identities -> :class:`CompiledPolicy`
   (policy-map entries, default-deny set, CIDR identities for the ipcache).
4. :func:`explain` / :func:`diff` — what the entries mean and what a change would do.

Example::

    >>> import workbench.policy as pol
    >>> docs = pol.load_documents("rule1.yaml")                          # doctest: +SKIP
    >>> compiled = pol.compile_policies(docs, endpoints, identities, ns)  # doctest: +SKIP
"""

from workbench.policy.compiler import CompiledPolicy, compile_policies, resolve_deny
from workbench.policy.documents import load_documents
from workbench.policy.ports import port_blocks
from workbench.policy.rules import PolicyDocument, PolicyRule, PolicySpec
from workbench.policy.views import PolicyDiff, diff, explain, explain_frame

__all__ = [
    "CompiledPolicy", "PolicyDiff", "PolicyDocument", "PolicyRule", "PolicySpec", "compile_policies",
    "diff", "explain", "explain_frame", "load_documents", "port_blocks", "resolve_deny",
]
