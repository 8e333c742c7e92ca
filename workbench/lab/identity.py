"""Security identities: label sets -> numeric ids, Cilium style.

A pod's identity labels are its own labels plus the labels of its namespace,
all with the ``k8s:`` source prefix. The same set always gets the same id
within a lab: the allocation is persisted in the lab's state directory, so an
agent restarted after a crash hands out the ids it handed out before.

Example::

    >>> alloc = IdentityAllocator()
    >>> labels = identity_labels({"class": "xwing"}, "default", {"kubernetes.io/metadata.name": "default"})
    >>> alloc.allocate(labels).id
    256
    >>> alloc.allocate(tuple(reversed(labels))).id
    256
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from workbench.lab.model import (
    FIRST_CLUSTER_IDENTITY,
    NAMESPACE_LABEL,
    NAMESPACE_LABELS_PREFIX,
    RESERVED_IDENTITIES,
    Identity,
    label_tuple,
)


def identity_labels(pod_labels: dict[str, str], namespace: str,
                    namespace_labels: dict[str, str]) -> tuple[str, ...]:
    """The label set an identity is derived from (sorted, ``k8s:`` prefixed).

    Kubernetes' bookkeeping label ``pod-template-hash`` is left out, as Cilium
    does, so that all replicas of a Deployment share one identity.
    """
    labels = {k: v for k, v in pod_labels.items() if k != "pod-template-hash"}
    labels[NAMESPACE_LABEL] = namespace
    for key, value in namespace_labels.items():
        labels[NAMESPACE_LABELS_PREFIX + key] = value
    return label_tuple(labels)


class IdentityAllocator:
    """Numeric ids for label sets, from 256 up, optionally persisted to a JSON file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._ids: dict[tuple[str, ...], int] = {}
        if path is not None and path.exists():
            for entry in json.loads(path.read_text()):
                self._ids[tuple(entry["labels"])] = int(entry["id"])

    def allocate(self, labels: tuple[str, ...] | list[str]) -> Identity:
        key = tuple(sorted(labels))
        if key not in self._ids:
            self._ids[key] = max(self._ids.values(), default=FIRST_CLUSTER_IDENTITY - 1) + 1
            self._save()
        return Identity(self._ids[key], key)

    def lookup(self, identity: int) -> Identity | None:
        if identity in RESERVED_IDENTITIES:
            return Identity(identity, RESERVED_IDENTITIES[identity])
        for labels, number in self._ids.items():
            if number == identity:
                return Identity(number, labels)
        return None

    def all(self) -> list[Identity]:
        """Reserved identities first, then the lab's, by id."""
        reserved = [Identity(i, labels) for i, labels in sorted(RESERVED_IDENTITIES.items())]
        return reserved + sorted((Identity(i, labels) for labels, i in self._ids.items()), key=lambda x: x.id)

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"id": i, "labels": list(labels)} for labels, i in self._ids.items()]))
        os.replace(tmp, self.path)   # atomic: a crash never leaves half a file
