"""Every tutorial runs in replay mode as an unprivileged user, with bpffs out of reach, and passes.

Root is needed only to set the stage: a private mount namespace where /sys/fs/bpf is an empty tmpfs, then
``setpriv`` to nobody with no capabilities and no sudo. The notebook runs there as a reader of mybinder or a
course's JupyterHub would run it: ``wb.tutorial()`` finds no privileges and switches to replay mode by itself
(no WORKBENCH_REPLAY in the environment), the banner names the recording's date and kernel, every
assertion in the notebook holds, and the %%ebpf cells of 05 show their one-line message and their C source.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from workbench.replay.recording import Recording

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]-*.ipynb"))

# Runs as nobody: execute one notebook with nbclient and report what a reader would see.
RUNNER = """
import json, sys, nbformat
from nbclient import NotebookClient
path, out = sys.argv[1], sys.argv[2]
nb = nbformat.read(path, as_version=4)
client = NotebookClient(nb, kernel_name="ebpf-workbench", timeout=180, startup_timeout=120, allow_errors=True,
                        resources={"metadata": {"path": path.rsplit("/", 1)[0]}})
client.execute()
nbformat.write(nb, out)
errors, texts = [], []
for cell in nb.cells:
    for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
        if o.output_type == "error":
            errors.append(f"{o.ename}: {o.evalue[:400]} in: {cell.source[:160]!r}")
        texts.append(json.dumps(o.get("data", {})) + o.get("text", ""))
print(json.dumps({"errors": errors, "outputs": texts}))
"""


def nobody_ids() -> tuple[int, int]:
    import grp
    import pwd

    user = pwd.getpwnam("nobody")
    group = grp.getgrnam("nogroup").gr_gid if "nogroup" in {g.gr_name for g in grp.getgrall()} else user.pw_gid
    return user.pw_uid, group


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_replays_as_nobody_without_bpffs(path: Path) -> None:
    uid, gid = nobody_ids()
    home = Path(tempfile.mkdtemp(prefix="wb-replay-home-"))
    try:
        os.chown(home, uid, gid)
        executed = home / path.name
        env = {"PATH": f"{REPO / '.venv' / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
               "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "IPYTHONDIR": str(home / "ipython"),
               "MPLCONFIGDIR": str(home / "mpl"), "TMPDIR": str(home), "WORKBENCH_NO_SUDO": "1"}
        runner = home / "runner.py"
        runner.write_text(RUNNER)
        inner = (f"mount -t tmpfs -o mode=0700 none /sys/fs/bpf && exec setpriv --reuid={uid} --regid={gid} "
                 f"--clear-groups --inh-caps=-all --bounding-set=-all "
                 f"{REPO / '.venv' / 'bin' / 'python'} {runner} {path} {executed}")
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
                              capture_output=True, text=True, timeout=600, env=env, cwd=str(path.parent))
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report["errors"] == [], report["errors"]
        shown = "\n".join(report["outputs"])
        assert Recording.load().banner in shown, "the replay banner is missing"
        if path.stem.startswith("05"):
            assert "replay mode: needs a lab node (root + eBPF)" in shown
            assert "BPF_HASH(counts, u32, u64)" in shown          # the cell's C, shown instead of loaded
        artifacts = REPO / "tests" / "artifacts" / "replay"
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copy(executed, artifacts / path.name)
    finally:
        shutil.rmtree(home, ignore_errors=True)
