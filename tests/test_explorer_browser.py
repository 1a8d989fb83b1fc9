"""The explorer end to end in headless Chromium (Selenium): start ``scripts/explore.py`` on the ToyWorld model, type a
prompt, click two word chips, run, and check the page; then a word not in the prompt must show the scripts' error.

Needs the ``app`` extra (Gradio), Selenium and Chromium with its driver (Debian: ``chromium``, ``chromium-driver``;
``.ci/run`` installs them). Under ``CI=true`` a missing piece fails the test; elsewhere it is skipped with the reason.
``EXPLORER_SCREENSHOT=<file.png>`` saves the page after the run there (how ``docs/explorer.png`` was made).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO

PROMPT = "a green triangle and a yellow diamond"
TIMEOUT = 60  # seconds for any one thing the page must show
STARTUP_TIMEOUT = 240  # seconds for the server to answer (imports and the model load; slow on a loaded machine)


def _missing() -> str | None:
    for module in ("gradio", "selenium"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[test,app]')"
    if not _chromium() or not shutil.which("chromedriver"):
        return "Chromium and its driver are not installed (apt-get install chromium chromium-driver)"
    return None


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(tmp_path):
    missing = _missing()
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"the browser test must run in CI: {missing}")
        pytest.skip(missing)
    port = _free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    log = (tmp_path / "explore.log").open("w")
    server = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "explore.py"), "--port", str(port), "--steps", "5", "--prompt", PROMPT],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,  # configs name files relative to the repository
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if server.poll() is not None:
                pytest.fail(f"scripts/explore.py exited: {(tmp_path / 'explore.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the explorer did not answer on {url}: {(tmp_path / 'explore.log').read_text()}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200"):
        options.add_argument(arg)
    options.binary_location = _chromium()
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def test_pick_two_words_run_and_see_both_images_and_maps(app_url, browser, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def css(selector: str):
        return browser.find_elements(By.CSS_SELECTOR, selector)

    def chip_labels() -> list[str]:
        return [label.text for label in css("#chips label")]

    # Gradio re-renders components while it updates them: an element found a moment ago may be gone, so look again
    wait = WebDriverWait(browser, TIMEOUT, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(app_url)
    prompt = wait.until(lambda _: css("#prompt textarea") or css("#prompt input"))[0]
    prompt.clear()
    prompt.send_keys("a red circle and a blue square")  # typed: the chips follow the prompt
    wait.until(lambda _: any(label.startswith("square ") for label in chip_labels()))
    assert [label.split(" [")[0] for label in chip_labels()] == ["a", "red", "circle", "and", "a", "blue", "square"]
    for word in ("circle", "square"):
        next(label for label in css("#chips label") if label.text.startswith(word + " ")).click()
    tokens = css("#ae-tokens textarea")[0]
    wait.until(lambda _: tokens.get_attribute("value") == "circle,square")

    css("#run")[0].click()
    wait.until(lambda _: len(css("#maps-ae img")) == 2 and len(css("#maps-plain img")) == 2)
    assert len(css("#image-plain img")) == 1 and len(css("#image-ae img")) == 1 and len(css("#plot img")) == 1
    captions = " ".join(e.text for e in css("#maps-ae"))
    assert "circle" in captions and "square" in captions
    assert "Refinement iterations" in css("#summary")[0].text
    assert not css("#error")[0].text.strip()

    step = css("#step input[type=number]")[0]  # the slider's number box: the first step's maps
    step.send_keys(Keys.CONTROL, "a")
    step.send_keys("0", Keys.ENTER)
    wait.until(lambda _: "Step 1/5" in css("#step-caption")[0].text)

    shot = Path(os.environ.get("EXPLORER_SCREENSHOT") or tmp_path / "explorer.png")
    step.send_keys(Keys.CONTROL, "a")
    step.send_keys("5", Keys.ENTER)  # back to the final maps for the picture
    wait.until(lambda _: "Final maps" in css("#step-caption")[0].text)
    browser.set_window_size(1400, browser.execute_script("return document.documentElement.scrollHeight") + 120)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    tokens.send_keys(Keys.CONTROL, "a")
    tokens.send_keys("circle,purple")  # purple is a ToyWorld word, but not in this prompt
    css("#run")[0].click()
    wait.until(lambda _: "not in the prompt" in css("#error")[0].text)
    message = css("#error")[0].text
    assert "'purple'" in message and "Token table of the prompt" in message
    css("#ae-tokens textarea")[0].send_keys(Keys.CONTROL, "a")  # the app still answers
    css("#ae-tokens textarea")[0].send_keys("circle")
    css("#run")[0].click()
    wait.until(lambda _: not css("#error")[0].text.strip() and len(css("#maps-ae img")) == 1)


def test_pick_a_method_and_see_every_method_side_by_side(app_url, browser):
    """The method picker names every registered method and shows the picked one's settings; with every method ticked
    under #compare, one run shows each method's image and maps beside the run without guidance."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from ldm.guidance import get_method, method_names

    def css(selector: str):
        return browser.find_elements(By.CSS_SELECTOR, selector)

    wait = WebDriverWait(browser, TIMEOUT, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(app_url)
    wait.until(lambda _: any(label.text.startswith("diamond ") for label in css("#chips label")))
    for word in ("triangle", "diamond"):
        next(label for label in css("#chips label") if label.text.startswith(word + " ")).click()
    wait.until(lambda _: css("#ae-tokens textarea")[0].get_attribute("value") == "triangle,diamond")

    methods = [m for m in method_names() if m != "plain"]
    titles = [get_method(m).title for m in methods]
    assert css("#method input")[0].get_attribute("value") == "Attend-and-Excite"
    css("#method input")[0].click()
    options = wait.until(lambda _: css("#method li[role=option]") or css("li[role=option]"))
    assert [o.get_attribute("aria-label") for o in options] == titles  # every registered method but plain
    picked = methods[-1]  # the last registered method (A&E when it is the only one)
    next(o for o in options if o.get_attribute("aria-label") == titles[-1]).click()
    wait.until(lambda _: css("#run")[0].text == f"Run without and with {titles[-1]}")
    css("#settings-ae, #settings-" + picked)  # the settings accordion: open it, the picked method's group shows
    next(b for b in css("button.label-wrap") if "Method settings" in b.text).click()
    wait.until(lambda _: css(f"#settings-{picked}") and css(f"#settings-{picked}")[0].is_displayed())
    if picked != "ae":
        assert not css("#settings-ae") or not css("#settings-ae")[0].is_displayed()

    for box in css("#compare input[type=checkbox]"):  # every method side by side
        box.click()
    wait.until(lambda _: all(b.is_selected() for b in css("#compare input[type=checkbox]")))
    css("#run")[0].click()
    runs = 1 + len(methods)  # without guidance, then each method once
    slow = WebDriverWait(browser, 6 * TIMEOUT, ignored_exceptions=(StaleElementReferenceException,))  # INITNO & co.
    slow.until(lambda _: len(css("#compare-images img")) == runs and len(css("#compare-maps img")) == 2 * runs)
    assert len(css("#compare-plot img")) == 1 and len(css("#image-ae img")) == 1
    table = css("#compare-summary")[0].text
    assert all(f"{title}" in table for title in titles) and "without guidance" in table
    assert not css("#error")[0].text.strip()
