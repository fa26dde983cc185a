"""The page in headless Chromium: it generates as the user types and shows the one-step time."""

from __future__ import annotations

import re
import shutil
from typing import Iterator

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[test]')")
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
INSTALL = "apt-get install chromium chromium-driver"


@pytest.fixture(scope="module")
def browser() -> Iterator["webdriver.Chrome"]:
    binary = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip(f"no Chromium and chromedriver on PATH ({INSTALL})")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    except WebDriverException as err:
        pytest.skip(f"Chromium did not start: {err.msg}")
    yield driver
    driver.quit()


def first_image(driver) -> str | None:
    images = driver.find_elements(By.CSS_SELECTOR, "#grid .tile.one-step img")
    return images[0].get_attribute("src") if images else None


def wait_for_new_image(driver, previous: str | None, prompt: str | None = None) -> str:
    """The first one-step image once it differs from ``previous`` (and was made for ``prompt``)."""

    def ready(d) -> str | None:
        src = first_image(d)
        made_for = d.find_element(By.ID, "grid").get_attribute("data-prompt")
        fresh = src and src.startswith("data:image/png;base64,") and src != previous
        return src if fresh and prompt in (None, made_for) else None

    try:
        return WebDriverWait(driver, 30, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)).until(ready)
    except TimeoutException:
        status = driver.find_element(By.ID, "status").text
        pytest.fail(f"no new image within 30 s (status line: {status!r})")


def type_prompt(driver, text: str) -> None:
    box = driver.find_element(By.ID, "prompt")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text)


def test_page_generates_as_the_user_types(server, browser):
    browser.get(server)
    shown = wait_for_new_image(browser, None)  # the example prompt, on load
    assert "one-step" in browser.find_element(By.ID, "models").text

    for prompt in ("three red circles on a white background", "a large green square on a black background"):
        type_prompt(browser, prompt)
        shown = wait_for_new_image(browser, shown, prompt)

    times = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#grid .tile.one-step .ms")]
    assert times and all(re.fullmatch(r"\d+(\.\d)? ms", t) for t in times), times
    link = browser.find_element(By.CSS_SELECTOR, "#grid .tile.one-step a[download]")
    assert link.get_attribute("href") == shown and link.get_attribute("download").endswith(".png")
    assert browser.find_element(By.ID, "status").get_attribute("class") != "error"


def test_page_shows_n_images_and_the_reference_with_its_time(server, browser):
    browser.get(server)
    shown = wait_for_new_image(browser, None)
    browser.find_element(By.CSS_SELECTOR, "#n option[value='3']").click()
    browser.find_element(By.ID, "compare").click()
    steps = browser.find_element(By.ID, "steps")
    steps.send_keys(Keys.CONTROL, "a")
    steps.send_keys("5")
    WebDriverWait(browser, 30, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .card")) == 3
        and len(d.find_elements(By.CSS_SELECTOR, "#grid .tile.reference")) == 3
        and "5 steps" in d.find_element(By.CSS_SELECTOR, "#grid .tile.reference .label").text
    )
    assert first_image(browser) == shown  # same prompt and first seed: the same one-step image
    reference_ms = browser.find_element(By.CSS_SELECTOR, "#grid .tile.reference .ms").text
    assert re.fullmatch(r"\d+(\.\d)? ms", reference_ms)
    browser.find_element(By.ID, "new-seed").click()
    wait_for_new_image(browser, shown)
