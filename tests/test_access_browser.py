"""Issue 17's browser check: with sign-in required, each role signs in and sees exactly its pages; a wrong
password is refused and counted; the admin's Activity page lists the test's own actions. Screenshots go to
tmp_path (and $IAD_SCREENSHOTS when set)."""

from __future__ import annotations

from pathlib import Path

import pytest
from jobs_helpers import wait_for
from test_browser import CHROMIUM, CHROMIUM_ARGS, Screenshots, app_url, settled  # noqa: F401  (app_url: the `iad up` fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "correct horse battery"
VIEWER_PAGES = ["Leaderboard", "Imbalance", "Jobs", "Run detail", "Export"]
PAGES = {
    "viewer": VIEWER_PAGES,
    "annotator": [*VIEWER_PAGES, "Annotate", "Annotation sets"],
    "researcher": ["Leaderboard", "Imbalance", "Launch", "Jobs", "Run detail", "Export", "Annotate",
                   "Annotation sets"],
    "admin": ["Leaderboard", "Imbalance", "Launch", "Jobs", "Run detail", "Export", "Annotate", "Annotation sets",
              "Users", "Activity"],
}


def _nav(page) -> list[str]:  # noqa: ANN001
    # Each link's text is its Material icon's name, then its title.
    return [t.strip().splitlines()[-1] for t in page.locator("[data-testid='stSidebarNavLink']").all_inner_texts()]


def _last_action(name: str) -> str | None:
    from db import accounts

    log = accounts.audit_frame(actor=name)
    return None if log.empty else str(log["action"].iloc[0])


def _sign_in(page, url: str, name: str, password: str) -> None:  # noqa: ANN001
    page.goto(url)
    page.get_by_role("textbox", name="User name").fill(name)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_each_role_sees_exactly_its_pages(app_url, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    url, env, _ = app_url
    for key in ("IAD_HOME", "IAD_DATABASE_URL", "IAD_ARTIFACTS"):
        monkeypatch.setenv(key, env[key])
    from db import accounts

    for role in PAGES:
        accounts.add_user(f"{role}1", role, PASSWORD, actor="test")
    accounts.set_sign_in_required(True, actor="test")
    shot = Screenshots(tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        expect.set_options(timeout=90_000)
        for role, pages in PAGES.items():
            page = browser.new_context(viewport={"width": 1300, "height": 1000}).new_page()
            page.set_default_timeout(90_000)
            page.goto(url)
            expect(page.get_by_role("button", name="Sign in")).to_be_visible()
            settled(page)
            assert _nav(page) == [], "nothing but the sign-in form before signing in"
            if role == "viewer":
                _sign_in(page, url, "viewer1", "not the password")
                expect(page.get_by_text("wrong user name or password")).to_be_visible()
                shot(page, "17-sign-in-refused.png")
                assert accounts.users_frame().set_index("name").at["viewer1", "failed sign-ins"] == 1
            _sign_in(page, url, f"{role}1", PASSWORD)
            expect(page.get_by_text(f"Signed in as {role}1 ({role})")).to_be_visible()
            settled(page)
            assert _nav(page) == pages, (role, _nav(page))
            shot(page, f"17-signed-in-{role}.png")
            if role == "admin":
                page.locator("[data-testid='stSidebarNavLink']").filter(has_text="Activity").click()
                expect(page.get_by_role("heading", name="Activity")).to_be_visible()
                settled(page)
                grid = page.locator("[data-testid='stDataFrame']").first
                expect(grid).to_be_visible()
                shot(page, "17-activity.png")
                log = accounts.audit_frame()
                assert {("viewer1", "sign-in refused"), ("viewer1", "signed in"), ("admin1", "signed in")} <= set(
                    zip(log["actor"], log["action"], strict=True))
            # Sign out: back to the form, and the session is dead server-side.
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("button", name="Sign in")).to_be_visible()
            wait_for(lambda name=f"{role}1": _last_action(name) == "signed out", 10, f"{role}1's sign-out")
            page.context.close()
        browser.close()
