"""Lab names, the lab a command means, and finding a pod among endpoints (pure)."""

from __future__ import annotations

import os
import re

from workbench.errors import NotFoundError, ValidationError
from workbench.lab.model import Endpoint

DEFAULT_LAB = "default"
LAB_ENVIRONMENT = "WORKBENCH_LAB"
# No '-' so that "wb-<lab>-" is a prefix no other lab's netns can share.
_LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,19}$")


def check_lab_name(name: str) -> str:
    if not _LAB_NAME.match(name or ""):
        raise ValidationError(f"lab name {name!r} is invalid: use 1-20 lowercase letters and digits, "
                              "starting with a letter (no '-')")
    return name


def is_lab_name(name: str) -> bool:
    return bool(_LAB_NAME.match(name or ""))


def default_lab() -> str:
    """The lab a command means when none is named: ``$WORKBENCH_LAB``, else ``default``."""
    return os.environ.get(LAB_ENVIRONMENT) or DEFAULT_LAB


def find_endpoint(endpoints: list[Endpoint], pod: str) -> Endpoint:
    """A pod by name, or ``deploy/NAME`` / ``deployment/NAME`` for its first replica (like kubectl)."""
    kind, sep, name = pod.partition("/")
    if sep and kind in ("deploy", "deployment", "deployments"):
        replicas = sorted((ep for ep in endpoints if ep.owner == name), key=lambda ep: ep.pod)
        if replicas:
            return replicas[0]
        owners = sorted({ep.owner for ep in endpoints if ep.owner})
        raise NotFoundError(f"deployment {name} not found; deployments: {', '.join(owners) or '(none)'}")
    for ep in endpoints:
        if ep.pod == pod:
            return ep
    names = sorted(ep.pod for ep in endpoints)
    raise NotFoundError(f"pod {pod} not found; pods: {', '.join(names) or '(none)'}")
