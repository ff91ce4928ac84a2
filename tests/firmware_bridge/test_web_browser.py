"""The operator web page in a real browser: Debian's Chromium, headless, driven by Selenium
through the system chromedriver, against ``glass-inspect serve --web`` of the small simulated
head while a line controller sends samples. Skipped, with the reason, where the browser or
its driver is not installed (``.ci/run`` installs both)."""

import json

import pytest

from tests.firmware_bridge.web_head import (
    TOKEN,
    ServingHead,
    browser_missing,
    chrome,
    wait_kept,
)

pytestmark = [pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing())),
              pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("uvicorn")
    head = ServingHead(tmp_path_factory.mktemp("web-head"))
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="module")
def browser():
    driver = chrome()
    try:
        yield driver
    finally:
        driver.quit()


def loaded(driver, element) -> bool:
    """The picture arrived and decoded (not a broken image)."""
    return bool(driver.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", element))


def test_a_fail_appears_with_its_overlay_and_is_labelled_with_the_token(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from edge.labels_sample import read_labels

    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    browser.get(served.url + "/")
    assert browser.find_element(By.ID, "state").text in ("ready", "busy")
    sid = served.inspect_until("FAIL")
    # the live page (refreshing itself) shows the FAIL with the verdict's map: RoIs and the
    # kept scratch outlined with its length in mm
    card = f'.verdict[data-sample="{sid}"][data-status="FAIL"]'
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, card + " svg rect.defect")))
    text = browser.find_element(By.CSS_SELECTOR, card).text
    assert sid in text and "FAIL" in text and " mm, " in text
    assert int(browser.find_element(By.ID, "n-fail").text) >= 1
    # once the review writer kept it, the newest FAIL's RoI picture (frames, score, boxes)
    wait_kept(served, sid)
    wait.until(lambda d: loaded(d, d.find_element(By.ID, "newest-fail")))
    # open the sample: its RoIs as pictures and the six states of the flagged one
    browser.find_element(By.CSS_SELECTOR, card + " a.sample-link").click()
    wait.until(EC.presence_of_element_located((By.ID, "states")))
    assert browser.find_element(By.ID, "status").text == "FAIL"
    wait.until(lambda d: loaded(d, d.find_element(By.ID, "states")))
    thumbs = browser.find_elements(By.CSS_SELECTOR, ".thumbs img")
    assert len(thumbs) == 2
    wait.until(lambda d: all(loaded(d, t) for t in thumbs))
    rows = browser.find_elements(By.CSS_SELECTOR, "#defects tr")[1:]
    assert rows and all(" mm" in r.text for r in rows)
    # confirm every proposed defect, with the token
    labels = served.kept / sid / "labels.json"
    assert not labels.exists()
    radios = browser.find_elements(By.CSS_SELECTOR, 'input[type=radio][value="scratch"]')
    assert radios
    for r in radios:
        r.click()
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "save").click()
    wait.until(EC.presence_of_element_located((By.ID, "saved")))
    got = read_labels(served.kept / sid)
    assert not got.clean and len(got.scratches) == len(radios)
    assert json.loads(labels.read_text())["labelled_by"] == "operator (web page)"
    assert "labelled" in browser.find_element(By.ID, "labelled").text.lower()


def test_labels_are_refused_without_the_token_or_with_a_bad_csrf_token(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    sid = served.inspect_until("FAIL", prefix="REFUSE")
    folder = wait_kept(served, sid)
    labels = folder / "labels.json"

    def open_form():
        browser.get(f"{served.url}/sample/{sid}")
        wait.until(EC.presence_of_element_located((By.ID, "label-form")))
        for r in browser.find_elements(By.CSS_SELECTOR, 'input[type=radio][value="scratch"]'):
            r.click()

    open_form()  # no token typed
    browser.find_element(By.ID, "save").click()
    refused = wait.until(EC.presence_of_element_located((By.ID, "refused")))
    assert "token" in refused.text and not labels.exists()

    open_form()  # the right token, but the form's CSRF value is not the cookie's
    browser.execute_script(
        "document.querySelector('input[name=csrf]').value = 'forged-by-another-site'")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "save").click()
    refused = wait.until(EC.presence_of_element_located((By.ID, "refused")))
    assert "CSRF" in refused.text and not labels.exists()
