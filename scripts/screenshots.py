"""Take the README's screenshots with headless Chromium: docs/screenshots/{login,upload,job,viewer,...}.png, every X-ray
on them covered (tests/browser.py readme_shot: the shared datasets may not be committed, nor files derived from them).

    .venv/bin/python scripts/screenshots.py                      # a throwaway live system (tiny untrained model)
    .venv/bin/python scripts/screenshots.py --url http://127.0.0.1:5000 --user admin --password ...
                                                                 # a running `fracture up` (real model)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from browser import ALL_IMAGES_LOADED, CHROMIUM, CHROMIUM_ARGS, readme_shot, wait_until  # noqa: E402  (the tests' Chromium)

MAX_BYTES = 400 * 1024


def dataset_root() -> Path:
    env = os.environ.get("FRACTURE_DATASET")
    return Path(env) if env else REPO.parent / "shared" / "datasets" / "bone-fracture-multiregion"


def shoot(url: str, out: Path, user: str, password: str) -> None:
    """Log in, upload a folder of 20 real images through the page, wait for the job, and capture every page."""
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "xrays"
        subprocess.run([sys.executable, str(dataset_root() / "materialize"), str(folder), "--per-class", "5",
                        "--splits", "train,val"], check=True, capture_output=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(f"{url}/login")
            readme_shot(page, out / "login.png")
            page.locator("#username").fill(user)
            page.locator("#password").fill(password)
            page.locator("#login").click()
            page.wait_for_url(f"{url}/")
            page.locator("#dir-input").set_input_files(folder)
            readme_shot(page, out / "upload.png")
            page.locator("#submit").click()
            page.wait_for_url("**/jobs/*", timeout=60_000)
            expect(page.locator("#status")).to_have_text("done", timeout=600_000)
            page.wait_for_load_state("load")
            wait_until(page, ALL_IMAGES_LOADED, 30, "the images")  # the thumbnails load lazily
            page.set_viewport_size({"width": 1280, "height": 1240})  # the summary and the first rows of the list
            readme_shot(page, out / "job.png")
            page.set_viewport_size({"width": 1280, "height": 860})
            # The viewer of the most likely fracture, with the heatmap the worker computes on request.
            page.locator("#sort").select_option("-probability")
            page.locator("#apply-filters").click()
            page.locator("#results tbody tr a.open").first.click()
            page.wait_for_url("**/images/*")
            page.locator("#heatmap-toggle").check()
            expect(page.locator("#heatmap")).to_be_visible(timeout=120_000)
            wait_until(page, "document.getElementById('heatmap').complete", 30, "the heatmap")
            readme_shot(page, out / "viewer.png")
            for name in ("jobs", "models", "training"):
                page.goto(f"{url}/{name}")
                # The model plots load lazily, those below the fold only when scrolled to: ask for all of them (a
                # full-page shot shows them), then wait until every image on the page has really arrived.
                page.evaluate("document.querySelectorAll('img[loading=lazy]').forEach(i => { i.loading = 'eager'; })")
                wait_until(page, ALL_IMAGES_LOADED, 60, "the images")
                if name == "models":  # the top of a long page: the active version and the first candidates
                    readme_shot(page, out / f"{name}.png", full_page=True,
                                clip={"x": 0, "y": 0, "width": 1280, "height": 2400})
                else:
                    readme_shot(page, out / f"{name}.png")
            browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running system to photograph (default: start a throwaway one via pytest)")
    parser.add_argument("--user", default=os.environ.get("FRACTURE_USER", "admin"), help="account for --url")
    parser.add_argument("--password", default=os.environ.get("FRACTURE_PASSWORD"),
                        help="its password (default: $FRACTURE_PASSWORD)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.url:
        if not args.password:
            parser.error("--url needs --password (or $FRACTURE_PASSWORD): the pages require a login")
        shoot(args.url.rstrip("/"), args.out, args.user, args.password)
    else:
        # The browser test starts redis, a worker and the web server, and writes its screenshots here.
        env = {**os.environ, "FRACTURE_SCREENSHOTS": str(args.out.resolve())}
        test = "tests/test_browser_upload.py"
        subprocess.run([sys.executable, "-m", "pytest", "-q", test], cwd=REPO, env=env, check=True)
    for png in sorted(args.out.glob("*.png")):
        size = png.stat().st_size
        print(f"{png.relative_to(REPO) if png.is_relative_to(REPO) else png}: {size // 1024} KB")
        if size > MAX_BYTES:
            print(f"  larger than {MAX_BYTES // 1024} KB: shrink the viewport before committing", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
