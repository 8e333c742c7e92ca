"""binder/ is a working repo2docker configuration for the tutorials in replay mode.

repo2docker reads only binder/ when it exists (the top-level pyproject.toml and Makefile are
ignored), so binder/requirements.txt must carry the package's runtime dependencies itself;
these tests keep it equal to pyproject.toml's, and check the scripts and the README's badge.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from workbench.cli.kernelspec import KERNEL_NAME

ROOT = Path(__file__).resolve().parents[2]
BINDER = ROOT / "binder"
FIRST_TUTORIAL = "notebooks/01-install.ipynb"
KERNEL_SIDE_PACKAGES = ("python3-bpfcc", "bpfcc-tools", "bpftool", "linux-headers")
BADGE = re.compile(
    r"\[!\[Binder\]\(https://mybinder\.org/badge_logo\.svg\)\]"
    r"\(https://mybinder\.org/v2/gh/OWNER/REPO/HEAD\?urlpath=lab/tree/(?P<notebook>[^)\s]+)\)"
)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_lines(text: str) -> list[str]:
    """The requirement lines of a requirements file: comments and blank lines dropped."""
    return [line.partition("#")[0].strip() for line in text.splitlines() if line.partition("#")[0].strip()]


def requirement_key(requirement: Requirement) -> tuple[str, str, str, str]:
    """What makes two requirements the same: name, extras, specifier and marker, normalized."""
    return (canonicalize_name(requirement.name), ",".join(sorted(requirement.extras)),
            str(SpecifierSet(str(requirement.specifier))), str(requirement.marker or ""))


def dependency_differences(dependencies: list[str], requirements_text: str) -> list[str]:
    """How requirements.txt differs from pyproject's dependency list: missing, extra, reordered."""
    wanted = [requirement_key(Requirement(line)) for line in dependencies]
    written = [requirement_key(Requirement(line)) for line in requirement_lines(requirements_text)]
    problems = [f"missing from binder/requirements.txt: {key[0]} {key[2]}" for key in wanted if key not in written]
    problems += [f"not a pyproject dependency: {key[0]} {key[2]}" for key in written if key not in wanted]
    if not problems and written != wanted:
        problems.append("same requirements, other order than pyproject's dependencies")
    return problems


def test_binder_has_the_repo2docker_files() -> None:
    for name in ("apt.txt", "requirements.txt", "runtime.txt", "postBuild", "start"):
        assert (BINDER / name).is_file(), f"binder/{name} is missing"


@pytest.mark.parametrize("name", ["postBuild", "start"])
def test_scripts_are_executable_bash_that_parses(name: str) -> None:
    script = BINDER / name
    assert script.stat().st_mode & stat.S_IXUSR, f"binder/{name} is not executable"
    assert script.read_text().splitlines()[0] in ("#!/bin/bash", "#!/usr/bin/env bash")
    assert "set -euo pipefail" in script.read_text()
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_start_sets_replay_mode_and_execs_the_command() -> None:
    lines = requirement_lines((BINDER / "start").read_text())  # code lines: comments dropped
    assert "export WORKBENCH_REPLAY=1" in lines
    assert lines[-1] == 'exec "$@"', "repo2docker's start script must end by running its arguments"


def test_start_runs_its_arguments_with_replay_mode_on() -> None:
    shown = subprocess.run([str(BINDER / "start"), sys.executable, "-c",
                            "import os; print(os.environ['WORKBENCH_REPLAY'])"],
                           capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "1"


def test_postbuild_installs_the_package_and_its_kernel() -> None:
    code = requirement_lines((BINDER / "postBuild").read_text())
    assert any(re.search(r"pip install .*--no-deps -e \.$", line) for line in code), \
        "postBuild must install the repository editable (the kernelspec template lives in kernels/)"
    assert "python -m workbench kernel install --sys-prefix" in code
    assert (ROOT / "kernels" / KERNEL_NAME / "kernel.json").is_file()


def test_postbuild_jupyter_config_opens_the_first_tutorial(tmp_path: Path) -> None:
    """Runs postBuild's config step against a config dir that already has a setting of its own."""
    text = (BINDER / "postBuild").read_text()
    found = re.search(r"<<'PYTHON'\n(.*?)\nPYTHON\n", text, re.DOTALL)
    assert found, "postBuild writes the Jupyter server config with an embedded Python step"
    (tmp_path / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": {"port": 9999}}))
    subprocess.run([sys.executable, "-c", found.group(1)], check=True,
                   env={**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path)})
    config = json.loads((tmp_path / "jupyter_server_config.json").read_text())
    assert config["ServerApp"] == {"port": 9999, "default_url": f"/lab/tree/{FIRST_TUTORIAL}"}
    assert config["LabApp"]["default_url"] == f"/lab/tree/{FIRST_TUTORIAL}"
    assert config["MultiKernelManager"]["default_kernel_name"] == KERNEL_NAME
    assert (ROOT / FIRST_TUTORIAL).is_file()


def test_requirements_are_pyprojects_runtime_dependencies() -> None:
    dependencies = pyproject()["project"]["dependencies"]
    problems = dependency_differences(dependencies, (BINDER / "requirements.txt").read_text())
    assert not problems, "binder/requirements.txt must equal [project].dependencies:\n" + "\n".join(problems)


def test_a_dependency_added_to_pyproject_alone_is_caught() -> None:
    """The comparison itself: an added dependency, a changed specifier and a reorder all show."""
    dependencies = pyproject()["project"]["dependencies"]
    requirements = (BINDER / "requirements.txt").read_text()
    assert dependency_differences([*dependencies, "rich>=13"], requirements) == [
        "missing from binder/requirements.txt: rich >=13"]
    changed = [dependencies[0].replace(">=", "<"), *dependencies[1:]]
    assert len(dependency_differences(changed, requirements)) == 2
    assert dependency_differences(list(reversed(dependencies)), requirements) == [
        "same requirements, other order than pyproject's dependencies"]
    # Spelling that names the same requirement is not a difference.
    respelled = [dependencies[0].replace("jupyterlab", "JupyterLab"), *dependencies[1:]]
    assert dependency_differences(respelled, requirements) == []


def test_runtime_python_satisfies_requires_python() -> None:
    runtime = (BINDER / "runtime.txt").read_text().strip()
    assert re.fullmatch(r"python-\d+\.\d+", runtime), runtime
    version = runtime.removeprefix("python-")
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(f"{version}.0")


def test_apt_txt_leaves_out_the_kernel_side_packages_and_says_why() -> None:
    text = (BINDER / "apt.txt").read_text()
    packages = requirement_lines(text)
    assert not [p for p in packages if p.startswith(KERNEL_SIDE_PACKAGES)]
    assert "replay mode" in text


def test_readme_has_the_binder_badge_after_the_first_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[2:6] == ["```", lines[3], lines[4], "```"] and lines[3].startswith("make lab") \
        and lines[4].startswith("make test"), "README.md must still open with `make lab` and `make test`"
    badges = [(number, BADGE.search(line)) for number, line in enumerate(lines) if BADGE.search(line)]
    assert len(badges) == 1, "README.md needs exactly one Binder badge in mybinder's pattern"
    number, badge = badges[0]
    assert number > 5 and badge is not None
    assert badge.group("notebook") == FIRST_TUTORIAL
    assert "replay mode" in " ".join(lines[number:number + 4])
