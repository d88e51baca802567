"""The reviewer's view, in a real browser: `mlflow ui` on 127.0.0.1 serving the project's store (as
a team's tracking server does), a sweep run against it through the CLI, and every link the CLI
printed and the report wrote opened in headless Chromium with a fresh profile (Debian's chromium +
chromium-driver, Selenium; `.ci/run` installs them). Each lands in MLflow's Model-training view
(3.17 opens experiments on its GenAI pages otherwise); the parent run's page shows the description
with the leaderboard, its artifacts hold the leaderboard, the runs table searched for the leader
tag shows exactly the leaderboard's runs and none of the others, and leaderboard.html sorts."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import run_imagebench
from helpers import free_port
from imagebench.report import leaderboard
from imagebench.report import parent_run
from imagebench import store

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
TINY = "dataset: digits, image_size: 32, batch_size: 64, max_per_class: 12, val_fraction: 0.25, test_fraction: 0.25, epochs: 1"
# three models (three leaderboard rows to sort), each at two learning rates: one of each pair is no leader
SWEEP = f"experiment: review\nbase: {{{TINY}, framework: torch}}\n" \
        "matrix: {model: [cnn, cnn_attention, efficientnet_b0], learning_rate: [0.001, 0.01]}\n"


@pytest.fixture
def ui(project, monkeypatch):
    """`mlflow ui` on 127.0.0.1 over the project's store, and the store reached through it (so the
    CLI prints the UI's links, as it does with a tracking server); stopped at the end."""
    port = free_port()
    server = subprocess.Popen([str(BIN / "mlflow"), "ui", "--backend-store-uri", store.tracking_uri(), "--host", "127.0.0.1",
                               "--port", str(port)], cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2)
            break
        except OSError:
            assert time.monotonic() < deadline, "mlflow ui did not answer in 120 s"
            time.sleep(0.5)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
    yield base
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


@pytest.fixture
def fresh_browser(tmp_path):
    """Opens a headless Chromium with a profile of its own each time it is called: nothing
    remembered (MLflow keeps its "Model training" toggle in the browser's local storage)."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def start():
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1600,1200", f"--user-data-dir={tmp_path / f'chromium-profile-{len(drivers)}'}"):  # fmt: skip
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.implicitly_wait(0)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
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


GENAI_PAGES = {"Judges", "Sessions", "Evaluation runs", "Prompts & versions"}  # MLflow 3.17's GenAI side bar


def _view(driver) -> str:
    """Which of MLflow's two views the page shows, once its side bar is drawn: "model training"
    (the side bar lists the Model registry, no GenAI page; no breadcrumb says "Evaluations") or "genai"."""
    side_bar = {line for nav in driver.find_elements("tag name", "nav") for line in nav.text.split("\n")}
    crumbs = {crumb.text for crumb in driver.find_elements("css selector", ".du-bois-light-breadcrumb-link")}
    if side_bar & GENAI_PAGES or "Evaluations" in crumbs:
        return "genai"
    return "model training" if "Model registry" in side_bar else ""


def _open_fresh(fresh_browser, url: str, shown: str):
    """``url`` in a browser that remembers nothing, once the page shows ``shown``; it must be in the
    Model-training view."""
    browser = fresh_browser()
    browser.get(url)
    _until(browser, lambda d: _text_with(d, shown))
    remembered = browser.execute_script("return Object.keys(window.localStorage)")
    assert not [key for key in remembered if "workflow" in key.lower()], remembered  # the view came from the URL
    assert _until(browser, _view) == "model training", url
    return browser


def test_a_reviewer_follows_every_printed_link_to_the_model_training_view(project, ui, fresh_browser, tmp_path):
    from selenium.webdriver.common.by import By

    sweep_file = project / "params" / "review.yaml"
    sweep_file.write_text(SWEEP)
    done = run_imagebench("sweep", sweep_file, "--workers", "2", "--no-models", cwd=project)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    board = leaderboard.build("review", with_figures=False)
    parent = store.find_sweep_run("review")
    runs = store.search_trial_runs("review")
    leaders = set(board.leaders["run_id"])
    others = {run.info.run_id for run in runs} - leaders
    assert len(leaders) == 3 and len(others) == 3  # one leader per model: the other learning rate is no leader
    assert {run.info.run_id for run in runs if run.data.tags.get(store.TAG_LEADER)} == leaders
    for run in runs:  # the Dataset column: each trial's data, digest = its dataset fingerprint
        (data,) = run.inputs.dataset_inputs
        assert (data.dataset.name, data.dataset.digest) == ("digits", run.data.tags[store.TAG_DATASET_FINGERPRINT])

    # the links the CLI printed: the report (the parent run's page) and the runs table with the leader search
    printed = re.findall(r"http://\S+#/\S+", done.stdout)
    assert printed == [store.run_url(ui, "review", parent), store.run_url(ui, "review", search=parent_run.LEADER_SEARCH)]
    assert all(store.UI_MODEL_TRAINING_VIEW in url for url in printed)
    report_url, leaders_url = printed

    page = _open_fresh(fresh_browser, report_url, "Sweep review: leaderboard")
    more = page.find_elements(By.XPATH, "//*[text()='Show more']")
    if more:
        more[0].click()
    text = _until(page, lambda d: _text_with(d, "efficientnet_b0"))
    assert "6 finished, 0 failed" in text and "Reproduce: imagebench sweep" in text
    page.save_screenshot(str(tmp_path / "report-run-page.png"))
    # the link the report wrote into its description: the same runs table, in the same view
    (written,) = [a.get_attribute("href") for a in page.find_elements(By.PARTIAL_LINK_TEXT, "search")
                  if "/#/experiments/" in (a.get_attribute("href") or "")]  # fmt: skip
    assert written == leaders_url

    artifacts = fresh_browser()
    artifacts.get(store.run_url(ui, "review", parent, tab="artifacts"))
    _until(artifacts, lambda d: d.find_elements(By.XPATH, f"//*[text()='{parent_run.ARTIFACT_DIR}']"))[0].click()
    _until(artifacts, lambda d: {"leaderboard.html", "leaderboard_table.json", "leaderboard.csv"}
           <= set(d.find_element(By.TAG_NAME, "body").text.split()))  # fmt: skip
    assert _view(artifacts) == "model training"
    artifacts.save_screenshot(str(tmp_path / "report-artifacts.png"))

    table = _open_fresh(fresh_browser, leaders_url, "matching runs")
    assert _until(table, lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=search-box]")).get_attribute("value") == parent_run.LEADER_SEARCH
    # matching child runs are shown under their sweep's row: open it
    _until(table, lambda d: d.find_element(By.CSS_SELECTOR, f"[row-id='{parent}'] [col-id*='Run Name'] button")).click()

    def shown_runs(driver):
        ids = {row.get_attribute("row-id") for row in driver.find_elements(By.CSS_SELECTOR, "[role=row][row-id]")} - {parent}
        return ids if len(ids) >= len(leaders) else None

    shown = _until(table, shown_runs)
    assert shown == leaders and not shown & others  # exactly the leaderboard's runs: the other three are not shown
    table.save_screenshot(str(tmp_path / "report-leaders.png"))

    # leaderboard.html as a reviewer opens it: formatted first columns, sortable, the full table one click away
    html = fresh_browser()
    html.get((project / "results" / "review" / "leaderboard.html").as_uri())
    first = _until(html, lambda d: d.find_element(By.CSS_SELECTOR, "table.sortable"))
    headers = [th.text for th in first.find_elements(By.TAG_NAME, "th")]
    assert headers[:4] == ["rank", "model", "framework", "test accuracy"] and "± 95% CI" not in headers  # one seed: no CI column
    assert all(row.find_elements(By.TAG_NAME, "td")[3].text.endswith(" %") for row in first.find_elements(By.CSS_SELECTOR, "tbody tr"))
    column = headers.index("params")

    def params_column():
        return [float(row.find_elements(By.TAG_NAME, "td")[column].get_attribute("data-value"))
                for row in first.find_elements(By.CSS_SELECTOR, "tbody tr")]  # fmt: skip

    assert len(set(params_column())) == len(params_column()) == 3  # three rows, no two alike: the order is checkable
    first.find_elements(By.TAG_NAME, "th")[column].click()
    ascending = params_column()
    assert ascending == sorted(ascending)
    first.find_elements(By.TAG_NAME, "th")[column].click()
    assert params_column() == sorted(ascending, reverse=True)
    assert html.find_elements(By.XPATH, "//summary[starts-with(text(), 'Every column')]")
    html.save_screenshot(str(tmp_path / "leaderboard-html.png"))
