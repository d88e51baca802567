"""The reviewer's view, in a real browser: `mlflow ui` over a store with a finished sweep, driven by
headless Chromium (Debian's chromium + chromium-driver, Selenium; `.ci/run` installs them). The
parent run's page shows the description with the leaderboard, its artifacts hold the leaderboard,
and the runs table searched for the leader tag shows exactly the leaderboard's runs."""

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from imagebench import leaderboard, report, tracking
from test_sweep_parallel import _runs, _sweep, _sweep_file  # noqa: E402

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ui(project):
    """`mlflow ui` on 127.0.0.1 over the project's store; stopped at the end."""
    port = _free_port()
    server = subprocess.Popen([str(BIN / "mlflow"), "ui", "--backend-store-uri", tracking.tracking_uri(), "--host", "127.0.0.1",
                               "--port", str(port)], cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    yield base
    import os
    import signal

    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1600,1200", f"--user-data-dir={tmp_path / 'chromium-profile'}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def _until(driver, condition, timeout=60):
    """Poll the page (a React app renders after the fetches it starts) until ``condition`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition(driver)
            if value:
                return value
        except Exception:  # an element not there yet, or replaced while read
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"not shown in {timeout}s; page text: {driver.find_element('tag name', 'body').text[:1500]}")
        time.sleep(0.5)


def _text_with(driver, wanted: str):
    text = driver.find_element("tag name", "body").text
    return text if wanted in text else None


def test_a_reviewer_reads_the_sweep_in_the_mlflow_ui(project, ui, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    sweep_file = _sweep_file(project, "review", "{model: [cnn, cnn_attention]}", epochs=1)
    done = _sweep(project, sweep_file, "--workers", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    board = leaderboard.build("review", with_figures=False)
    parent = tracking.find_sweep_run("review")
    leaders = set(board.leaders["run_id"])
    assert len(leaders) == 2 and {run.info.run_id for run in _runs("review") if run.data.tags.get(tracking.TAG_LEADER)} == leaders
    for run in _runs("review"):  # the Dataset column: each trial's data, digest = its dataset fingerprint
        (data,) = run.inputs.dataset_inputs
        assert (data.dataset.name, data.dataset.digest) == ("digits", run.data.tags[tracking.TAG_DATASET_FINGERPRINT])

    browser.get(tracking.run_url(ui, "review", parent))
    _until(browser, lambda d: "Sweep review: leaderboard" in d.find_element(By.TAG_NAME, "body").text)
    more = browser.find_elements(By.XPATH, "//*[text()='Show more']")
    if more:
        more[0].click()
    text = _until(browser, lambda d: _text_with(d, "cnn_attention"))
    assert "2 finished, 0 failed" in text and "Reproduce: imagebench sweep" in text
    browser.save_screenshot(str(tmp_path / "report-run-page.png"))

    browser.get(tracking.run_url(ui, "review", parent) + "/artifacts")
    _until(browser, lambda d: d.find_elements(By.XPATH, f"//*[text()='{report.ARTIFACT_DIR}']"))[0].click()
    _until(browser, lambda d: {"leaderboard.html", "leaderboard_table.json", "leaderboard.csv"}
           <= set(d.find_element(By.TAG_NAME, "body").text.split()))  # fmt: skip
    browser.save_screenshot(str(tmp_path / "report-artifacts.png"))

    browser.get(tracking.run_url(ui, "review"))
    box = _until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=search-box]"))
    box.send_keys(report.LEADER_SEARCH)
    box.send_keys(Keys.ENTER)
    # matching child runs are shown under their sweep's row: open it
    _until(browser, lambda d: d.find_element(By.CSS_SELECTOR, f"[row-id='{parent}'] [col-id*='Run Name'] button")).click()

    def shown_runs(driver):
        ids = {row.get_attribute("row-id") for row in driver.find_elements(By.CSS_SELECTOR, "[role=row][row-id]")}
        return ids - {parent} if len(ids - {parent}) >= len(leaders) else None

    assert _until(browser, shown_runs) == leaders  # exactly the leaderboard's runs
    browser.save_screenshot(str(tmp_path / "report-leaders.png"))

    # leaderboard.html as a reviewer opens it: formatted first columns, sortable, the full table one click away
    browser.get((project / "results" / "review" / "leaderboard.html").as_uri())
    first = _until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "table.sortable"))
    headers = [th.text for th in first.find_elements(By.TAG_NAME, "th")]
    assert headers[:4] == ["rank", "model", "framework", "test accuracy"] and "± 95% CI" not in headers  # one seed: no CI column
    column = headers.index("test accuracy")

    def accuracies():
        return [row.find_elements(By.TAG_NAME, "td")[column].text for row in first.find_elements(By.CSS_SELECTOR, "tbody tr")]

    assert all(text.endswith(" %") for text in accuracies())
    first.find_elements(By.TAG_NAME, "th")[column].click()
    ascending = [float(text.rstrip(" %")) for text in accuracies()]
    assert ascending == sorted(ascending)
    first.find_elements(By.TAG_NAME, "th")[column].click()
    assert [float(text.rstrip(" %")) for text in accuracies()] == sorted(ascending, reverse=True)
    assert browser.find_elements(By.XPATH, "//summary[starts-with(text(), 'Every column')]")
    browser.save_screenshot(str(tmp_path / "leaderboard-html.png"))
