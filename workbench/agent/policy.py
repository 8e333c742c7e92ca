"""The policy service of the lab agent: documents -> compiler -> datapath, served over the local API.

It writes the policy map of the lab's :class:`~workbench.datapath.loader.Datapath`
(which the agent owns), keeps the applied documents (persisted in the lab's
state dir), recompiles when policies or endpoints change, and swaps the
policy map atomically. Every method validates and compiles before touching
the kernel, so bad input leaves the previous policy in force.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from typing import Any

from workbench.agent.context import LabContext
from workbench.datapath import abi, build
from workbench.datapath.loader import Datapath
from workbench.errors import NotFoundError, ValidationError
from workbench.lab.ipam import BASE_IPCACHE
from workbench.lab.model import ID_HOST, ID_WORLD, PROTOCOLS, Endpoint, Identity
from workbench.policy import compile_policies, diff, explain, load_documents
from workbench.policy.compiler import CompiledPolicy, live_edit
from workbench.policy.evaluate import cidr_identity, connection_allowed
from workbench.policy.replay import replay
from workbench.policy.rules import PolicyDocument
from workbench.policy.rules_view import live_entries, rule_rows
from workbench.policy.trace import format_trace, resolve_ends, trace

RESERVED_NAMES = {"host": ID_HOST, "world": ID_WORLD, "reserved:host": ID_HOST, "reserved:world": ID_WORLD,
                  "any": 0, "all": 0}


class PolicyService:
    """Applied policy of one lab (one per agent)."""

    def __init__(self, ctx: LabContext, datapath: Datapath) -> None:
        self.ctx = ctx
        self.lock = threading.RLock()
        self.datapath = datapath
        self.documents: dict[str, PolicyDocument] = {}
        self.compiled = CompiledPolicy()
        # Identities that other services own (the DNS service's per-address toFQDNs identities): asked at
        # every compile with the documents being compiled; ``after_write`` hooks run once a compile is in
        # the map (the DNS service then points the ipcache at its identities).
        self.identity_sources: list[Callable[[list[PolicyDocument]], list[Identity]]] = []
        self.after_write: list[Callable[[CompiledPolicy], None]] = []
        self.path = ctx.dir / "policies.json"
        if self.path.exists():  # a restarted agent keeps the lab's policies
            raw = json.loads(self.path.read_text())
            self.documents = {d.key: d for d in load_documents(raw, paths=False)} if raw else {}

    # -- compile and write -------------------------------------------------------------
    def _identities(self, documents: list[PolicyDocument]) -> list[Identity]:
        extra = [ident for source in self.identity_sources for ident in source(documents)]
        return list(self.ctx.identities.all()) + extra

    def _compile(self, documents: dict[str, PolicyDocument]) -> CompiledPolicy:
        docs = list(documents.values())
        return compile_policies(docs, list(self.ctx.endpoints.values()),
                                self._identities(docs), self.ctx.spec.namespaces,
                                previous_cidr_identities=self.compiled.cidr_identities,
                                max_entries=self.datapath.policy_writer().capacity)

    def _base_ipcache(self) -> dict[str, int]:
        """The prefixes the agent itself maps (restored when a policy CIDR identity goes away)."""
        base = dict(BASE_IPCACHE)
        base.update({f"{ep.ipv4}/32": ep.identity for ep in self.ctx.endpoints.values()})
        return base

    def _write(self, compiled: CompiledPolicy) -> None:
        writer = self.datapath.policy_writer()
        writer.apply(compiled.entries, set(compiled.enforced))
        # CIDR identities land right after the switch; only prefixes a policy names change.
        base = self._base_ipcache()
        for prefix, identity in compiled.cidr_identities.items():
            if self.compiled.cidr_identities.get(prefix) != identity:
                build.ipcache_set(self.ctx.maps, prefix, identity)
        for prefix in set(self.compiled.cidr_identities) - set(compiled.cidr_identities):
            if prefix in base:
                build.ipcache_set(self.ctx.maps, prefix, base[prefix])
            else:
                build.ipcache_delete(self.ctx.maps, prefix)
        self.compiled = compiled
        for hook in self.after_write:
            hook(compiled)

    def _commit(self, documents: dict[str, PolicyDocument]) -> CompiledPolicy:
        compiled = self._compile(documents)   # raises before any kernel write
        self._write(compiled)
        self.documents = documents
        self.path.write_text(json.dumps([d.raw for d in documents.values()]))
        return compiled

    def refresh(self) -> None:
        """Recompile against the current endpoints and identities (a pod came or went, a name was learnt)."""
        with self.lock:
            if self.documents:
                self._commit(dict(self.documents))

    # -- endpoint observer (after the datapath has attached or detached the endpoint) ----------
    def attach_endpoint(self, ep: Endpoint) -> None:
        self.refresh()

    def detach_endpoint(self, ep: Endpoint) -> None:
        self.refresh()

    def close(self) -> None:
        """Nothing to release: the datapath belongs to the agent, the policy stays pinned."""

    def enforcement(self, ep: Endpoint) -> tuple[bool, bool]:
        enforced = self.compiled.enforced
        return (ep.id, "ingress") in enforced, (ep.id, "egress") in enforced

    # -- local API methods ---------------------------------------------------------------
    def apply(self, text: str, source: str = "", dry_run: bool = False, audit: bool = False) -> dict[str, Any]:
        docs = load_documents(text, origin=source, paths=False)   # never a path: the text is the client's
        with self.lock:
            documents = dict(self.documents)
            for doc in docs:
                documents[doc.key] = doc
            if dry_run:
                new = self._compile(documents)
                change = diff(self.compiled, new)
                return {"applied": [], "dry_run": True, "summary": change.summary(),
                        "rows": change.rows(self.compiled, new), "endpoints": sorted(change.endpoints)}
            compiled = self._commit(documents)
            audited = self._audit_selected(docs) if audit else []
            return {"applied": [d.key for d in docs], "entries": len(compiled.entries), "audited": audited,
                    "enforced": sorted(f"{compiled.endpoint_names.get(e, e)}:{d}" for e, d in compiled.enforced),
                    "timing": self.datapath.policy_writer().last_apply_timing}

    def _audit_selected(self, docs: list[PolicyDocument]) -> list[str]:
        """Audit mode for the endpoints these documents select (in any direction)."""
        selected = {ep_id for ep_id, _ in self._compile({d.key: d for d in docs}).enforced}
        pods = [ep for ep in self.ctx.endpoints.values() if ep.id in selected]
        for ep in pods:
            self.datapath.set_audit(ep.id, True)
        return sorted(ep.pod for ep in pods)

    def get(self) -> list[dict[str, Any]]:
        with self.lock:
            return [{"key": d.key, "name": d.name, "namespace": d.namespace, "kind": d.kind,
                     "entries": len(self.compiled.entries_from(d.key)), "raw": d.raw}
                    for d in self.documents.values()]

    def delete(self, names: list[str] | None = None, all: bool = False) -> dict[str, Any]:
        with self.lock:
            documents = dict(self.documents)
            if all:
                gone = list(documents)
                documents = {}
            else:
                gone = []
                for name in names or []:
                    key = self._find_key(name)
                    gone.append(key)
                    documents.pop(key)
            self._commit(documents)
            return {"deleted": gone}

    def _find_key(self, name: str) -> str:
        if name in self.documents:
            return name
        matches = [k for k, d in self.documents.items() if d.name == name]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(self.documents) or "(none)"
        if matches:
            raise ValidationError(f"policy name {name} is ambiguous: {', '.join(matches)}; use namespace/name")
        raise NotFoundError(f"policy {name} not found; policies: {known}")

    def explain(self, pod: str | None = None, direction: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return explain(self.compiled, pod=pod, direction=direction)  # type: ignore[arg-type]

    def bpf_policy(self, pod: str | None = None) -> list[dict[str, Any]]:
        """The live policy map (like `cilium bpf policy get`), with pods and identity labels."""
        with self.lock:
            frame = self.datapath.policy_writer().entries()
            pods = {ep.id: ep for ep in self.ctx.endpoints.values()}
            labels = {i.id: list(i.labels) for i in self._identities(list(self.documents.values()))}
            labels.update({k: list(v) for k, v in self.compiled.identity_labels.items()})
            labels[0] = ["(any)"]
            if pod is not None:
                frame = frame[frame.ep_id == self.ctx.endpoint(pod).id]
            rows = []
            for row in frame.to_dict(orient="records"):
                owner = pods.get(int(row["ep_id"]))
                rows.append({"endpoint": row["ep_id"], "pod": f"{owner.namespace}/{owner.pod}" if owner else "",
                             **{k: v for k, v in row.items() if k != "ep_id"},
                             "labels": labels.get(int(row["identity"]), [])})
            return rows

    def audit(self, on: bool, pod: str | None = None) -> dict[str, Any]:
        ep = self.ctx.endpoint(pod) if pod else None
        self.datapath.set_audit(ep.id if ep else None, on)
        return {"audit": on, "endpoints": [ep.pod] if ep else sorted(self.ctx.endpoints)}

    def resolve_identity(self, peer: int | str) -> int:
        """A peer as an identity: a number, a pod name, or host/world/any."""
        if isinstance(peer, int) or str(peer).isdigit():
            return int(peer)
        if str(peer) in RESERVED_NAMES:
            return RESERVED_NAMES[str(peer)]
        try:
            return self.ctx.endpoint(str(peer)).identity
        except NotFoundError as err:
            raise NotFoundError(f"peer {peer} is not an identity number, a pod or one of "
                                f"{', '.join(sorted(RESERVED_NAMES))}; {err}") from None

    def edit_map(self, op: str, pod: str, direction: str, peer: int | str = 0, protocol: str = "ANY",
                 port: int = 0, end_port: int | None = None) -> dict[str, Any]:
        """Live edit of the policy map itself; the next new connection sees it."""
        if op not in ("allow", "deny", "remove"):
            raise ValidationError(f"map edit operation {op!r} must be allow, deny or remove")
        if direction not in ("ingress", "egress"):
            raise ValidationError(f"direction {direction!r} must be ingress or egress")
        proto = PROTOCOLS.get(str(protocol).upper())
        if proto is None:
            raise ValidationError(f"protocol {protocol!r} must be one of {', '.join(PROTOCOLS)}")
        if not 0 <= int(port) <= 65535 or (end_port is not None and not int(port) <= int(end_port) <= 65535):
            raise ValidationError(f"port {port}-{end_port} is out of range 0-65535")
        ep = self.ctx.endpoint(pod)
        identity = self.resolve_identity(peer)
        writer = self.datapath.policy_writer()
        with self.lock:
            removed = writer.edit(live_edit(op, ep.id, direction, identity, proto, int(port), end_port))  # type: ignore[arg-type]
            if op == "remove":
                return {"removed": removed}
            return {op: {"endpoint": ep.id, "pod": ep.pod, "direction": direction, "identity": identity,
                         "protocol": str(protocol).upper(), "port": int(port), "end_port": end_port}}

    def datapath_metrics(self) -> list[dict[str, Any]]:
        return list(self.datapath.metrics().to_dict(orient="records"))

    def methods(self) -> dict[str, Callable[..., Any]]:
        """The local API methods of this service (``connectivity.expect`` is the L7 service's, which asks
        :meth:`expect` first)."""
        return {"policy.apply": self.apply, "policy.get": self.get, "policy.delete": self.delete,
                "policy.explain": self.explain, "policy.audit": self.audit, "policy.map.edit": self.edit_map,
                "bpf.policy.get": self.bpf_policy, "datapath.metrics": self.datapath_metrics,
                "policy.rules": self.rules, "policy.trace": self.trace, "policy.replay": self.replay}

    # -- explaining verdicts: rules with counters, trace ----------------------------------------
    def rules(self) -> list[dict[str, Any]]:
        """One row per rule of every applied policy, with the live map's counters of its entries."""
        with self.lock:
            live = self.datapath.policy_writer().entries().to_dict(orient="records")
            return rule_rows(self.documents.values(), self.compiled, live)

    def audit_flags(self) -> dict[int, bool]:
        """Endpoint id -> audit mode, as the datapath's endpoints map holds it."""
        return {int(info.ep_id): bool(int(info.flags) & abi.EP_AUDIT)
                for info in self.datapath.bpf[b"endpoints"].values()}

    def live_policy(self) -> CompiledPolicy:
        """The compiled policy with the entries the live map holds (live edits included)."""
        live = self.datapath.policy_writer().entries().to_dict(orient="records")
        return dataclasses.replace(self.compiled, entries=live_entries(live))

    def _ipcache(self, address: str) -> int:
        found = build.ipcache_lookup(self.ctx.maps, address)
        return ID_WORLD if found is None else found

    def trace(self, source: str, destination: str, port: int, protocol: str = "TCP", http_method: str | None = None,
              http_path: str | None = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """The verdict a new connection (and, with an HTTP method/path, a request) would get now."""
        method, path = http_method, http_path
        proto = str(protocol).upper()
        if proto not in ("TCP", "UDP"):
            raise ValidationError(f"trace protocol {protocol!r} must be TCP or UDP")
        if not 0 < int(port) <= 65535:
            raise ValidationError(f"trace port {port} is out of range 1-65535")
        if (method or path) and proto != "TCP":
            raise ValidationError("trace --method/--path need protocol TCP (HTTP)")
        with self.lock:
            labels = {i.id: tuple(i.labels) for i in self._identities(list(self.documents.values()))}
            labels.update(self.compiled.identity_labels)
            ends = resolve_ends(str(source), str(destination), int(port), proto, list(self.ctx.endpoints.values()),
                                list(self.ctx.services), self._ipcache, self.audit_flags(), labels)
            result = trace(self.live_policy(), ends, proto, method=method, path=path, headers=headers).to_dict()
        result["text"] = format_trace(result)
        return result

    def expect(self, probes: list[dict[str, Any]]) -> list[bool]:
        """For `connectivity test`: which probes the active policy lets through."""
        with self.lock:
            by_pod = {ep.pod: ep for ep in self.ctx.endpoints.values()}
            by_ip = {ep.ipv4: ep for ep in self.ctx.endpoints.values()}
            services = {f"{s.namespace}/{s.name}": s for s in self.ctx.services}
            answers = []
            for probe in probes:
                src = by_pod[probe["source"]]
                if probe["kind"] == "pod-to-service":
                    svc = services[probe["destination"]]
                    backends = [by_pod[b] for b in svc.backends if b in by_pod]
                    targets: list[Endpoint | None] = list(backends)
                    port = next((p.target_port for p in svc.ports if p.port == probe["port"]), probe["port"])
                else:
                    targets = [by_ip.get(probe["address"])]
                    port = probe["port"]
                outside = cidr_identity(self.compiled, probe["address"])
                # A service probe reaches one backend; the policy must allow every one of them to be sure.
                answers.append(all(connection_allowed(
                    self.compiled, (src.id, src.identity), (t.id, t.identity) if t else None,
                    probe["protocol"], int(port), dst_identity=outside) for t in targets))
            return answers

    def replay(self, text: str, flows: list[dict[str, Any]], source: str = "", add: bool = False) -> dict[str, Any]:
        """Recorded connection starts and requests (``flows``, from ``connection_starts``) judged under the
        policy in force and under the documents in ``text`` (replacing the applied set, or joining it with
        ``add``), compiled against the current endpoints. Nothing is applied."""
        docs = load_documents(text, origin=source, paths=False)
        with self.lock:
            documents = dict(self.documents) if add else {}
            for doc in docs:
                documents[doc.key] = doc
            candidate = self._compile(documents)   # compiled only: no kernel write
            base = {k: v for k, v in self._base_ipcache().items() if not k.endswith("/32") or v == ID_HOST}
            return replay(flows, self.live_policy(), candidate, list(self.ctx.endpoints.values()),
                          self.audit_flags(), base)
