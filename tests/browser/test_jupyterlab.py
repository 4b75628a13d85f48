"""Notebook 06 in a real JupyterLab, driven in Debian's headless Chromium through Playwright.

nbval checks that the cells run; only a browser shows what a learner sees: that the step slider renders as a slider
(not as the text `interactive(children=...)`) and that moving it redraws the figure. JupyterLab runs on 127.0.0.1
with a random token and is stopped by its PID. Screenshots go to build/artifacts/browser/ (or $MINIMUSE_ARTIFACTS).
Skips with one line where Playwright or the browser is missing (`make test` installs both when it can).
"""
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the slow tier (pyproject.toml markers)

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "06_sampling.ipynb"
ARTIFACTS = Path(os.environ.get("MINIMUSE_ARTIFACTS", ROOT / "build" / "artifacts")) / "browser"
RUN_ALL_TIMEOUT_S = 300


def _chromium() -> str | None:
    for name in (os.environ.get("MINIMUSE_CHROMIUM"), "chromium", "chromium-browser"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser test skipped: playwright is not installed (pip install playwright)")
    exe = _chromium()
    if exe is None:
        pytest.skip("browser test skipped: Debian's chromium is not installed (as root: apt-get install -y chromium)")
    with sync_api.sync_playwright() as pw:
        # --no-sandbox: Chromium refuses to start its sandbox as root, which is how CI containers run
        b = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a copy of notebook 06, under the `ci` preset; yields its base URL and token."""
    work = tmp_path_factory.mktemp("lab")
    # A copy, so the run cannot touch the stored notebook, without its stored outputs and counts: whatever the page
    # shows afterwards came from this run.
    nb = json.loads((ROOT / "notebooks" / NOTEBOOK).read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    (work / NOTEBOOK).write_text(json.dumps(nb))
    shutil.copytree(ROOT / "notebooks" / "mymuse", work / "mymuse")  # the learner's package, which the lesson writes and imports
    port, token = _free_port(), secrets.token_hex(16)
    # JupyterLab 4 renders only the cells in view by default; draw them all, so every prompt and output can be read
    settings = work / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none", "autoStartDefaultKernel": true}')
    env = {**os.environ, "MINIMUSE_PRESET": "ci", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "JUPYTER_PLATFORM_DIRS": "1",
           "JUPYTERLAB_SETTINGS_DIR": str(work / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(work / "workspaces")}
    env.pop("MPLBACKEND", None)  # the inline backend, as a learner gets it
    log = open(work / "jupyterlab.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--ServerApp.open_browser=False",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        + (["--allow-root"] if os.geteuid() == 0 else []),  # CI containers run as root
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start:\n{(work / 'jupyterlab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url, token
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # Jupyter shuts its kernels down and exits on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _figure_src(slider_output):
    img = slider_output.locator("img").first
    img.wait_for(state="visible", timeout=60_000)
    return img.get_attribute("src")


def test_notebook_06_runs_and_its_slider_moves_the_figure(browser, lab):
    url, token = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/lab/tree/{NOTEBOOK}?token={token}")
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=120_000)
    select = page.locator(".jp-Dialog button", has_text="Select")  # a fresh Lab may still ask which kernel
    try:
        select.wait_for(timeout=5_000)
        select.click()
    except Exception:  # playwright's TimeoutError: no dialog, the kernel started by itself
        pass
    page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"\| Idle")).first.wait_for(timeout=120_000)

    # Run all cells through the Run menu, as a learner would.
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()
    n_code = page.locator(".jp-CodeCell").count()
    prompts = page.locator(".jp-CodeCell .jp-InputPrompt")
    # Done when the code cells show 1..n: "[*]" while queued or running, "[ ]" before.
    deadline = time.monotonic() + RUN_ALL_TIMEOUT_S
    while True:
        texts = prompts.all_inner_texts()
        if [t.strip().strip("[]:") for t in texts] == [str(i) for i in range(1, n_code + 1)]:
            break  # every cell ran, in order, in this session (the copy started with no counts)
        assert time.monotonic() < deadline, f"run-all did not finish in {RUN_ALL_TIMEOUT_S} s: {texts}"
        page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "06_after_run_all.png"), full_page=False)

    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']", has_text="Traceback")
    assert errors.count() == 0, f"a cell errored: {errors.first.inner_text()[:1000]}"
    assert n_code > 10

    # The slider cell renders a real slider, not the widget's text repr.
    slider_cell = page.locator(".jp-CodeCell", has_text="IntSlider(")
    assert slider_cell.count() == 1
    slider = slider_cell.locator(".widget-slider .noUi-handle, .widget-hslider .noUi-handle")
    slider.first.wait_for(state="visible", timeout=60_000)
    assert "interactive(children=" not in slider_cell.locator(".jp-Cell-outputArea").inner_text()
    readout = slider_cell.locator(".widget-readout").first
    assert readout.inner_text().strip() == "1"
    slider_cell.scroll_into_view_if_needed()
    before = _figure_src(slider_cell.locator(".widget-output"))
    slider_cell.screenshot(path=str(ARTIFACTS / "06_slider_step1.png"))

    # Move it with the keyboard (noUiSlider's handle takes focus), then wait for the redraw.
    slider.first.focus()
    for _ in range(11):
        page.keyboard.press("ArrowRight")
    page.wait_for_function("(el) => el.textContent.trim() === '12'", arg=readout.element_handle(), timeout=30_000)
    deadline = time.monotonic() + 60
    while (after := _figure_src(slider_cell.locator(".widget-output"))) == before:
        assert time.monotonic() < deadline, "moving the slider did not redraw the figure"
        page.wait_for_timeout(500)
    slider_cell.screenshot(path=str(ARTIFACTS / "06_slider_step12.png"))
    assert after.startswith("data:image/png") or after.startswith("blob:")
    page.close()
