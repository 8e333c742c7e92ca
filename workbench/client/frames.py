"""The DataFrames a lab's views return, built from the agent's replies (one place for each table).

``Lab.endpoints``, ``Lab.services``, ``Lab.identities``, ``Lab.status_table()``
and the ``%%policy --dry-run`` rows are these frames; the CLI and the notebook
only render them.

Example::

    >>> endpoints_frame([]).columns.tolist()[:4]
    ['id', 'identity', 'labels', 'ipv4']
    >>> services_frame([{"name": "deathstar", "namespace": "default", "cluster_ip": "10.96.0.10",
    ...                  "ports": [{"port": 80, "target_port": 80, "protocol": "TCP"}],
    ...                  "selector": {"class": "deathstar"}, "backends": []}]).loc[0, "ports"]
    ['80->80/TCP']
"""

from __future__ import annotations

from typing import Any

import pandas as pd

ENDPOINT_COLUMNS = ["id", "identity", "labels", "ipv4", "pod", "namespace", "ingress_enforcement",
                    "egress_enforcement", "app", "lxc", "ifindex"]
SERVICE_COLUMNS = ["name", "namespace", "cluster_ip", "ports", "selector", "backends"]
IDENTITY_COLUMNS = ["id", "labels"]
LAB_COLUMNS = ["lab", "status", "pods", "services", "agent_pid", "pod_cidr"]
FQDN_COLUMNS = ["name", "ip", "ttl", "expires", "expires_in", "identity", "source"]


def endpoints_frame(endpoints: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per pod (the agent's ``endpoint.list``); enforcement is False until a policy selects it."""
    rows = [{**ep, "ingress_enforcement": ep.get("ingress_enforcement", False),
             "egress_enforcement": ep.get("egress_enforcement", False), "labels": list(ep["labels"])}
            for ep in endpoints]
    return pd.DataFrame(rows, columns=ENDPOINT_COLUMNS)


def services_frame(services: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per ClusterIP service; ports as ``port->target/PROTO``, the selector as ``k=v,k2=v2``."""
    rows = [{**svc, "ports": [f"{p['port']}->{p['target_port']}/{p['protocol']}" for p in svc["ports"]],
             "selector": ",".join(f"{k}={v}" for k, v in svc["selector"].items())} for svc in services]
    return pd.DataFrame(rows, columns=SERVICE_COLUMNS)


def identities_frame(identities: list[dict[str, Any]]) -> pd.DataFrame:
    """Security identities (reserved ones first) and their full labels."""
    return pd.DataFrame(identities, columns=IDENTITY_COLUMNS)


def fqdn_cache_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The DNS proxy's learnt names (``fqdn.cache``): one row per (name, IP); ``expires`` in UTC,
    ``identity`` the address's toFQDNs identity (missing when no toFQDNs selector selects it)."""
    frame = pd.DataFrame(rows, columns=FQDN_COLUMNS)
    frame["expires"] = pd.to_datetime(frame["expires"], utc=True)
    frame["identity"] = frame["identity"].astype("Int64")
    return frame


def labs_frame(statuses: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per lab on this node, from each lab's status."""
    return pd.DataFrame(statuses, columns=LAB_COLUMNS)


def dry_run_frame(outcome: dict[str, Any]) -> pd.DataFrame:
    """The entries and enforcement changes a ``policy apply --dry-run`` would make."""
    return pd.DataFrame(outcome.get("rows", []))
