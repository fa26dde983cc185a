"""`distar serve --collect DIR`: the collection routes record choices as preference pairs, and the page in
headless Chromium records five clicked and keyed choices (plus a skip) into the folder."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
from serve_helpers import post, serving

from distar.io import load_image
from distar.rewards.preference import read_pairs

try:
    from test_serve_browser import browser  # noqa: F401  (the headless Chromium of the page's own test)
except pytest.skip.Exception as missing:
    reason = str(missing)

    @pytest.fixture
    def browser():
        pytest.skip(reason)


PROMPT = "a large red circle on a white background"


@pytest.fixture(scope="module")
def collecting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, folder) of ``distar serve --collect folder`` with the shipped shapes models."""
    folder = tmp_path_factory.mktemp("collect") / "choices"
    with serving("--collect", str(folder), ready="collect/status") as url:
        yield url, folder


def lines(folder: Path) -> list[dict]:
    path = folder / "pairs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def pair(url: str, **body: object) -> dict:
    status, _, data = post(url + "collect/pair", {"prompt": PROMPT, **body})
    assert status == 200, data
    return json.loads(data)


def test_choices_are_recorded_once_as_pairs_and_skips_are_not(collecting: tuple[str, Path]) -> None:
    url, folder = collecting
    before = len(lines(folder))
    shown = pair(url)
    assert len(shown["images"]) == 2 and shown["prompt"] == PROMPT
    status, _, data = post(url + "collect/choice", {"token": shown["token"], "choice": "right"})
    assert status == 200 and json.loads(data) == {"recorded": before + 1, "skipped": False}
    assert post(url + "collect/choice", {"token": shown["token"], "choice": "left"})[0] == 404  # once only

    skipped = pair(url)
    assert json.loads(post(url + "collect/choice", {"token": skipped["token"], "choice": "skip"})[2])["skipped"]
    versus = pair(url, versus="reference")
    assert post(url + "collect/choice", {"token": versus["token"], "choice": "tie"})[0] == 200

    recorded = lines(folder)[before:]
    assert [(r["prompt"], r["label"]) for r in recorded] == [(PROMPT, 1.0), (PROMPT, 0.5)]
    assert sorted(s.split(" seed")[0] for s in recorded[1]["sources"]) == ["one-step", "reference"]
    assert all((folder / r[key]).is_file() for r in recorded for key in ("image_0", "image_1"))
    assert len(read_pairs(folder)) == before + 2


@pytest.mark.parametrize(
    ("route", "body", "status"),
    [
        ("collect/choice", {"token": "nope", "choice": "left"}, 404),
        ("collect/choice", {"token": "nope", "choice": "../../etc/passwd"}, 422),
        ("collect/choice", {"token": "nope", "choice": "left", "path": "/tmp/x"}, 422),
        ("collect/pair", {"prompt": "x" * 1001}, 422),
        ("collect/pair", {"prompt": PROMPT, "versus": "other"}, 422),
        ("collect/pair", b"x" * 5000, 413),
        ("collect/pair", b"[1]", 400),
        ("collect/pair", b'{"a": ' * 20 + b"1" + b"}" * 20, 400),  # nested past the server's JSON depth
    ],
)
def test_bad_requests_are_refused(collecting: tuple[str, Path], route: str, body: object, status: int) -> None:
    url, folder = collecting
    before = len(lines(folder))
    got, _, data = post(url + route, body)
    assert got == status and "error" in json.loads(data)
    assert len(lines(folder)) == before


def test_a_cross_origin_page_cannot_record_choices(collecting: tuple[str, Path]) -> None:
    url, folder = collecting
    before = len(lines(folder))
    shown = pair(url)
    status, _, data = post(url + "collect/choice", {"token": shown["token"], "choice": "left"},
                           headers={"Origin": "http://evil.example.com"})
    assert status == 403 and b"--allow-origin" in data
    assert post(url + "collect/pair", {"prompt": PROMPT}, headers={"Origin": "http://evil.example.com"})[0] == 403
    assert len(lines(folder)) == before


def test_the_page_records_five_choices_by_click_and_key(collecting: tuple[str, Path], browser) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, folder = collecting
    before = len(lines(folder))
    wait = WebDriverWait(browser, 30, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(url + "collect")
    box = browser.find_element(By.ID, "prompt")
    wait.until(lambda d: box.get_attribute("value"))  # the example prompt, once the page has started
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(PROMPT, Keys.ENTER)

    def by_key(key: str):
        return lambda: ActionChains(browser).send_keys(key).perform()

    def by_click(element_id: str):
        return lambda: browser.find_element(By.ID, element_id).click()

    steps = [  # (action, label recorded or None for a skip)
        (by_click("left"), 0.0), (by_key(Keys.ARROW_RIGHT), 1.0), (by_key("s"), None), (by_click("choose-tie"), 0.5),
        (by_key("1"), 0.0), (by_click("choose-right"), 1.0),
    ]
    token = ""
    for action, _ in steps:
        shown = token
        token = wait.until(lambda d: (t := d.find_element(By.ID, "pair").get_attribute("data-token")) != shown and t)
        action()
    expected = [label for _, label in steps if label is not None]
    wait.until(lambda d: d.find_element(By.ID, "count").get_attribute("data-recorded") == str(before + len(expected)))

    recorded = lines(folder)[before:]
    assert [r["label"] for r in recorded] == expected and {r["prompt"] for r in recorded} == {PROMPT}
    for record in recorded:
        assert load_image(folder / record["image_0"]).shape == load_image(folder / record["image_1"]).shape
    assert browser.find_element(By.ID, "status").get_attribute("class") != "error"


def test_both_pages_link_one_stylesheet_served_as_css_and_revalidated(collecting: tuple[str, Path]) -> None:
    url, _ = collecting
    links = {page: re.findall(r'<link rel="stylesheet" href="([^"]+)">', urlopen(url + page, timeout=10).read().decode())
             for page in ("", "collect")}
    assert links[""] == links["collect"] and len(links[""]) == 1
    with urlopen(url + links[""][0], timeout=10) as response:
        assert response.headers["Content-Type"] == "text/css; charset=utf-8"
        etag, css = response.headers["ETag"], response.read().decode()
    assert "#status.error" in css and etag
    with pytest.raises(HTTPError) as unchanged:  # urllib raises on a 304: the browser keeps its copy
        urlopen(Request(url + links[""][0], headers={"If-None-Match": etag}), timeout=10)
    assert unchanged.value.code == 304


def test_both_pages_are_styled_by_the_stylesheet(collecting: tuple[str, Path], browser) -> None:
    url, _ = collecting
    for page in ("", "collect"):
        browser.get(url + page)
        sheets = browser.execute_script("return [...document.styleSheets].map(s => s.href)")
        assert sheets[0].endswith("/static/style.css")
        header = browser.execute_script("return getComputedStyle(document.querySelector('header')).backgroundColor")
        assert header == "rgb(29, 35, 48)"  # #1d2330, a rule of the stylesheet only


def test_a_torn_last_line_is_cut_off_when_a_server_starts_there(tmp_path: Path) -> None:
    from distar.serve.collect import PairLog

    (tmp_path / "pairs.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b", "ima')
    assert PairLog(tmp_path).count == 1
    assert (tmp_path / "pairs.jsonl").read_text() == '{"prompt": "a"}\n'
