import importlib
import json
import subprocess
import sys

import pytest

from workbench.cli.commands import ArgumentError, build_parser, run
from workbench.errors import WorkbenchError


def test_parser_lists_the_commands():
    help_text = build_parser().format_help()
    assert "status" in help_text and "kernel" in help_text


def test_unknown_command_is_a_usage_error_not_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "workbench", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice: 'frobnicate'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_raises_argument_error_for_the_magic():
    try:
        run(["status", "--no-such-flag"])
    except ArgumentError as err:
        assert "--no-such-flag" in str(err)
    else:
        raise AssertionError("expected ArgumentError")


def test_workbench_error_is_one_line():
    err = WorkbenchError("pod 'x' not found", hint="pods: a, b")
    assert "\n" not in str(err)
    assert str(err) == "pod 'x' not found (pods: a, b)"


def test_kernelspec_install_points_at_this_interpreter(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "workbench", "kernel", "install", "--prefix", str(tmp_path), "--json"],
                          capture_output=True, text=True, check=True)
    path = json.loads(proc.stdout)["path"]
    spec = json.loads(open(f"{path}/kernel.json").read())
    assert spec["display_name"] == "eBPF Workbench (Python 3)"
    assert spec["argv"][0] == sys.executable
    assert spec["argv"][1:3] == ["-m", "workbench.notebook.kernel_launcher"]


def test_an_unexpected_exception_is_one_line_without_traceback(monkeypatch, capsys):
    """A bug of ours still answers in one line (the traceback only with WORKBENCH_DEBUG=1)."""
    cli_main = importlib.import_module("workbench.cli.main")   # the package re-exports main()

    def broken(argv):
        raise KeyError("endpoint\nid")

    monkeypatch.setattr(cli_main, "run", broken)
    monkeypatch.delenv("WORKBENCH_DEBUG", raising=False)
    assert cli_main.main(["lab", "status"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: internal error (KeyError: ") and "WORKBENCH_DEBUG=1" in err
    monkeypatch.setenv("WORKBENCH_DEBUG", "1")
    with pytest.raises(KeyError):
        cli_main.main(["lab", "status"])


def test_an_os_error_names_the_file(monkeypatch, capsys):
    cli_main = importlib.import_module("workbench.cli.main")   # the package re-exports main()

    def denied(argv):
        raise PermissionError(13, "Permission denied", "/root/flows.parquet")

    monkeypatch.setattr(cli_main, "run", denied)
    assert cli_main.main(["flows", "export", "/root/flows.parquet"]) == 1
    assert capsys.readouterr().err == "error: Permission denied: /root/flows.parquet\n"
