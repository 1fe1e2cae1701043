"""The browser tests' Chromium: Debian's build driven by Playwright (`playwright install` cannot download one here),
one page that records what the Content-Security-Policy blocked and any uncaught script error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from harness import LiveSystem, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]
# True once every image of the page has arrived (thumbnails and plots load lazily).
ALL_IMAGES_LOADED = "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
# Every X-ray a page shows, and what is drawn from one: a job's thumbnails, the viewer's image and heatmap, a
# dataset's examples. The shared datasets may not be committed, nor any file derived from them but a trained model.
XRAY_IMAGES = "#xray, #heatmap, td.thumb img, .thumbs img"
XRAY_COVER = "#6b7280"


@dataclass
class Watched:
    """A page, what the CSP blocked on it (console messages) and the script errors it raised."""

    page: Page
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextmanager
def chromium_page(width: int = 1280, height: int = 860, javascript: bool = True) -> Iterator[Watched]:
    """A fresh headless Chromium with one page (scripts off if not `javascript`); fails when chromium is missing."""
    if not CHROMIUM.exists():
        pytest.fail("Debian chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            watched = Watched(browser.new_page(viewport={"width": width, "height": height},
                                               java_script_enabled=javascript))
            # Anything the Content-Security-Policy blocks shows up as a console error.
            watched.page.on("console", lambda m: watched.blocked.append(m.text)
                            if "Content Security Policy" in m.text else None)
            watched.page.on("pageerror", lambda e: watched.errors.append(str(e)))
            yield watched
        finally:
            browser.close()


def wait_until(page: Page, expression: str, timeout: float, what: str) -> None:
    """Poll a JavaScript expression until it is true. Not page.wait_for_function: its polling evaluates a string with
    eval() inside the page, which the pages' CSP (script-src 'self') forbids once the first check is false."""
    wait_for(lambda: page.evaluate(expression), timeout, what, interval=0.1)


def readme_shot(page: Page, path: str | Path, full_page: bool = False, clip: dict[str, float] | None = None) -> None:
    """A screenshot for the README with every X-ray on the page covered in grey (XRAY_IMAGES): the pages as a user
    sees them, without the datasets' images, which may not be committed."""
    page.screenshot(path=str(path), full_page=full_page, clip=clip,
                    mask=[page.locator(XRAY_IMAGES)], mask_color=XRAY_COVER)


def log_in(page: Page, system: LiveSystem) -> None:
    """Log in as the live system's test user, from the login page to the upload form."""
    page.goto(f"{system.url}/login")
    page.locator("#username").fill(system.env["FRACTURE_TEST_USER"])
    page.locator("#password").fill(system.env["FRACTURE_TEST_PASSWORD"])
    page.locator("#login").click()
    page.wait_for_url(f"{system.url}/")


def upload_dataset(page: Page, url: str, archive: Path, name: str) -> None:
    """Upload a labelled zip on the datasets page, under `name`, and land on the new dataset's page."""
    import re

    page.goto(f"{url}/datasets")
    form = page.locator("#upload-dataset-form")
    form.locator("input[name=file]").set_input_files(archive)
    form.locator("input[name=name]").fill(name)
    page.locator("#upload-dataset").click()
    page.wait_for_url(re.compile(r".*/datasets/\d+$"))
