"""Headless Chromium on /users and /audit: an admin adds a user and sees the one-time password, the new user can log
in with it, the admin disables them (asked first), they can no longer log in, and the audit page lists both."""

from __future__ import annotations

import pytest
from browser import chromium_page, log_in
from harness import LiveSystem

pytestmark = pytest.mark.slow


def test_an_admin_creates_a_user_sees_the_password_once_disables_them_and_the_audit_lists_it(
    live_system: LiveSystem,
) -> None:
    from playwright.sync_api import Dialog, expect

    url = live_system.url
    asked: list[str] = []

    def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    with chromium_page() as watched:
        page = watched.page
        page.on("dialog", accept)
        log_in(page, live_system)
        page.locator("#nav-users").click()
        page.wait_for_url(f"{url}/users")
        page.locator("#new-username").fill("nora")
        page.locator("#create-user").click()
        expect(page.locator(".banner.ok")).to_contain_text("User nora created.")
        password = page.locator("#revealed-password").inner_text().strip()
        assert len(password) >= 20 and page.locator("#revealed-token").inner_text().startswith("frt_")
        page.goto(f"{url}/users")  # shown once: not on the page again
        expect(page.locator("#revealed")).to_have_count(0)
        expect(page.locator("#user-nora")).to_contain_text("enabled")

        # The password works for the new user's own browser (a second context: cookies of its own).
        browser = page.context.browser
        assert browser is not None
        other = browser.new_page()
        other_errors: list[str] = []
        other.on("pageerror", lambda e: other_errors.append(str(e)))
        other.goto(f"{url}/login")
        other.locator("#username").fill("nora")
        other.locator("#password").fill(password)
        other.locator("#login").click()
        other.wait_for_url(f"{url}/")
        expect(other.locator("#signed-in")).to_have_text("nora")
        expect(other.locator("#nav-users")).to_have_count(0)  # not an admin

        page.locator("#user-nora").get_by_role("button", name="Disable").click()
        expect(page.locator(".banner.ok")).to_contain_text("nora is disabled.")
        assert asked and asked[-1].startswith("Disable nora?")
        expect(page.locator("#user-nora")).to_contain_text("disabled")
        other.goto(f"{url}/jobs")  # the disabled user's session has ended
        other.wait_for_url("**/login?next=/jobs")
        assert not other_errors, other_errors

        # The admin's own row offers neither disable nor demote.
        me = page.locator(f"#user-{live_system.env['FRACTURE_TEST_USER']}")
        expect(me.get_by_role("button", name="Disable")).to_have_count(0)
        expect(me.get_by_role("button", name="Remove admin")).to_have_count(0)

        page.locator("#nav-audit").click()
        page.wait_for_url(f"{url}/audit")
        entries = page.locator("#audit tr.audit-entry")
        expect(entries.nth(0)).to_contain_text("disabled the user nora")
        expect(entries.nth(1)).to_contain_text("created the user nora")
        expect(entries.nth(0)).to_contain_text(live_system.env["FRACTURE_TEST_USER"])
        assert not watched.blocked and not watched.errors, (watched.blocked, watched.errors)
