"""Headless Chromium reads a finished job: thumbnails, the "uncertain" filter, the viewer with the heatmap the
worker computes, the next image by keyboard, a prediction marked wrong, and the review count on the job page."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser import XRAY_COVER, chromium_page, log_in, readme_shot, wait_until
from harness import LiveSystem, wait_for
from PIL import Image, ImageColor

pytestmark = pytest.mark.slow


def _finished_job(system: LiveSystem, images: list[Path]) -> str:
    files = [("files", (f"reading/{n:02d}-{p.name}", p.read_bytes(), "application/octet-stream"))
             for n, p in enumerate(images)]
    response = system.http.post(f"{system.url}/api/jobs", files=files, timeout=60)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]

    def done() -> bool:
        return bool(system.http.get(f"{system.url}/api/jobs/{job_id}", timeout=10).json()["final"])

    wait_for(done, 180, "the job to finish")
    return job_id


def _box_pixels(png: Path, box: dict[str, float]) -> set[tuple[int, ...]]:
    """The distinct colours inside an element's box (its inner part) of a screenshot."""
    x, y, w, h = (round(box[k]) for k in ("x", "y", "width", "height"))
    with Image.open(png) as im:
        inner = im.convert("RGB").crop((x + 2, y + 2, x + w - 2, y + h - 2))
        return {c for _, c in inner.getcolors(maxcolors=1 << 20) or []}


def test_read_a_job_filter_uncertain_view_heatmap_step_and_correct(
    live_system: LiveSystem, sample_images: list[Path], tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    job_id = _finished_job(live_system, sample_images[:6])
    summary = live_system.http.get(f"{live_system.url}/api/jobs/{job_id}/summary", timeout=10).json()
    threshold, margin = summary["threshold"], summary["uncertain_margin"]
    assert summary["uncertain"] >= 2, summary  # the tiny untrained model answers near its threshold
    shots = os.environ.get("FRACTURE_SCREENSHOTS")
    url = live_system.url
    with chromium_page() as watched:
        page = watched.page
        log_in(page, live_system)

        # The reading list: a thumbnail per row, served from storage.
        page.goto(f"{url}/jobs/{job_id}")
        expect(page.locator("#results tbody tr")).to_have_count(6)
        wait_until(page, "Array.from(document.querySelectorAll('td.thumb img'))"
                         ".every(i => i.complete && i.naturalWidth > 0)", 30, "the thumbnails")
        assert page.locator("td.thumb img").count() == 6
        expect(page.locator("#reviewed-count")).to_have_text("0")

        # Filter to the uncertain ones: every row listed is within the margin of the threshold.
        page.locator("#filter-uncertain").check()
        page.locator("#apply-filters").click()
        page.wait_for_url("**uncertain=1**")
        rows = page.locator("#results tbody tr")
        expect(rows).to_have_count(summary["uncertain"])
        for text in rows.locator("td.num:nth-child(5)").all_inner_texts():
            assert abs(float(text) - threshold) <= margin + 1e-3
        first_path = rows.first.locator("td.path").inner_text()

        # The viewer: the image, its place in the filtered list, the heatmap overlay from the worker.
        rows.first.locator("a.open").click()
        page.wait_for_url(f"**/jobs/{job_id}/images/**")
        expect(page.locator("#image-path")).to_have_text(first_path)
        expect(page.locator("#position")).to_have_text(f"1 of {summary['uncertain']}")
        expect(page.locator("#viewer")).to_have_attribute("data-ready", "true")
        wait_until(page, "document.getElementById('xray').naturalWidth > 0", 30, "the X-ray")
        page.locator("#heatmap-toggle").check()
        expect(page.locator("#heatmap")).to_be_visible(timeout=120_000)
        wait_until(page, "document.getElementById('heatmap').naturalWidth > 0", 30, "the heatmap")
        opacity = page.locator("#heatmap-opacity")
        opacity.fill("80")
        assert page.eval_on_selector("#heatmap", "e => e.style.opacity") == "0.8"
        page.locator("#window").fill("50")  # window/level: the filter's slope follows the slider
        assert page.eval_on_selector("#wl-r", "e => e.getAttribute('slope')") == "2"
        # A README screenshot covers the X-ray and its heatmap (the datasets' images may not be committed).
        box = page.locator("#xray").bounding_box()
        assert box is not None and box["width"] > 50 and box["height"] > 50, box
        page.screenshot(path=str(tmp_path / "plain.png"))
        readme_shot(page, tmp_path / "covered.png")
        assert len(_box_pixels(tmp_path / "plain.png", box)) > 20  # the X-ray itself: many grey levels
        assert _box_pixels(tmp_path / "covered.png", box) == {ImageColor.getrgb(XRAY_COVER)}
        if shots:
            readme_shot(page, f"{shots}/viewer.png")

        # The next image by keyboard, the overlay still on; then this prediction marked wrong.
        page.locator("#stage").focus()
        page.keyboard.press("ArrowRight")
        expect(page.locator("#position")).to_have_text(f"2 of {summary['uncertain']}")
        expect(page.locator("#viewer")).to_have_attribute("data-ready", "true")
        assert page.locator("#image-path").inner_text() != first_path
        expect(page.locator("#heatmap-toggle")).to_be_checked()
        expect(page.locator("#heatmap")).to_be_visible(timeout=120_000)
        predicted = page.locator("#prediction").inner_text()
        page.locator("#mark-wrong").click()
        expect(page.locator("#review-state")).to_contain_text("Wrong: ")
        expect(page.locator("#review-state")).to_contain_text(live_system.env["FRACTURE_TEST_USER"])
        wrong_label = page.locator("#mark-wrong").get_attribute("data-label")
        assert wrong_label and wrong_label != predicted

        # Back on the list: the review is counted; one more from the table counts without a reload.
        page.keyboard.press("Escape")
        page.wait_for_url(f"**/jobs/{job_id}?uncertain=1**")
        expect(page.locator("#reviewed-count")).to_have_text("1")
        expect(page.locator("#reviewed-wrong")).to_have_text("1")
        expect(page.locator("#results tbody tr").nth(1).locator(".review-state")).to_contain_text("wrong")
        page.locator("#results tbody tr").nth(2).locator("button.agree").click()
        expect(page.locator("#reviewed-count")).to_have_text("2")
        expect(page.locator("#results tbody tr").nth(2).locator(".review-state")).to_contain_text("correct")

        # A file that does not decode: the viewer says so, without a broken image or controls that do nothing.
        broken = live_system.http.post(f"{url}/api/jobs", timeout=60,
                                       files=[("files", ("broken.jpg", b"\xff\xd8\xff not a JPEG", "image/jpeg"))])
        broken_id = broken.json()["id"]
        wait_for(lambda: bool(live_system.http.get(f"{url}/api/jobs/{broken_id}", timeout=10).json()["final"]),
                 60, "the broken file's job to finish")
        row = live_system.http.get(f"{url}/api/jobs/{broken_id}/results", timeout=10).json()["results"][0]
        page.goto(f"{url}/jobs/{broken_id}/images/{row['image_id']}")
        expect(page.locator("#image-error")).to_have_text(row["error"])
        expect(page.locator("#stage-note")).to_have_text("This file cannot be shown as an image.")
        expect(page.locator("#display-controls")).to_be_hidden()
        expect(page.locator("#canvas")).to_be_hidden()
        assert page.locator("#review, #heatmap-controls").count() == 0
        assert watched.blocked == [] and watched.errors == []

    reviews = live_system.http.get(f"{url}/api/jobs/{job_id}/reviews", timeout=10).json()
    assert reviews["progress"]["reviewed"] == 2 and reviews["progress"]["wrong"] == 1
