"""What the pages say and announce: DICOM on the upload page, the site's icon, polite live regions for statuses
that change on their own, and accessible names that contain the visible labels."""

from __future__ import annotations

import re
from pathlib import Path

from flask.testing import FlaskClient
from installation import save_tiny_checkpoint
from web_client import make_client, post_files

from fracture.config import Settings
from fracture.db import dispose_engines, session_scope
from fracture.registry import register_checkpoint
from fracture.storage import Storage


def test_the_upload_page_names_dicom_and_its_picker_accepts_dcm(client: FlaskClient) -> None:
    html = client.get("/").get_data(as_text=True)
    assert "DICOM files (.dcm)" in html
    accept = re.search(r'id="file-input"[^>]*accept="([^"]+)"', html)
    assert accept and ".dcm" in accept.group(1).split(",") and ".zip" in accept.group(1).split(",")
    # The upload's progress and what was chosen are announced; a refusal interrupts.
    assert re.search(r'id="upload-text" aria-live="polite"', html)
    assert re.search(r'id="selection"[^>]*aria-live="polite"', html)
    assert re.search(r'id="upload-error"[^>]*role="alert"', html)


def test_the_favicon_is_served_to_anyone_and_every_page_links_one(settings: Settings, client: FlaskClient) -> None:
    anonymous = make_client(settings, as_user=None)
    try:
        icon = anonymous.get("/favicon.ico")
        assert icon.status_code == 200 and icon.mimetype == "image/vnd.microsoft.icon"
        assert icon.data[:4] == b"\x00\x00\x01\x00"  # an ICO header
        icon.close()
        login = anonymous.get("/login").get_data(as_text=True)
        link = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', login)
        assert link
        svg = anonymous.get(link.group(1))
        assert svg.status_code == 200 and svg.data.lstrip().startswith(b"<svg")
        svg.close()
    finally:
        dispose_engines()
    for page in ("/", "/jobs", "/models", "/training", "/datasets"):
        assert '<link rel="icon"' in client.get(page).get_data(as_text=True), page


def test_a_running_job_page_announces_its_progress_politely(client: FlaskClient, sample_images: list[Path]) -> None:
    job_id = post_files(client, [(p.read_bytes(), f"set/{p.name}") for p in sample_images[:2]]).get_json()["id"]
    html = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert re.search(r'id="status" aria-live="polite"', html)
    assert re.search(r'id="progress-text" aria-live="polite"', html)
    assert re.search(r'id="job-error"[^>]*role="alert"', html)
    assert re.search(r'id="ood-banner"[^>]*aria-live="polite"', html)


def test_no_control_on_the_models_page_hides_its_visible_label(client: FlaskClient, settings: Settings) -> None:
    # Two versions, so that the page offers to compare them.
    second = save_tiny_checkpoint(settings.home / "second.pt")
    with session_scope(settings.database_url) as session:
        register_checkpoint(session, Storage(settings.storage_dir), second)
    html = client.get("/models").get_data(as_text=True)
    # A <label> with visible text around a control: the control needs no aria-label, which would replace the text.
    for label in re.findall(r"<label[^>]*>(.*?)</label>", html, flags=re.S):
        control = re.search(r"<(select|input|textarea)\b[^>]*>", label)
        if control is None:
            continue
        shown = re.sub(r"<(select|textarea)\b.*?</\1>|<[^>]+>", "", label, flags=re.S).strip().lower()
        named = re.search(r'aria-label="([^"]*)"', control.group(0))
        assert named is None or shown in named.group(1).lower(), (shown, control.group(0))
    assert "Compare version <select" in html
