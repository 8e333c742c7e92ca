"""What a person sees: JupyterLab in headless Chromium runs the observe tutorial.

Starts JupyterLab on 127.0.0.1 with a token, opens 02-observe in the workbench
kernel, runs all cells from the Run menu, waits for the live dashboard, checks
in the DOM that plotly traces and ipywidgets rendered and that no cell failed,
and saves a screenshot to tests/artifacts/ (look at it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
NOTEBOOK = "02-observe.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def jupyterlab(tmp_path: Path, kernelspec_prefix: Path):
    root = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", root)
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_PATH=str(kernelspec_prefix / "share" / "jupyter"),
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--ip=127.0.0.1", f"--port={port}", "--no-browser", "--allow-root",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
         "--MultiKernelManager.default_kernel_name=ebpf-workbench", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("JupyterLab did not start: " + (tmp_path / "jupyterlab.log").read_text()[-2000:])
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


STARTED = """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                     .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"""


def run_all_cells(page) -> None:
    """Run > Run All Cells, until a cell has visibly started.

    Right after the notebook opens, JupyterLab may still be connecting the
    kernel session and then drops the command silently: no cell starts. Only
    that is retried (asking again is safe because nothing has run yet); any
    other failure, a missing menu item say, ends the test at once.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _attempt in range(3):
        # JupyterLab asks which kernel to start when the notebook's session is not up yet; the preferred one
        # (the notebook's own, eBPF Workbench) is what a person would pick: Escape does not close that dialog
        select = page.get_by_role("button", name="Select", exact=True)
        if select.is_visible():
            select.click()
        page.keyboard.press("Escape")   # close a menu or dialog left open
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        try:
            page.wait_for_function(STARTED, timeout=30_000)
            return
        except PlaywrightTimeout:
            if page.evaluate(STARTED):   # it started just as the wait ended: not the dropped command
                return
    raise AssertionError("JupyterLab did not start running the notebook (Run All Cells dropped 3 times)")


@pytest.mark.browser
def test_observe_tutorial_renders_the_live_dashboard(jupyterlab):
    from playwright.sync_api import sync_playwright

    base, token = jupyterlab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        try:
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}", timeout=120_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            run_all_cells(page)
            # A cell still running shows "[*]": wait for every prompt to carry a number,
            # or for an error (Run All stops there, so waiting longer would only time out).
            page.wait_for_function(
                """() => {
                    const outputs = [...document.querySelectorAll('.jp-OutputArea-output')];
                    if (outputs.some(o => o.textContent.includes('Traceback (most recent call last)')))
                        return true;
                    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                    return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
                }""", timeout=400_000)
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
            no_news = page.get_by_role("button", name="No", exact=True)
            if no_news.count():
                no_news.first.click()   # JupyterLab's "news?" toast would cover the table
            page.locator(".wb-dashboard").first.evaluate("e => e.scrollIntoView({block: 'start'})")
            time.sleep(2)  # two dashboard ticks, so the screenshot shows live data
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-02-observe.png"))
            traces = page.locator(".wb-dashboard .js-plotly-plot g.trace").count()
            widgets = page.locator(".wb-dashboard .jupyter-widgets").count()
            tracebacks = page.locator(".jp-OutputArea-output:has-text('Traceback (most recent call last)')").count()
        except Exception:
            # what the page showed when it went wrong, next to the log of the server
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-02-observe-failed.png"), full_page=True)
            raise
        finally:
            browser.close()
    assert traces > 0, "no plotly trace rendered in the dashboard"
    assert widgets > 0, "no ipywidgets rendered in the dashboard"
    assert tracebacks == 0, "a cell failed in the browser (see the screenshot)"
