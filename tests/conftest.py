"""Test tiers and the leak check.

- tests/unit: no root needed.
- tests/privileged and tests/conformance (upstream NetworkPolicy cases on a
  real lab): real netns, real eBPF, real packets. They skip without
  root; with WORKBENCH_REQUIRE_PRIVILEGED=1 (CI) such a skip is a failure.
- tests/security: the adversarial suite, privileged the same way, except
  modules marked ``unprivileged`` (pure parsers, the CLI's argument handling).
- The ``bench`` tier (fresh benchmark runs) is left out unless selected:
  ``pytest -m bench``.
- After the session, any `wb-*` netns, pin under /sys/fs/bpf/workbench,
  workbench cgroup, /etc/netns hosts dir or new TC/XDP attachment in the host
  netns fails the run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REQUIRE_PRIVILEGED = os.environ.get("WORKBENCH_REQUIRE_PRIVILEGED") == "1"
_host_attachments_before: list[str] = []


def is_root() -> bool:
    return os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # the bench tier measures for minutes: only a run that names it (-m bench) gets it, so make test stays short
    if "bench" not in (config.getoption("markexpr") or ""):
        benches = [item for item in items if item.get_closest_marker("bench")]
        if benches:
            items[:] = [item for item in items if not item.get_closest_marker("bench")]
            config.hook.pytest_deselected(items=benches)
    for item in items:
        path = str(item.fspath)
        in_security = f"{os.sep}security{os.sep}" in path and not item.get_closest_marker("unprivileged")
        in_tier = any(f"{os.sep}{tier}{os.sep}" in path for tier in ("privileged", "conformance"))
        if in_tier or in_security:
            item.add_marker(pytest.mark.privileged)
            if not is_root():
                item.add_marker(pytest.mark.skip(reason="needs root (real netns and eBPF)"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_PRIVILEGED and report.skipped and item.get_closest_marker("privileged"):
        report.outcome = "failed"
        report.longrepr = f"privileged test skipped under WORKBENCH_REQUIRE_PRIVILEGED=1: {report.longrepr}"


def pytest_sessionstart(session: pytest.Session) -> None:
    if is_root():
        from workbench.node.inventory import host_netns_attachments

        _host_attachments_before.extend(host_netns_attachments())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # WORKBENCH_LEAK_CHECK=0 only for developers running suites side by side
    # (one run would see the other's live netns); CI always checks.
    if not is_root() or os.environ.get("WORKBENCH_LEAK_CHECK") == "0":
        return
    from workbench.node.inventory import host_netns_attachments, take_inventory

    leaks = take_inventory()
    new_attachments = sorted(set(host_netns_attachments()) - set(_host_attachments_before))
    if leaks.empty() and not new_attachments:
        return
    message = f"workbench state left behind after the tests: {leaks.describe()}"
    if new_attachments:
        message += f"; new attachments in the host netns: {', '.join(new_attachments)}"
    session.config.get_terminal_writer().line("\nLEAK CHECK FAILED: " + message, red=True)  # type: ignore[attr-defined]
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Names that cannot collide between tests or parallel runs: wb-<tag>-<hex>."""

    def make(tag: str = "t") -> str:
        return f"wb-{tag}-{uuid.uuid4().hex[:6]}"

    return make


@pytest.fixture
def netns_factory(unique_name: Callable[[str], str]) -> Iterator[Callable[[str], str]]:
    """Creates named netns (loopback up) and removes every one of them after the test."""
    from workbench.node import netlink

    created: list[str] = []

    def make(tag: str = "ns") -> str:
        name = unique_name(tag)
        netlink.create_netns(name)
        created.append(name)
        return name

    yield make
    for name in created:
        netlink.remove_netns(name)


@pytest.fixture(scope="session")
def kernelspec_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workbench kernelspec installed into a private prefix for this test session."""
    from workbench.cli.kernelspec import install_kernelspec

    prefix = tmp_path_factory.mktemp("jupyter-prefix")
    install_kernelspec(prefix=str(prefix))
    return prefix
