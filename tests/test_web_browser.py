"""The web inbox in a real headless Chromium (Selenium, the system's chromedriver), served by
uvicorn on a loopback port: an agent pauses, the treasurer approves from the page and the tool
runs once; the requester sees no approve button and a forged POST is refused; an edit through
the form is decided by the policy again. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import approval_rows
from web_support import AUTH, GRAPH, Bank, paused_agent, served, token

from handrail import Actor
from handrail.web import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).parent / "artifacts"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
    reason="the browser test needs Chromium and chromedriver (Debian: chromium, chromium-driver)",
)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

BOB = Actor(id="bob", roles=("ai-agent", "treasurer"))  # asks, and holds the approver role


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,1400")
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"web_{name}.png"))


def sign_in(driver: WebDriver, url: str, sub: str, roles: list[str]) -> None:
    driver.delete_all_cookies()
    driver.get(f"{url}/inbox/login")
    driver.find_element(By.ID, "token").send_keys(token(sub, roles))
    driver.find_element(By.ID, "sign-in").click()
    assert driver.find_element(By.ID, "who").text == sub


def forged_post(driver: WebDriver, thread: str, *, with_csrf: bool) -> int:
    """A POST approving ``thread`` from the signed-in page's own origin and cookie."""
    script = """
        const [thread, withCsrf, done] = arguments;
        const body = new URLSearchParams({action: "approve", seen: "call-0:x"});
        if (withCsrf) body.set("csrf", document.querySelector("input[name=csrf]").value);
        fetch("/inbox/threads/" + thread, {method: "POST", body, credentials: "same-origin"})
            .then(r => done(r.status));
    """
    status: int = driver.execute_async_script(script, thread, with_csrf)
    return status


def test_approve_refuse_and_edit_in_a_browser(browser: WebDriver, tmp_path: Path) -> None:
    db = tmp_path / "handrail.db"
    bank = Bank()
    calls = [
        ("transfer_funds", {"to": "carol", "amount": 5000, "account_number": "DE89370400440532"}),
        ("transfer_funds", {"to": "dave", "amount": 3000}),
    ]
    graph = paused_agent(db, bank, calls, actor=BOB)
    app = create_app(db, authenticator=AUTH, graphs={GRAPH: lambda _: graph}, poll_interval=0.2)
    with served(app) as url:
        # the requester: nothing listed, no page, no button; forged POSTs refused
        sign_in(browser, url, "bob", ["ai-agent", "treasurer"])
        assert browser.find_element(By.ID, "empty").is_displayed()
        shot(browser, "1_requester_list")
        browser.get(f"{url}/inbox/threads/t-0")
        assert "404" in browser.find_element(By.TAG_NAME, "h1").text
        assert browser.find_elements(By.ID, "approve") == []
        shot(browser, "2_requester_detail")
        assert forged_post(browser, "t-0", with_csrf=False) == 403
        assert forged_post(browser, "t-0", with_csrf=True) == 403
        assert bank.transfers == []
        assert [r["status"] for r in approval_rows(db)] == ["open", "open"]

        # the treasurer: the list, the page, approve; the tool runs once
        sign_in(browser, url, "alice", ["treasurer"])
        rows = browser.find_elements(By.CSS_SELECTOR, "tr.request")
        assert sorted(r.get_attribute("data-thread") for r in rows) == ["t-0", "t-1"]
        assert "expired" not in browser.find_element(By.CLASS_NAME, "deadline").text
        shot(browser, "3_treasurer_list")
        browser.find_element(By.CSS_SELECTOR, "tr[data-thread='t-0'] a.open").click()
        assert "DE89370400440532" not in browser.page_source
        assert browser.find_element(By.ID, "graph").get_attribute("naturalWidth") != "0"
        shot(browser, "4_treasurer_detail")
        browser.find_element(By.ID, "approve").click()
        assert "Decided: approve" in browser.find_element(By.ID, "decided").text
        assert "succeeded · transfer_funds" in browser.find_element(By.ID, "decided").text
        shot(browser, "5_treasurer_approved")
        assert len(bank.transfers) == 1 and bank.transfers[0]["to"] == "carol"

        # an edit into a denied amount: the policy decides it again, nothing runs
        browser.get(f"{url}/inbox/threads/t-1")
        amount = browser.find_element(By.ID, "arg-amount")
        amount.clear()
        amount.send_keys("500000")
        shot(browser, "6_treasurer_edit")
        browser.find_element(By.ID, "edit").click()
        decided = browser.find_element(By.ID, "decided").text
        assert "Decided: edit" in decided and "decided · transfer_funds · deny" in decided
        shot(browser, "7_treasurer_edit_denied")
        assert len(bank.transfers) == 1

        browser.get(f"{url}/inbox/")
        assert browser.find_element(By.ID, "empty").is_displayed()
    outcomes = sorted((r["thread_id"], r["outcome"], r["decided_by"]) for r in approval_rows(db))
    assert outcomes == [("t-0", "approve", "alice"), ("t-1", "deny", "alice")]
