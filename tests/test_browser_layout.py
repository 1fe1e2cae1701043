"""Headless Chromium over a live system with real X-rays: a zip upload is named after the zip, every page fits a
1,280-pixel and an 800-pixel window (tables scroll in their own box, logs wrap), the viewer's single-key shortcuts
can be turned off and stay off, and no accessible name hides the visible label."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
from browser import chromium_page, log_in, wait_until
from harness import LiveSystem, WorkerFactory, wait_for
from installation import image_files, materialize

pytestmark = pytest.mark.slow

WIDTHS = (1280, 800)
# How much wider than the window the document is (0 when it fits: no sideways scrolling of the whole page).
OVERFLOW = "Math.max(document.documentElement.scrollWidth, document.body.scrollWidth) - window.innerWidth"
# The outermost elements that reach past the window's right edge, to say what made a page too wide.
OFFENDERS = """Array.from(document.querySelectorAll('main *, header *')).filter((el) => {
  const right = (e) => e.getBoundingClientRect().right;
  return right(el) > window.innerWidth + 1 && !(el.parentElement && right(el.parentElement) > window.innerWidth + 1);
}).slice(0, 5).map((el) => `${el.tagName.toLowerCase()}#${el.id}.${el.className} `
  + `${Math.round(el.getBoundingClientRect().right)}`)"""
# Controls whose aria-label does not contain the text of their visible label (WCAG 2.5.3, label in name).
HIDDEN_LABELS = """Array.from(document.querySelectorAll('[aria-label]')).flatMap((el) => {
  const name = el.getAttribute('aria-label').toLowerCase();
  const shown = Array.from(el.labels || []).map((l) => {
    const copy = l.cloneNode(true);
    copy.querySelectorAll('select, input, textarea, button').forEach((c) => c.remove());
    return copy.textContent.trim().toLowerCase().replace(/\\s+/g, ' ');
  }).filter(Boolean);
  if (['BUTTON', 'A'].includes(el.tagName) && el.textContent.trim()) shown.push(el.textContent.trim().toLowerCase());
  return shown.filter((t) => !name.includes(t)).map((t) => `${el.tagName} "${name}" shown as "${t}"`);
})"""


@pytest.fixture
def site(dataset_root: Path, tmp_path: Path) -> Path:
    """A real sample laid out as the dataset ships: site/{train,val,test}/<class>/..., 6 per class."""
    return materialize(dataset_root, tmp_path / "site", per_class=6)


def _zip(path: Path, files: dict[str, Path]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, source in files.items():
            zf.write(source, name)
    return path


def _trained_run(system: LiveSystem, site: Path, tmp_path: Path) -> int:
    """Upload `site` as a training dataset, train one short epoch on it; the finished run's id."""
    archive = _zip(tmp_path / "site.zip", {f.relative_to(site.parent).as_posix(): f for f in image_files(site)})
    url, http = system.url, system.http
    posted = http.post(f"{url}/api/datasets", files={"file": ("site.zip", archive.read_bytes(), "application/zip")},
                       data={"name": "site zip", "role": "training"}, timeout=60)
    assert posted.status_code == 201, posted.text
    dataset_id = posted.json()["id"]
    wait_for(lambda: http.get(f"{url}/api/datasets/{dataset_id}", timeout=10).json()["status"] != "validating",
             180, "the dataset to be validated")
    assert http.get(f"{url}/api/datasets/{dataset_id}", timeout=10).json()["status"] == "ready"
    started = http.post(f"{url}/api/trainings", timeout=30,
                        json={"dataset_ids": [dataset_id], "epochs": 1, "width": 8, "image_size": 64})
    assert started.status_code == 201, started.text
    run_id: int = started.json()["id"]
    wait_for(lambda: http.get(f"{url}/api/trainings/{run_id}", timeout=10).json()["final"], 300,
             "the training run to finish")
    return run_id


def test_zip_named_after_itself_pages_fit_both_widths_and_keys_can_be_turned_off(
    live_system: LiveSystem, celery_worker_proc: WorkerFactory, site: Path, tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    celery_worker_proc.start(live_system.env, queues="training")
    url = live_system.url
    run_id = _trained_run(live_system, site, tmp_path)
    dataset_id = live_system.http.get(f"{url}/api/datasets", timeout=10).json()["datasets"][0]["id"]
    versions = [m["name"] for m in live_system.http.get(f"{url}/api/models", timeout=10).json()["models"]]
    assert len(versions) >= 2, versions
    # The zip a user sends: the classes as its top folders, as an export from a PACS or a dataset site has them.
    train = site / "train"
    upload = _zip(tmp_path / "xrays12.zip", {f.relative_to(train).as_posix(): f for f in image_files(train)})
    total = len(image_files(train))

    with chromium_page() as watched:
        page = watched.page
        log_in(page, live_system)

        # Point 6: the job is named after the zip, not after "fractured/", its first folder.
        page.locator("#file-input").set_input_files(upload)
        page.locator("#submit").click()
        page.wait_for_url("**/jobs/*", timeout=60_000)
        job_path = page.url.removeprefix(url)
        expect(page.locator("#status")).to_have_text("done", timeout=240_000)
        page.wait_for_load_state("load")
        expect(page.locator("h1")).to_contain_text(f"xrays12 ({total} files)")
        page.goto(f"{url}/jobs")
        expect(page.locator("main table tbody tr").first).to_contain_text(f"xrays12 ({total} files)")
        assert not re.search(r"\bfractured \(\d+ files\)", page.locator("main").inner_text())
        page.goto(f"{url}{job_path}")
        viewer_path = page.locator("#results tbody tr a.open").first.get_attribute("href")
        assert viewer_path

        pages = {
            "upload": "/", "jobs": "/jobs", "job": job_path, "viewer": viewer_path, "models": "/models",
            "models compare": f"/models/compare?a={versions[0]}&b={versions[1]}", "training": "/training",
            "training run": f"/training/{run_id}", "datasets": "/datasets", "dataset": f"/datasets/{dataset_id}",
        }
        measured: dict[tuple[str, int], int] = {}
        hidden: dict[str, list[str]] = {}
        offenders: dict[str, list[str]] = {}
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 860})
            for name, path in pages.items():
                page.goto(f"{url}{path}")
                page.wait_for_load_state("load")
                measured[(name, width)] = page.evaluate(OVERFLOW)
                if measured[(name, width)] > 0:
                    offenders[f"{name} at {width} px"] = page.evaluate(OFFENDERS)
                hidden[name] = page.evaluate(HIDDEN_LABELS)

        # The viewer's single-key shortcuts: on by default, off with the toggle, and still off after a reload.
        page.set_viewport_size({"width": 1280, "height": 860})
        page.goto(f"{url}{viewer_path}")
        expect(page.locator("#viewer")).to_have_attribute("data-ready", "true")
        toggle, heatmap = page.locator("#keys-toggle"), page.locator("#heatmap-toggle")
        expect(toggle).to_be_checked()
        page.locator("#stage").focus()
        page.keyboard.press("h")
        expect(heatmap).to_be_checked()
        page.keyboard.press("h")
        expect(heatmap).not_to_be_checked()
        toggle.uncheck()
        page.locator("#stage").focus()
        page.keyboard.press("h")
        page.keyboard.press("c")
        expect(heatmap).not_to_be_checked()
        expect(page.locator("#review-state")).to_have_text("Not reviewed yet.")
        page.reload()
        expect(page.locator("#viewer")).to_have_attribute("data-ready", "true")
        expect(page.locator("#keys-toggle")).not_to_be_checked()
        page.locator("#stage").focus()
        page.keyboard.press("h")
        expect(heatmap).not_to_be_checked()
        assert page.evaluate("window.localStorage.getItem('viewer-shortcuts')") == "off"
        # Statuses that change on their own are announced politely.
        for selector in ("#review-state", "#heatmap-status", "#stage-note"):
            expect(page.locator(selector)).to_have_attribute("aria-live", "polite")

        # The login page, signed out.
        with page.expect_navigation(url="**/login", wait_until="commit"):  # the redirect answered, not every load
            page.locator("#logout").click()
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 860})
            page.goto(f"{url}/login")
            page.wait_for_load_state("load")
            measured[("login", width)] = page.evaluate(OVERFLOW)
        wait_until(page, "document.readyState === 'complete'", 10, "the login page")
        assert not watched.blocked and not watched.errors, (watched.blocked, watched.errors)

    print("\npage widths over the window (px):", {f"{n}@{w}": v for (n, w), v in measured.items()})
    too_wide = {f"{name} at {width} px": over for (name, width), over in measured.items() if over > 0}
    assert not too_wide, f"pages wider than the window by (px): {too_wide}; what reaches past it: {offenders}"
    assert not any(hidden.values()), hidden
