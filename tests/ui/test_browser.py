"""End to end in a real headless Chromium: upload, report, sorting, streamed generation, drop.

Needs Debian's `chromium` and `chromium-driver` (`apt-get install -y chromium chromium-driver`)
and selenium; nothing is downloaded at test time. Screenshots land in the test's tmp_path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TinyModel
from tests.live_server import LiveServer
from tests.worker_process import WorkerProcess

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PROMPT = "the quick brown fox"
NEW_TOKENS = 8


def missing_browser() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} not found: apt-get install -y chromium chromium-driver"
    if shutil.which("chromium") is None:
        return "chromium is not on PATH"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_verify_sort_generate_and_drop_in_chromium(
    server: LiveServer, client: httpx.Client, tiny: TinyModel, browser: Any, tmp_path: Path
) -> None:
    with WorkerProcess(server.data_dir):
        try:
            ref = upload_with_the_file_input(browser, server, tiny, tmp_path)
            wait_for_the_report_to_pass(browser, tmp_path)
            sort_tensors_by_size(browser, server, ref)
            stream_in_the_playground(browser, server, client, ref, tmp_path)
            upload_by_dropping(browser, server, ref, tmp_path)
            reject_a_bad_file(browser, client, tmp_path)
        except BaseException:
            browser.save_screenshot(str(tmp_path / "failure.png"))
            (tmp_path / "failure.html").write_text(browser.page_source)
            raise


def upload_with_the_file_input(
    browser: Any, server: LiveServer, tiny: TinyModel, shots: Path
) -> str:
    from selenium.webdriver.common.by import By

    browser.get(f"{server.url}/ui")
    browser.find_element(By.ID, "upload-name").send_keys("browser-tiny")
    browser.find_element(By.ID, "upload-file").send_keys(str(tiny.zip_stored))
    browser.find_element(By.ID, "upload-submit").click()
    link = until(browser, lambda d: d.find_element(By.ID, "upload-link"))
    assert link.text == "browser-tiny@1"
    assert browser.find_element(By.ID, "upload-progress").get_property("value") == 100
    # the table is refreshed in place, without reloading the page
    until(browser, lambda d: "browser-tiny" in d.find_element(By.ID, "checkpoints").text)
    browser.save_screenshot(str(shots / "1-uploaded.png"))
    ref: str = link.text
    link.click()
    until(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text.startswith(ref))
    return ref


def wait_for_the_report_to_pass(browser: Any, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, "#verifications a[href^='/ui/verifications/']").click()
    # the page refreshes itself every 2 s until the worker is done
    until(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, "h1 .badge").text in ("passed", "failed"),
        timeout=90,
    )
    assert browser.find_element(By.CSS_SELECTOR, "h1 .badge").text == "passed"
    for name in ("integrity", "round_trip", "load", "stability", "weights"):
        badge = browser.find_element(By.CSS_SELECTOR, f"#check-{name} .badge")
        assert badge.text == "passed", name
    browser.save_screenshot(str(shots / "2-report.png"))


def sort_tensors_by_size(browser: Any, server: LiveServer, ref: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server.url}/ui/checkpoints/{ref}")
    header = browser.find_element(By.XPATH, "//table[@id='tensors']//th[text()='Elements']")
    for ascending in (True, False):
        header.click()
        cells = browser.find_elements(By.CSS_SELECTOR, "#tensors tbody tr td:nth-child(4)")
        sizes = [int(cell.get_attribute("data-value")) for cell in cells]
        assert len(sizes) > 2 and sizes == sorted(sizes, reverse=not ascending)


def stream_in_the_playground(
    browser: Any, server: LiveServer, client: httpx.Client, ref: str, shots: Path
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server.url}/ui/playground?ref={ref}")
    prompt = browser.find_element(By.ID, "playground-prompt")
    prompt.clear()
    prompt.send_keys(PROMPT)
    tokens = browser.find_element(By.NAME, "max_new_tokens")
    tokens.clear()
    tokens.send_keys(str(NEW_TOKENS))
    browser.find_element(By.ID, "playground-run").click()
    status = until(
        browser,
        lambda d: (
            d.find_element(By.ID, "playground-status").text.startswith("Done")
            and d.find_element(By.ID, "playground-status")
        ),
        timeout=90,
    )
    streamed = browser.find_element(By.ID, "playground-text").get_property("textContent")
    expected = client.post(
        f"/models/{ref}/generate",
        json={"inputs": PROMPT, "parameters": {"max_new_tokens": NEW_TOKENS, "do_sample": False}},
    ).json()
    assert streamed and streamed == expected["generated_text"]
    # token by token: one DOM update per streamed event
    text = browser.find_element(By.ID, "playground-text")
    assert text.get_attribute("data-tokens") == str(NEW_TOKENS)
    assert status.text == f"Done: {NEW_TOKENS} tokens, length."
    browser.save_screenshot(str(shots / "3-playground.png"))


def upload_by_dropping(browser: Any, server: LiveServer, ref: str, shots: Path) -> None:
    """Drop a file on the drop zone (the bytes of the stored upload, fetched by the page)."""
    from selenium.webdriver.common.by import By

    browser.get(f"{server.url}/ui")
    dropped = browser.execute_async_script(
        """
        const [ref, done] = arguments;
        fetch('/v1/checkpoints/' + ref + '/download').then((r) => r.blob()).then((blob) => {
          const transfer = new DataTransfer();
          transfer.items.add(new File([blob], 'dropped.zip'));
          const zone = document.getElementById('dropzone');
          zone.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true}));
          done(document.getElementById('upload-chosen').textContent);
        });
        """,
        ref,
    )
    assert dropped == "dropped.zip"
    browser.find_element(By.ID, "upload-submit").click()
    link = until(browser, lambda d: d.find_element(By.ID, "upload-link"))
    assert link.text == "dropped@1"  # named after the dropped file
    browser.save_screenshot(str(shots / "4-dropped.png"))


def reject_a_bad_file(browser: Any, client: httpx.Client, shots: Path) -> None:
    """The API's error message is shown as text (markup in the file stays inert)."""
    from selenium.webdriver.common.by import By

    bad = shots / "notes.txt"
    bad.write_text("<b>not a model</b>")
    expected = client.post("/v1/checkpoints", files={"file": (bad.name, bad.read_bytes())})
    assert expected.status_code == 422, expected.text
    assert expected.json()["error"]["code"] == "unknown_format"
    browser.find_element(By.ID, "upload-file").send_keys(str(bad))
    browser.find_element(By.ID, "upload-submit").click()
    result = until(
        browser,
        lambda d: (
            "error" in d.find_element(By.ID, "upload-result").get_attribute("class")
            and d.find_element(By.ID, "upload-result")
        ),
    )
    assert result.text == expected.json()["error"]["message"]
    assert not result.find_elements(By.TAG_NAME, "b")
    browser.save_screenshot(str(shots / "5-rejected.png"))


def until(browser: Any, condition: Any, timeout: float = 60) -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(browser, timeout, ignored_exceptions=ignored).until(condition)
