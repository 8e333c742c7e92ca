"""``lab.policy``: the Python face of the agent's policy layer.

Documents are validated here first (pure, no kernel), so a bad file is named
in the error before the agent is even asked; the agent validates again and
compiles before it writes anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.client.transport import AgentClient
from workbench.errors import ValidationError
from workbench.lab.yamldocs import read_text_file
from workbench.policy import load_documents

BPF_POLICY_COLUMNS = ["endpoint", "pod", "direction", "identity", "labels", "protocol", "port", "port_end",
                      "action", "match_type", "proxy_port", "packets", "bytes", "rules"]
POLICY_COLUMNS = ["name", "namespace", "kind", "entries"]


def policy_text(source: str | Path | dict[str, Any] | list[Any]) -> tuple[str, str]:
    """(YAML/JSON text, source label) from a path, YAML text, a dict or a list of those; validated."""
    if isinstance(source, dict):
        items: list[Any] = [source]
    elif isinstance(source, list):
        items = source
    else:
        items = [source]
    texts, labels = [], []
    for item in items:
        if isinstance(item, dict):
            load_documents(item)
            texts.append(json.dumps(item))
            labels.append("dict")
        elif isinstance(item, Path) or (isinstance(item, str) and "\n" not in item and Path(item).is_file()):
            path = Path(item)
            load_documents(path)  # errors start with the file name
            texts.append(read_text_file(path))
            labels.append(path.name)
        else:
            load_documents(str(item))
            texts.append(str(item))
            labels.append("text")
    return "\n---\n".join(texts), ", ".join(labels)


class PolicyMapFrame(pd.DataFrame):
    """The live policy map as a DataFrame, with methods that edit the map itself.

    Example::

        >>> m = lab.policy.map                                                  # doctest: +SKIP
        >>> m.allow("deathstar-...", "ingress", peer="xwing", protocol="TCP", port=80)  # doctest: +SKIP
    """

    _metadata = ["_policy"]

    @property
    def _constructor(self) -> type[pd.DataFrame]:
        return pd.DataFrame

    def allow(self, pod: str, direction: str, peer: int | str = 0, protocol: str = "ANY", port: int = 0,
              end_port: int | None = None) -> Any:
        """Add an allow entry; ``peer`` is an identity, a pod name, or world/host/any."""
        return self._policy._edit("allow", pod, direction, peer, protocol, port, end_port)

    def deny(self, pod: str, direction: str, peer: int | str = 0, protocol: str = "ANY", port: int = 0,
             end_port: int | None = None) -> Any:
        """Add a deny entry (it wins over any allow it covers)."""
        return self._policy._edit("deny", pod, direction, peer, protocol, port, end_port)

    def remove(self, pod: str, direction: str, peer: int | str = 0, protocol: str = "ANY", port: int = 0,
               end_port: int | None = None) -> Any:
        """Remove the entries with exactly these keys."""
        return self._policy._edit("remove", pod, direction, peer, protocol, port, end_port)


def audit_switch(on: bool | str) -> bool:
    """True/False from a bool or the words "on"/"off" (any other value is a ValidationError)."""
    if isinstance(on, bool):
        return on
    if isinstance(on, str) and on.strip().lower() in ("on", "off"):
        return on.strip().lower() == "on"
    raise ValidationError(f"audit mode must be True/False or 'on'/'off', not {on!r}")


class TraceReport(dict):  # type: ignore[type-arg]
    """The JSON of a trace, shown as text in a notebook (``str`` of it is what the CLI prints)."""

    def __str__(self) -> str:
        return str(self.get("text", ""))

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(str(self))}</pre>"


class LabPolicy:
    """Policies of one lab. Obtained as ``lab.policy``.

    Example::

        >>> lab.policy.apply("rule1.yaml")          # doctest: +SKIP
        >>> lab.policy.get()                         # doctest: +SKIP
        >>> lab.policy.map.deny("xwing", "egress", peer="world")   # doctest: +SKIP
        >>> lab.policy.delete(all=True)              # doctest: +SKIP
    """

    def __init__(self, client: AgentClient) -> None:
        self._client = client

    def apply(self, source: str | Path | dict[str, Any] | list[Any], *, dry_run: bool = False,
              audit: bool = False) -> dict[str, Any]:
        """Apply CiliumNetworkPolicy / NetworkPolicy documents: all of them or none.

        ``dry_run`` shows which endpoints and entries would change and applies
        nothing; ``audit`` applies and puts the endpoints the documents select
        into audit mode (their policy drops pass, reported as AUDIT).
        """
        text, label = policy_text(source)
        return dict(self._client.call("policy.apply", text=text, source=label, dry_run=dry_run, audit=audit))

    def get(self) -> pd.DataFrame:
        """The applied policies: name, namespace, kind, and how many map entries each produced."""
        return pd.DataFrame(self._client.call("policy.get"), columns=POLICY_COLUMNS + ["raw"])

    def delete(self, *names: str, all: bool = False) -> list[str]:
        """Delete policies by name (or namespace/name), or all of them."""
        return list(self._client.call("policy.delete", names=list(names), all=all)["deleted"])

    def audit(self, on: bool | str = True, pod: str | None = None) -> dict[str, Any]:
        """Audit mode: policy drops pass and are reported with verdict AUDIT.

        ``on`` is True/False or the CLI's words "on"/"off"; anything else is refused.

        Example::

            lab.policy.audit("off")            # enforce again, on every endpoint
            lab.policy.audit(True, pod="deathstar")
        """
        return dict(self._client.call("policy.audit", on=audit_switch(on), pod=pod))

    def explain(self, pod: str | None = None, direction: str | None = None) -> pd.DataFrame:
        """What the compiled policy means, entry by entry, with the policies that produced each.

        Column ``cidr``: for a peer a CIDR rule selects, that rule's meaning for pods
        ("k8s ipBlock: pods in range selected" or "cilium CIDR: pods never selected").
        """
        from workbench.policy.views import COLUMNS

        return pd.DataFrame(self._client.call("policy.explain", pod=pod, direction=direction), columns=COLUMNS)

    @property
    def map(self) -> PolicyMapFrame:
        """The live policy map (like `cilium bpf policy get`), with packet and byte counters."""
        frame = PolicyMapFrame(pd.DataFrame(self._client.call("bpf.policy.get"), columns=BPF_POLICY_COLUMNS))
        frame._policy = self
        return frame

    @property
    def rules(self) -> pd.DataFrame:
        """One row per rule of every applied policy, with the packets and bytes the live map counted for it.

        Columns: policy ("namespace/name"), rule (its path, "spec.ingress[0]"),
        direction, action (allow/deny), peers, ports, l7, entries (live map
        slots), packets, bytes. A rule that matched nothing shows 0.

        Example::

            >>> lab.policy.rules.query("packets == 0")        # dead rules   # doctest: +SKIP
        """
        from workbench.policy.rules_view import COLUMNS

        return pd.DataFrame(self._client.call("policy.rules"), columns=COLUMNS)

    def trace(self, source: str, destination: str, port: int, protocol: str = "TCP", *,
              method: str | None = None, path: str | None = None,
              headers: dict[str, str] | None = None) -> TraceReport:
        """The verdict a new connection from ``source`` to ``destination`` would get now (nothing is sent).

        ``source``: a pod or an IP; ``destination``: a pod, a service (each
        backend is traced; the worst verdict is reported) or an IP (resolved
        through the ipcache). ``method``/``path`` trace an HTTP request through
        the L7 rules too. Keys: verdict, drop_reason_desc, the four ``*_by``
        lists, egress, ingress, l7, backends (docs/policy.md).

        Example::

            >>> lab.policy.trace("xwing", "deathstar", 80, method="POST", path="/v1/request-landing")["verdict"]
            'DROPPED'
        """
        return TraceReport(self._client.call("policy.trace", source=source, destination=destination, port=port,
                                             protocol=protocol, http_method=method, http_path=path,
                                             headers=headers))

    def replay(self, source: str | Path | dict[str, Any] | list[Any], flows: pd.DataFrame | None = None, *,
               add: bool = False) -> pd.DataFrame:
        """Which recorded flows would get another verdict under a candidate policy set (nothing is applied).

        ``source`` is what :meth:`apply` takes; it replaces the applied set, or
        joins it with ``add=True``. ``flows``: a flow table (``lab.flows(...)``,
        a parquet archive read with ``load_parquet``); default: the lab's stored
        flows. Each connection's first packet and each HTTP request is judged
        under the policy now and the candidate; the rows whose verdict changes
        come back with ``verdict_now``, ``verdict_candidate`` and the
        candidate's ``*_by`` lists. ``attrs``: judged, skipped, changed.

        Example::

            >>> lab.policy.replay("rule1.yaml", lab.flows(last=1000))[["src", "dst", "verdict_candidate"]]
        """
        from workbench.client.flows import query_flows
        from workbench.policy.replay import RESULT_COLUMNS, connection_starts

        text, label = policy_text(source)
        if flows is None:
            flows = query_flows(self._client)
        outcome = self._client.call("policy.replay", text=text, source=label, flows=connection_starts(flows),
                                    add=add)
        frame = pd.DataFrame(outcome["rows"], columns=RESULT_COLUMNS)
        frame.attrs.update({k: outcome[k] for k in ("judged", "skipped", "changed")})
        return frame

    def suggest(self, flows: pd.DataFrame | None = None, namespace: str | None = None) -> str:
        """Least-privilege CiliumNetworkPolicy YAML allowing the traffic that passed in ``flows``.

        One policy per workload (pods with one label set), peers by labels (the
        world by /32 CIDR), the ports and HTTP methods/paths seen. Default
        flows: the lab's stored flows. Check it with :meth:`replay` before
        applying it.

        Example::

            >>> text = lab.policy.suggest(lab.flows(last=5000), namespace="default")
            >>> lab.policy.replay(text).empty      # nothing that passed would now be dropped
            True
        """
        from workbench.client.flows import query_flows
        from workbench.policy.replay import connection_starts
        from workbench.policy.suggest import suggest_policies, to_yaml

        if flows is None:
            flows = query_flows(self._client)
        return to_yaml(suggest_policies(connection_starts(flows), namespace))

    def _edit(self, op: str, pod: str, direction: str, peer: int | str, protocol: str, port: int,
              end_port: int | None) -> Any:
        return self._client.call("policy.map.edit", op=op, pod=pod, direction=direction, peer=peer,
                                 protocol=protocol, port=port, end_port=end_port)
