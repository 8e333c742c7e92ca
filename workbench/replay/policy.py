"""Policy questions answered in replay mode by the compiler itself, on the recorded lab.

A dry run (``policy apply --dry-run``, ``%%policy --dry-run``), ``policy trace`` and ``policy replay``
are pure computations once the lab's endpoints, identities, services and policies are known, and the
recording holds them: the newest ``endpoint.list``, ``identity.list`` and ``service.list`` answers, and
the policies the replayed sequence has applied (and deleted) up to this point. These run the same
functions the agent's policy service runs (workbench.policy), so a candidate policy nobody recorded
is still judged, against the lab as it was recorded. Live map edits and audit mode are not part of the
recording (the policy map is taken as compiled).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from workbench.lab.ipam import BASE_IPCACHE
from workbench.lab.model import ID_HOST, ID_WORLD, Endpoint, Identity, Service, ServicePort
from workbench.policy import compile_policies, diff, load_documents
from workbench.policy.compiler import CompiledPolicy
from workbench.policy.evaluate import cidr_identity
from workbench.policy.replay import replay
from workbench.policy.rules import PolicyDocument
from workbench.policy.trace import format_trace, resolve_ends, trace
from workbench.replay.recording import unscrub


@dataclass
class RecordedLab:
    """The lab as the recording knows it at the replay's position."""

    endpoints: list[Endpoint]
    identities: list[Identity]
    services: list[Service]
    documents: dict[str, PolicyDocument]

    def compile(self, documents: Iterable[PolicyDocument]) -> CompiledPolicy:
        return compile_policies(list(documents), self.endpoints, self.identities, {})

    def ipcache(self, address: str, compiled: CompiledPolicy) -> int:
        for ep in self.endpoints:
            if ep.ipv4 == address:
                return ep.identity
        prefix = f"{address}/32"
        return BASE_IPCACHE.get(prefix, cidr_identity(compiled, address))


def recorded_lab(entries: list[dict[str, Any]], lab: str) -> RecordedLab:
    """Endpoints, identities, services (newest answers) and the applied policies of ``entries`` in order."""
    latest: dict[str, Any] = {}
    raw: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.get("kind") != "call" or entry.get("error"):
            continue
        method, params = entry.get("method"), entry.get("params") or {}
        if method in ("endpoint.list", "identity.list", "service.list"):
            latest[method] = unscrub(entry.get("result"), lab)
        elif method == "policy.get":
            raw = {p["key"]: p["raw"] for p in entry.get("result") or []}
        elif method == "policy.apply" and not params.get("dry_run"):
            for doc in load_documents(params.get("text", ""), paths=False):
                raw[doc.key] = doc.raw
        elif method == "policy.delete":
            if params.get("all"):
                raw = {}
            for name in params.get("names") or []:
                raw = {k: v for k, v in raw.items() if k != name and k.split("/")[-1] != name}
    endpoints = []
    for data in latest.get("endpoint.list", []):
        ep = Endpoint(**{k: v for k, v in data.items() if k in Endpoint.__dataclass_fields__})
        ep.labels = tuple(ep.labels)
        endpoints.append(ep)
    identities = [Identity(int(d["id"]), tuple(d["labels"])) for d in latest.get("identity.list", [])]
    services = [Service(**{**d, "ports": [ServicePort(**p) for p in d["ports"]]})
                for d in latest.get("service.list", [])]
    documents = {d.key: d for d in load_documents(list(raw.values()), paths=False)} if raw else {}
    return RecordedLab(endpoints, identities, services, documents)


def dry_run(lab: RecordedLab, text: str, source: str = "") -> dict[str, Any]:
    """What ``policy apply --dry-run`` answers: the entries and enforcement the documents would change."""
    documents = dict(lab.documents)
    for doc in load_documents(text, origin=source, paths=False):
        documents[doc.key] = doc
    old, new = lab.compile(lab.documents.values()), lab.compile(documents.values())
    change = diff(old, new)
    return {"applied": [], "dry_run": True, "summary": change.summary(), "rows": change.rows(old, new),
            "endpoints": sorted(change.endpoints), "replayed": True}


def policy_trace(lab: RecordedLab, source: str, destination: str, port: int, protocol: str = "TCP",
                 http_method: str | None = None, http_path: str | None = None,
                 headers: dict[str, str] | None = None) -> dict[str, Any]:
    """What ``policy trace`` answers for the recorded lab and its applied policies."""
    compiled = lab.compile(lab.documents.values())
    labels = {i.id: tuple(i.labels) for i in lab.identities}
    labels.update(compiled.identity_labels)
    ends = resolve_ends(str(source), str(destination), int(port), str(protocol).upper(), lab.endpoints,
                        lab.services, lambda address: lab.ipcache(address, compiled), {}, labels)
    result = trace(compiled, ends, str(protocol).upper(), method=http_method, path=http_path,
                   headers=headers).to_dict()
    result["text"] = format_trace(result)
    return result


def policy_replay(lab: RecordedLab, text: str, flows: list[dict[str, Any]], source: str = "",
                  add: bool = False) -> dict[str, Any]:
    """What ``policy replay`` answers: recorded connections the candidate documents would judge otherwise."""
    documents = dict(lab.documents) if add else {}
    for doc in load_documents(text, origin=source, paths=False):
        documents[doc.key] = doc
    now, candidate = lab.compile(lab.documents.values()), lab.compile(documents.values())
    base = {k: v for k, v in BASE_IPCACHE.items() if not k.endswith("/32") or v == ID_HOST}
    base.setdefault("0.0.0.0/0", ID_WORLD)
    return replay(flows, now, candidate, lab.endpoints, {}, base)
