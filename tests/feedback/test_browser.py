"""A real browser (headless Chromium through selenium) against a real server: log in, compare,
rate, and the rows are in the database. Without a token: 401 for the API, login for pages."""

from __future__ import annotations

import shutil
import tempfile

import httpx
import pytest
from sqlalchemy import select

from pipeline.feedback.storage import Assignment, Comment, Item, Rating, add_rater

pytestmark = pytest.mark.integration

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


@pytest.fixture
def browser():
    # Found on PATH, as `make system-deps` checks for them; `make test` installs them, so a
    # machine without them fails here rather than skipping the test.
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail("chromium and chromedriver are not on PATH: run `make system-deps` "
                    "(or: sudo apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="rayppo-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(60)
    # A click that submits a form returns before the next page is there: lookups wait for it.
    driver.implicitly_wait(15)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_browser_logs_in_compares_and_rates(db, compare_task, rate_task, live_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    token = add_rater(db, "dana")
    server = live_server()

    # Not logged in: pages send the browser to the login page, the API answers 401.
    browser.get(f"{server.url}/tasks/{compare_task}")
    assert "/login" in browser.current_url
    assert httpx.get(f"{server.url}/api/tasks").status_code == 401
    assert httpx.get(f"{server.url}/api/tasks", headers={"Authorization": "Bearer nope"}).status_code == 401

    browser.find_element(By.ID, "token").send_keys("not the token")
    browser.find_element(By.ID, "login").click()
    assert "not valid" in browser.find_element(By.ID, "error").text
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "login").click()
    # Back where it was going: the comparison page.
    shown_a = browser.find_element(By.ID, "reply-A").text
    assert browser.find_element(By.ID, "rater-name").text == "dana"
    browser.find_element(By.ID, "choice-A").click()
    browser.find_element(By.ID, "comment").send_keys("A answers the question")
    browser.find_element(By.ID, "submit").click()
    assert "Saved" in browser.find_element(By.ID, "saved").text

    browser.get(f"{server.url}/tasks/{rate_task}")
    rated_reply = browser.find_element(By.ID, "reply").text
    browser.find_element(By.ID, "score-4").click()
    browser.find_element(By.ID, "submit").click()
    assert "Saved" in browser.find_element(By.ID, "saved").text

    browser.get(f"{server.url}/")
    assert "pairs" in browser.page_source and "scores" in browser.page_source

    with db.read() as s:
        ratings = list(s.scalars(select(Rating).order_by(Rating.id)))
        assert len(ratings) == 2
        compared, scored = ratings
        assignment = s.get(Assignment, compared.assignment_id)
        item = s.get(Item, compared.item_id)
        # The rater clicked what was shown as A: the stored preference names that reply.
        assert shown_a == (item.reply_b if assignment.swapped else item.reply_a)
        assert compared.preference == ("b" if assignment.swapped else "a")
        assert s.scalar(select(Comment.text).where(Comment.rating_id == compared.id)) == "A answers the question"
        assert scored.score == 4 and s.get(Item, scored.item_id).reply_a == rated_reply

    browser.find_element(By.ID, "logout").click()
    # The click returns before the POST is answered: a get now could cancel the logout.
    WebDriverWait(browser, 15).until(expected_conditions.url_contains("/login"))
    browser.get(f"{server.url}/tasks/{rate_task}")
    assert "/login" in browser.current_url
