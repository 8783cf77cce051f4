"""The web view (started by `lab up --web`) in a real browser (Debian's chromium, headless, through its chromedriver) on a running offline project.

Opened without the token the page is read-only: no co-PI box, and a POST
forged from the page is refused. With the token's link: messages arrive live,
a co-PI note sent from the box gets the PI's answer on the page, and the stop
button ends the project. A screenshot of the project page is kept (under the
test's tmp dir, and in ``$LAB_TEST_ARTIFACTS`` when that is set).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import lab_cmd
from tests.e2e.test_lab_run import wait_for

pytestmark = pytest.mark.timeout(600)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BROWSER_MISSING = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; LAB_REQUIRE_BROWSER=1 makes this a failure)"


@pytest.fixture
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if os.environ.get("LAB_REQUIRE_BROWSER") == "1":
            pytest.fail(BROWSER_MISSING)
        pytest.skip(BROWSER_MISSING)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(predicate, timeout: float, what: str, every: float = 0.3):
    return wait_for(predicate, timeout, every, what)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _text(driver, element_id: str) -> str:
    """An element's text, "" while it is not on the page (the side sections are re-rendered as messages arrive)."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, element_id)
    return found[0].text if found else ""


def _messages(driver) -> list[tuple[str, str]]:
    return driver.execute_script("return [...document.querySelectorAll('#messages li')].map(li => [li.dataset.kind, li.querySelector('.line').textContent])")


def test_a_running_project_in_the_browser(browser, lab_env, tmp_path):
    from selenium.webdriver.common.by import By

    home, env = lab_env
    # `lab up --web` (detached): the agents, and the web view beside them; it prints the link with the token.
    up = subprocess.run(lab_cmd("up", "-d", "--web", "--web-port", "0"), env=env, capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stderr
    run = None
    try:
        m = re.search(r"^web view: (http://127\.0\.0\.1:\d+/)\?token=(\S+)$", up.stdout, re.M)
        assert m, up.stdout
        url, token = m.groups()
        out = tmp_path / "out"
        run = subprocess.Popen(lab_cmd("run", "--template", "grokking", "--fast", "--max-ideas", "1", "--max-rounds", "0", "--out", str(out), "-q"),
                               env=env, stdout=open(tmp_path / "run.log", "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        project = _wait(lambda: re.search(r'href="/p/([\w-]+)"', urllib.request.urlopen(url, timeout=10).read().decode()), 120, "the project").group(1)

        # Without the token: read-only, and a POST forged from the page is refused.
        browser.get(f"{url}p/{project}")
        _wait(lambda: len(_messages(browser)) >= 2, 60, "the replayed conversation")
        assert not browser.find_elements(By.ID, "copi-form") and not browser.find_elements(By.ID, "stop")
        forged = browser.execute_async_script(
            "const done = arguments[0]; const body = new FormData(); body.append('text', 'forged'); body.append('to', 'pi');"
            f"fetch('/p/{project}/note', {{method: 'POST', body}}).then(r => done(r.status), e => done(String(e)));")
        assert forged == 403
        assert browser.execute_async_script(f"const done = arguments[0]; fetch('/p/{project}/stop', {{method: 'POST'}}).then(r => done(r.status));") == 403

        # With the token's link: the box; the token leaves the address bar.
        browser.get(f"{url}p/{project}?token={token}")
        assert browser.current_url == f"{url}p/{project}"
        _wait(lambda: _text(browser, "live") == "live", 30, "the live feed")
        before = len(_wait(lambda: _messages(browser), 30, "messages"))

        browser.find_element(By.CSS_SELECTOR, "#copi-form textarea").send_keys("only vary weight_decay")
        browser.find_element(By.CSS_SELECTOR, "#copi-form button").click()
        answer = _wait(lambda: _text(browser, "copi-answer"), 90, "the PI's answer in the co-PI box")
        # The PI restricts later ideas to the knob and schedules a run of it (or says why not): never acknowledged and dropped.
        assert answer.startswith("pi answered: from now on, new ideas vary only weight_decay"), answer
        # The note and its answer arrived live, after the page was loaded.
        kinds = [k for k, _ in _messages(browser)[before:]]
        assert "copi_note" in kinds and "note_ack" in kinds

        browser.save_screenshot(str(tmp_path / "project-page.png"))
        if os.environ.get("LAB_TEST_ARTIFACTS"):
            dest = Path(os.environ["LAB_TEST_ARTIFACTS"])
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "project-page.png", dest / "web-project-page.png")
        assert (tmp_path / "project-page.png").read_bytes().startswith(b"\x89PNG")

        browser.find_element(By.ID, "stop").click()
        decision = _wait(lambda: [line for k, line in _messages(browser) if k == "decision"], 120, "the decision after stop")
        assert "stopped by the co-PI" in decision[0]
        _wait(lambda: "stopped by the co-PI" in _text(browser, "decision"), 30, "the decision in the summary")
        _wait(lambda: _text(browser, "stage") == "failed", 30, "the stage in the summary")
        run.wait(180)  # `lab run` ends with the project
    finally:
        _stop(run)
        subprocess.run(lab_cmd("down"), env=env, capture_output=True, timeout=120)
    # `lab down` took the web view down with the agents.
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)
