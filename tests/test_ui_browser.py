"""The Dagster UI in a real browser: ``dagster dev`` started as the README says, opened in Chromium.

Every asset of ``pipelines.definitions.defs`` is in the catalog and on the lineage graph, every asset
check on its asset's checks tab, every job on the jobs page and every schedule and sensor on the
Automation page; the server then stops on SIGTERM and leaves no process behind.

Chromium comes from apt (``/usr/bin/chromium``, installed here when missing), driven by the
``playwright`` package (dev extra; its own browser download is never used).

Pictures for the docs (``docs/images/ui_asset_graph.png``, ``docs/images/ui_automation.png``)::

    DD3G_UI_SCREENSHOT_DIR=docs/images .venv/bin/pytest -q tests/test_ui_browser.py
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SERVER_START_S = 120  # two slow cores: the webserver, the daemon and the code server all import the graph
PAGE_S = 60  # first page: the code location may still be loading
# Dagster's own bounds on a stop: the code server lets in-flight gRPC calls finish for up to 60 s
# (DAGSTER_GRPC_SHUTDOWN_GRACE_PERIOD) and `dagster dev` waits up to 60 s for each service before it
# kills it. A stop takes 2-5 s here, but CI once saw the code server and its child outlive 30 s.
STOP_S = 150


def _ensure_chromium() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and there is no apt-get to install it (Debian/Ubuntu package chromium)")
    if os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} is missing; installing it needs root: apt-get install chromium")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    assert os.path.exists(CHROMIUM), f"apt-get installed chromium but {CHROMIUM} is missing"
    return CHROMIUM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _live_group_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that are not zombies (a container's init may not reap them)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(d.name))
    return pids


def _command_lines(pids) -> dict[int, str]:
    """pid -> command line, for those of ``pids`` still there."""
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return found


def _processes_with_env(entry: str) -> dict[int, str]:
    """pid -> command line of the processes whose environment holds ``entry`` (escaped the group or not)."""
    pids = []
    needle = entry.encode() + b"\0"
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (d / "environ").read_bytes():
                pids.append(int(d.name))
    return _command_lines(pids)


def _reset_sigint() -> None:
    # A shell that starts a job in the background without job control leaves SIGINT ignored, and
    # `dagster dev` then ignores SIGTERM as well (it turns SIGTERM into a SIGINT). Give it the default back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def _dagster_dev(tmp: Path):
    """``dagster dev -w workspace.yaml -h 127.0.0.1 -p PORT`` in its own process group, an empty
    DAGSTER_HOME, the smoke profile. Yields ``(base_url, report)``; after the block ``report`` says how
    the stop went: ``stop_s``, ``group_left`` (pid -> command line of what was still in the group
    ``STOP_S`` after SIGTERM), ``leftovers`` (the same for anything else with this DAGSTER_HOME)."""
    home = tmp / "dagster_home"
    home.mkdir()
    port = _free_port()
    env = dict(os.environ, DAGSTER_HOME=str(home), DD3G_PROFILE="smoke", DD3G_DATA_ROOT=str(tmp / "data"))
    dagster = Path(sys.executable).with_name("dagster")
    cmd = [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    log_path = tmp / "dagster_dev.log"
    report: dict = {"log": log_path}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session and process group: one signal reaches every child
            preexec_fn=_reset_sigint,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dagster dev exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/server_info", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no webserver after {SERVER_START_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, report
    finally:
        t0 = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = t0 + STOP_S
        while (proc.poll() is None or _live_group_members(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        report["stop_s"] = time.monotonic() - t0
        report["group_left"] = _command_lines(_live_group_members(proc.pid))
        if proc.poll() is None or report["group_left"]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        report["leftovers"] = _processes_with_env(f"DAGSTER_HOME={home}")
        for pid in report["leftovers"]:  # never leave one running, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _defs_names() -> dict[str, object]:
    from pipelines.definitions import defs

    repo = defs.get_repository_def()
    graph = repo.asset_graph
    checks: dict[str, list[str]] = {}
    for check in graph.asset_check_keys:
        checks.setdefault("/".join(check.asset_key.path), []).append(check.name)
    return {
        "assets": {"/".join(k.path): " / ".join(k.path) for k in graph.get_all_asset_keys()},
        "groups": sorted({graph.get(k).group_name for k in graph.get_all_asset_keys()}),
        "checks": checks,
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        "automations": sorted([s.name for s in repo.schedule_defs] + [s.name for s in repo.sensor_defs]),
        "schedules": sorted(s.name for s in repo.schedule_defs),
    }


def _lines(page) -> set[str]:
    return {line.strip() for line in page.inner_text("body").splitlines() if line.strip()}


def _wait_for_lines(page, wanted, timeout_s: float, matches=lambda name, line: name == line) -> list[str]:
    """Waits until every name in ``wanted`` is a line of the page's text; returns the ones still missing."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = _lines(page)
        missing = [name for name in wanted if not any(matches(name, line) for line in lines)]
        if not missing or time.monotonic() > deadline:
            return missing
        page.wait_for_timeout(250)


def _graph_label(name: str, line: str) -> bool:
    """The zoomed-out lineage graph shortens long names in the middle: ``teac…_trajectories``."""
    if line == name:
        return True
    head, sep, tail = line.partition("…")
    return bool(sep) and len(head) + len(tail) >= 4 and name.startswith(head) and name.endswith(tail)


def _frame_graph(page) -> None:
    """For the picture only (best effort): collapse the navigation and zoom out one step, so the fitted
    graph clears the toolbar."""
    from playwright.sync_api import Error

    page.wait_for_timeout(1000)  # the zoom-to-fit animation
    for icon in ("panel_show_right", "zoom_out"):
        with contextlib.suppress(Error):
            page.get_by_role("img", name=icon).first.click(timeout=5000)
            page.wait_for_timeout(1000)


@pytest.mark.slow
def test_dagster_ui_lists_assets_checks_jobs_and_schedules(tmp_path):
    chromium = _ensure_chromium()
    from playwright.sync_api import sync_playwright  # the dev extra

    names = _defs_names()
    assert names["assets"] and names["jobs"]
    # the nightly retrain must reach the Automation page once defs has it (it is among defs' schedules)
    shots = [tmp_path]
    if os.environ.get("DD3G_UI_SCREENSHOT_DIR"):
        shots.append(Path(os.environ["DD3G_UI_SCREENSHOT_DIR"]))

    def screenshot(page, name: str) -> None:
        for folder in shots:
            folder.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(folder / name))

    with _dagster_dev(tmp_path) as (base, report), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            # the "Join the Dagster community" dialog that dagster dev shows on a fresh DAGSTER_HOME
            context.add_init_script("window.localStorage.setItem('communityNux', '\"1\"')")
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            # catalog: every asset key by its full name (tall enough that no row is virtualised away)
            page.set_viewport_size({"width": 1600, "height": 400 + 150 * len(names["assets"])})
            page.goto(base + "/assets")
            missing = _wait_for_lines(page, names["assets"].values(), PAGE_S)
            assert not missing, f"assets missing from the catalog: {missing}"
            page.set_viewport_size({"width": 1600, "height": 1000})

            # lineage graph: every group, then every asset once the groups are expanded (⌥E)
            page.goto(base + "/asset-groups")
            missing = _wait_for_lines(page, names["groups"], PAGE_S)
            assert not missing, f"asset groups missing from the lineage graph: {missing}"
            page.keyboard.press("Alt+e")
            page.wait_for_url("**expanded=*")
            page.reload()  # the expanded groups stay (in the URL): the graph is laid out and fitted again
            missing = _wait_for_lines(page, names["assets"].values(), PAGE_S, _graph_label)
            assert not missing, f"assets missing from the expanded lineage graph: {missing}"
            _frame_graph(page)
            screenshot(page, "ui_asset_graph.png")

            for asset, check_names in sorted(names["checks"].items()):
                page.goto(f"{base}/assets/{asset}?view=checks")
                missing = _wait_for_lines(page, check_names, PAGE_S)
                assert not missing, f"checks of {asset} missing from its checks tab: {missing}"

            page.goto(base + "/jobs")
            missing = _wait_for_lines(page, names["jobs"], PAGE_S)
            assert not missing, f"jobs missing from the jobs page: {missing}"

            page.goto(base + "/automation")
            wanted = names["automations"] or ["No automations"]
            missing = _wait_for_lines(page, wanted, PAGE_S)
            assert not missing, f"schedules/sensors missing from the Automation page: {missing}"
            if "nightly_retrain" in names["schedules"]:
                assert "nightly_retrain" not in missing
            page.wait_for_timeout(500)
            screenshot(page, "ui_automation.png")
            assert not errors, f"JavaScript errors in the UI: {errors}"
        finally:
            browser.close()

    assert (tmp_path / "ui_asset_graph.png").stat().st_size > 10_000
    log_tail = report["log"].read_text(errors="replace")[-3000:]
    assert not report["group_left"], (
        f"dagster dev's process group outlived SIGTERM by {STOP_S} s: {report['group_left']}\n{log_tail}"
    )
    assert not report["leftovers"], f"processes of this dagster dev left running: {report['leftovers']}"
