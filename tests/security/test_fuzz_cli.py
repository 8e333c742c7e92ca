"""Property-based fuzzing of the CLI's argument handling, in process, with no lab to reach.

Random argv for every command (its real options mixed with junk values,
junk flags and files that are not policies) must end in exit code 0, 1 or 2
with at most one ``error:`` line on stderr (exit code 1 with output is a
result, e.g. ``lab status`` of a lab that is down); never an exception out
of ``main`` (a Python traceback for the user).

The run directory is pointed at an empty temporary one, so no command can
reach a lab agent, and the commands that create or remove things on the node
(``lab up``, ``lab down``, ``kernel install``, ``exec``) are never generated:
the fuzzer must not touch labs other tests are using.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.cli.commands import build_parser
from workbench.cli.main import main
from workbench.node import system

pytestmark = pytest.mark.unprivileged

UNSAFE = {("lab", "up"), ("lab", "down"), ("kernel", "install"), ("exec",)}
FORBIDDEN_TOKENS = {"up", "down", "install", "exec"}


def command_paths() -> dict[tuple[str, ...], list[str]]:
    """Every leaf command of the parser -> its option strings."""
    out: dict[tuple[str, ...], list[str]] = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[path] = [o for a in parser._actions for o in a.option_strings]
            return
        for name, sub in subs[0].choices.items():
            walk(sub, (*path, name))

    walk(build_parser(), ())
    return out


COMMANDS = {path: options for path, options in command_paths().items() if path not in UNSAFE}
# Files a user might hand `policy apply` or `observe --input-file` by mistake (written by the fixture).
FILES = Path(tempfile.gettempdir()) / f"wb-sec-cli-{os.getpid()}"
FILE_TEXTS: dict[str, bytes] = {
    "binary.yaml": b"\x00\x01\xff\xfe" * 64,
    "latin1.yaml": b"kind: \xe9t\xe9\n",
    "bomb.yaml": ("a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                  + "".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                            for p, c in zip("abcdefgh", "bcdefghi", strict=True))).encode(),
    "deep.yaml": b"[" * 5000 + b"]" * 5000,
    "policy.yaml": b"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\n"
                   b"spec: {endpointSelector: {}, ingress: [{}]}\n",
    "not-yaml.yaml": b"a: [\n",
}
VALUES = ["", "-", "--", "0", "-1", "65536", "1e9", "nan", "99999999999999999999999", "on", "off", "yes",
          "DROPPED", "l7", "trace", "ingress", "table", "wide", "json", "2026-13-45", "1h", "10.0.0.0/33",
          "k8s:app=x", "a=b,c", "x" * 300, "é\u2028", "\n", "\x00", str(FILES), str(FILES / "missing.parquet"),
          *(str(FILES / name) for name in FILE_TEXTS)]

token = st.one_of(
    st.sampled_from(sorted({o for options in COMMANDS.values() for o in options} - {"--follow", "-f"})),
    st.sampled_from(VALUES),
    st.text(max_size=12),
    st.text(max_size=8).map(lambda t: "--" + t),
    st.builds(lambda o, v: f"{o}={v}", st.sampled_from(["--lab", "--last", "--port", "--since", "--output"]),
              st.sampled_from(VALUES)),
)


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    path = draw(st.sampled_from(sorted(COMMANDS)))
    options = COMMANDS[path]
    rest = draw(st.lists(st.one_of(token, st.sampled_from(options or ["--json"])), max_size=6))
    argv = [*path, *rest]
    if draw(st.integers(0, 9)) == 0:     # sometimes no command at all, or a junk one
        argv = rest
    return [t for t in argv if t not in FORBIDDEN_TOKENS]


@pytest.fixture(scope="module")
def no_labs():
    """No lab reachable: an empty run directory, and a lab name nothing uses."""
    FILES.mkdir(exist_ok=True)
    for name, data in FILE_TEXTS.items():
        (FILES / name).write_bytes(data)
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory(prefix="wb-sec-run-") as run:
        patch.setattr(system, "RUN_ROOT", Path(run))
        patch.setenv("WORKBENCH_LAB", "secnolab")
        yield Path(run)
    shutil.rmtree(FILES, ignore_errors=True)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:     # argparse's own --help exits
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=argvs())
def test_random_arguments_end_in_an_exit_code_and_one_error_line(no_labs, argv):
    assert not any(part in FORBIDDEN_TOKENS for part in argv[:2]), argv
    code, out, err = run_cli(argv)       # an exception escaping main fails the test with its traceback
    assert code in (0, 1, 2), (argv, code, err)
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) <= 1, (argv, err)
    if code == 2 or (code == 1 and not out):   # a usage error, or a failure: said in one line
        assert len(errors) == 1 and errors[0].startswith("error: "), (argv, err)
    assert "Traceback" not in err, (argv, err)
    assert list(no_labs.iterdir()) == [], argv    # nothing was created in the run directory


def test_the_fuzzer_reaches_the_commands_and_their_errors(no_labs):
    """The property above is not vacuous: usage errors are 2, a missing lab is 1, both in one line."""
    assert run_cli(["observe", "--last", "x"])[0] == 2
    code, _out, err = run_cli(["policy", "get", "--lab", "secnolab"])
    assert code == 1 and err.count("\n") == 1 and "secnolab" in err
    code, _out, err = run_cli(["policy", "apply", str(FILES / "binary.yaml"), "--lab", "secnolab"])
    assert code == 1 and err.count("\n") == 1
