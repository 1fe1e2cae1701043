"""The round trip a department sets up, on real parts: dcmtk's storescu sends a study of real X-rays to the DICOM
node under `fracture up`, a real worker classifies it, and the results come back into a real PACS (Orthanc, as
DICOM_SEND_RESULTS_TO): one SR for the study and a heatmap capture per image called fractured, read back through
Orthanc's REST API, every image referenced, the probabilities the job's, dciodvfy clean; and a PACS that is down
when the job finishes gets them once it is back."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from dicom_files import study
from harness import free_port, start_fracture_up, wait_for
from installation import register_model, save_tiny_checkpoint
from orthanc import Orthanc, running_orthanc
from PIL import Image
from pydicom import dcmread
from skipping import skip_or_fail
from sqlalchemy import select

from fracture.config import get_settings
from fracture.db import dispose_engines, session_scope
from fracture.models import Delivery, DeliveryStatus, Job, Result
from fracture.models import Image as ImageRow

pytestmark = pytest.mark.slow

SENDER, QUIET_S = "MODALITY", 2
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        skip_or_fail(f"{name} is not installed (scripts/system-deps.sh)")
    return str(exe)


def _send(env: dict[str, str], folder: Path, files: list[bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, data in enumerate(files, 1):
        paths.append(folder / f"IM{n:04d}")
        paths[-1].write_bytes(data)
    done = subprocess.run([_tool("storescu"), "-aet", SENDER, "-aec", "FRACTURE", "127.0.0.1", env["DICOM_PORT"],
                           *map(str, paths)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr


def _job_of(env: dict[str, str], study_uid: str) -> tuple[Job, dict[str, tuple[str | None, float | None]]] | None:
    with session_scope(get_settings(env).database_url) as session:
        job_id = session.scalars(select(ImageRow.job_id).where(ImageRow.study_instance_uid == study_uid)).first()
        job = session.get(Job, job_id) if job_id else None
        if job is None or job.status != "done":
            return None
        rows = session.execute(select(ImageRow.sop_instance_uid, Result.prediction, Result.probability)
                               .join(Result, Result.image_id == ImageRow.id).where(ImageRow.job_id == job.id))
        return job, {sop: (prediction, probability) for sop, prediction, probability in rows}


def _ours(orthanc: Orthanc, study_uid: str) -> dict[str, list[bytes]]:
    """The objects of the study Orthanc holds that are not the X-rays sent: SR and SC files by SOP class."""
    found: dict[str, list[bytes]] = {}
    for instance in orthanc.instances():
        tags = orthanc.tags(instance)
        if tags.get("StudyInstanceUID") == study_uid and tags.get("SOPClassUID") in (SR_CLASS, SC_CLASS):
            found.setdefault(tags["SOPClassUID"], []).append(orthanc.file(instance))
    return found


def _sr_items(ds: object) -> list[object]:
    out, stack = [], list(getattr(ds, "ContentSequence", []))
    while stack:
        item = stack.pop()
        out.append(item)
        stack.extend(getattr(item, "ContentSequence", []))
    return out


def _check_report(sr_file: bytes, sent_sops: set[str], results: dict[str, tuple[str | None, float | None]],
                  tmp_path: Path) -> None:
    ds = dcmread(io.BytesIO(sr_file))
    assert ds.VerificationFlag == "UNVERIFIED" and "unverified" in ds.SeriesDescription.lower()
    items = _sr_items(ds)
    referenced = {str(ref.ReferencedSOPInstanceUID)
                  for item in items for ref in getattr(item, "ReferencedSOPSequence", [])}
    assert sent_sops <= referenced, (sent_sops - referenced)
    probabilities = sorted(float(item.MeasuredValueSequence[0].NumericValue) for item in items
                           if getattr(item, "ValueType", "") == "NUM"
                           and item.ConceptNameCodeSequence[0].CodeMeaning == "Probability")
    assert probabilities == pytest.approx(sorted(p for _, p in results.values() if p is not None), abs=1e-6)
    path = tmp_path / "report.dcm"
    path.write_bytes(sr_file)
    checked = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (checked.stdout + checked.stderr).splitlines() if "Error" in line]
    assert not errors, errors


def _job_page_shows_the_study_and_its_deliveries(env: dict[str, str], port: int, job_id: str, count: int) -> None:
    """A real browser, as the admin: the study's line (never the patient's name) and every delivery sent."""
    from browser import chromium_page, readme_shot

    url = f"http://127.0.0.1:{port}"
    with chromium_page(width=1280, height=1000) as watched:
        page = watched.page
        page.goto(f"{url}/login")
        page.locator("#username").fill(env["FRACTURE_TEST_USER"])
        page.locator("#password").fill(env["FRACTURE_TEST_PASSWORD"])
        page.locator("#login").click()
        page.wait_for_url(f"{url}/")
        page.goto(f"{url}/jobs/{job_id}")
        assert page.locator("#sender-ae").inner_text() == SENDER
        assert page.locator("#accession").inner_text() == "RT-1"
        rows = page.locator("#deliveries tbody tr")
        assert rows.count() == count
        assert rows.locator(".status").all_text_contents() == ["sent"] * count
        assert "Doe^Jane" not in page.content()  # the patient's identifiers stay off the page by default
        shots = os.environ.get("FRACTURE_SCREENSHOTS")
        if shots:
            page.locator("#deliveries").scroll_into_view_if_needed()
            readme_shot(page, Path(shots) / "dicom-job.png", full_page=True)
    assert not watched.blocked and not watched.errors, (watched.blocked, watched.errors)


def test_a_study_from_the_modality_comes_back_into_the_pacs_as_an_sr_and_heatmap_captures(
    fracture_env: dict[str, str], xrays: list[Image.Image], tmp_path: Path,
) -> None:
    # A model that calls every image fractured (threshold 0), so the heatmap captures are made and sent too.
    register_model(fracture_env, save_tiny_checkpoint(tmp_path / "all-positive.pt", threshold=0.0))
    orthanc_port = free_port()
    env = {**fracture_env, "DICOM_PORT": str(free_port()), "DICOM_STUDY_QUIET_S": str(QUIET_S),
           "DICOM_PEERS": f"{SENDER}@127.0.0.1:104,ORTHANC@127.0.0.1:{orthanc_port}",
           "DICOM_SEND_RESULTS_TO": "ORTHANC"}
    files = study(xrays[:3], accession="RT-1")
    study_uid = files[0].study_uid
    with running_orthanc(tmp_path / "orthanc", dicom_port=orthanc_port) as orthanc:
        web_port = free_port()
        up = start_fracture_up(env, web_port, tmp_path / "logs", broker="sqlite", timeout=180)
        try:
            node_log = Path(env["FRACTURE_HOME"]) / "logs" / "dicom-node.log"
            wait_for(lambda: "listening on port" in node_log.read_text(errors="replace"), 60, "the DICOM node")
            _send(env, tmp_path / "study", [f.data for f in files])
            found = wait_for(lambda: _job_of(env, study_uid), QUIET_S + 180, "the study's job to be classified")
            job, results = found  # type: ignore[misc]
            fractured = sum(1 for prediction, _ in results.values() if prediction == "fractured")
            assert fractured == len(files), results

            def arrived() -> dict[str, list[bytes]] | None:
                got = _ours(orthanc, study_uid)
                return got if len(got.get(SR_CLASS, [])) == 1 and len(got.get(SC_CLASS, [])) == fractured else None

            objects = wait_for(arrived, 180, "the SR and the captures in Orthanc", interval=1)
            _check_report(objects[SR_CLASS][0], {f.sop_uid for f in files}, results, tmp_path)  # type: ignore[index]
            for capture in objects.get(SC_CLASS, []):  # type: ignore[union-attr]
                sc = dcmread(io.BytesIO(capture))
                assert sc.BurnedInAnnotation == "YES" and sc.StudyInstanceUID == study_uid
            def all_sent() -> list[Delivery] | None:
                # Orthanc lists an object a moment before the worker records the peer's acknowledgement.
                with session_scope(get_settings(env).database_url) as session:
                    rows = list(session.scalars(select(Delivery).where(Delivery.job_id == job.id)))
                return rows if len(rows) == 1 + fractured and all(r.status == DeliveryStatus.SENT for r in rows) \
                    else None

            wait_for(all_sent, 30, "every delivery recorded as sent")
            print(f"{len(files)} images, {fractured} called fractured: 1 SR and {fractured} captures delivered")
            _job_page_shows_the_study_and_its_deliveries(env, web_port, job.id, 1 + fractured)
        finally:
            up.stop(timeout=60, sig=signal.SIGINT)
            dispose_engines()


def _deliveries(env: dict[str, str], job_id: str) -> list[dict[str, object]]:
    import requests

    port = env["FRACTURE_WEB_PORT"]
    answer = requests.get(f"http://127.0.0.1:{port}/api/jobs/{job_id}/deliveries", timeout=10,
                          headers={"Authorization": f"Bearer {env['FRACTURE_TEST_TOKEN']}"})
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, object]] = answer.json()["deliveries"]
    return rows


def test_a_pacs_down_when_the_job_ends_gets_the_results_once_it_is_back(
    fracture_env: dict[str, str], xrays: list[Image.Image], tmp_path: Path,
) -> None:
    import requests

    register_model(fracture_env, save_tiny_checkpoint(tmp_path / "all-positive.pt", threshold=0.0))
    orthanc_dicom, orthanc_http, web_port = free_port(), free_port(), free_port()
    env = {**fracture_env, "DICOM_PORT": str(free_port()), "DICOM_STUDY_QUIET_S": str(QUIET_S),
           "DICOM_PEERS": f"{SENDER}@127.0.0.1:104,ORTHANC@127.0.0.1:{orthanc_dicom}",
           "DICOM_SEND_RESULTS_TO": "ORTHANC", "FRACTURE_WEB_PORT": str(web_port)}
    files = study(xrays[:2], accession="RT-DOWN")
    up = start_fracture_up(env, web_port, tmp_path / "logs", broker="sqlite", timeout=180)
    try:
        node_log = Path(env["FRACTURE_HOME"]) / "logs" / "dicom-node.log"
        wait_for(lambda: "listening on port" in node_log.read_text(errors="replace"), 60, "the DICOM node")
        _send(env, tmp_path / "study", [f.data for f in files])  # the PACS is down: nothing listens on its port
        job, _ = wait_for(lambda: _job_of(env, files[0].study_uid), QUIET_S + 180, "the job")  # type: ignore[misc]

        def tried() -> list[dict[str, object]] | None:
            rows = _deliveries(env, job.id)
            return rows if len(rows) == 3 and all(r["attempts"] and r["last_error"] for r in rows) else None

        failing = wait_for(tried, 120, "every delivery to fail once", interval=1)
        assert all(r["status"] == "queued" for r in failing), failing  # type: ignore[union-attr]
        with running_orthanc(tmp_path / "orthanc", dicom_port=orthanc_dicom, http_port=orthanc_http) as orthanc:
            def delivered() -> list[dict[str, object]] | None:
                rows = _deliveries(env, job.id)
                return rows if all(r["status"] == "sent" for r in rows) else None

            sent = wait_for(delivered, 240, "the deliveries after the PACS came back", interval=2)
            got = _ours(orthanc, files[0].study_uid)
            assert len(got[SR_CLASS]) == 1 and len(got[SC_CLASS]) == len(files), {k: len(v) for k, v in got.items()}
            print("attempts before the PACS was back:", [r["attempts"] for r in sent])  # type: ignore[union-attr]
            # Acknowledged: never sent twice, even when an admin asks.
            first = sent[0]["id"]  # type: ignore[index]
            again = requests.post(f"http://127.0.0.1:{web_port}/api/jobs/{job.id}/deliveries/{first}/resend",
                                  headers={"Authorization": f"Bearer {env['FRACTURE_TEST_TOKEN']}"}, timeout=10)
            assert again.status_code == 409 and "not sent twice" in again.json()["error"]
    finally:
        up.stop(timeout=60, sig=signal.SIGINT)
        dispose_engines()


# Orthanc's rule of the department: a study that stopped changing goes to the node. Our own results coming back make
# the study change again and go out again; the node keeps none of it twice (same instances) and ignores our objects.
FORWARD_STABLE_STUDIES = """
function OnStableStudy(studyId, tags, metadata)
  RestApiPost('/modalities/fracture/store', studyId)
end
"""


def _jobs_of(env: dict[str, str], study_uid: str) -> int:
    with session_scope(get_settings(env).database_url) as session:
        return len(set(session.scalars(select(ImageRow.job_id).where(ImageRow.study_instance_uid == study_uid))))


def test_orthanc_forwards_a_stable_study_to_the_node_and_the_report_arrives_back(
    fracture_env: dict[str, str], xrays: list[Image.Image], tmp_path: Path,
) -> None:
    register_model(fracture_env, save_tiny_checkpoint(tmp_path / "all-positive.pt", threshold=0.0))
    node_port, orthanc_dicom = free_port(), free_port()
    env = {**fracture_env, "DICOM_PORT": str(node_port), "DICOM_STUDY_QUIET_S": str(QUIET_S),
           "DICOM_PEERS": f"ORTHANC@127.0.0.1:{orthanc_dicom}", "DICOM_SEND_RESULTS_TO": "ORTHANC"}
    files = study(xrays[:2], accession="RT-FWD")
    up = start_fracture_up(env, free_port(), tmp_path / "logs", broker="sqlite", timeout=180)
    try:
        node_log = Path(env["FRACTURE_HOME"]) / "logs" / "dicom-node.log"
        wait_for(lambda: "listening on port" in node_log.read_text(errors="replace"), 60, "the DICOM node")
        modalities = {"fracture": ("FRACTURE", "127.0.0.1", node_port)}
        with running_orthanc(tmp_path / "orthanc", dicom_port=orthanc_dicom, modalities=modalities,
                             lua=FORWARD_STABLE_STUDIES) as orthanc:
            folder = tmp_path / "study"
            folder.mkdir()
            paths = []
            for n, made in enumerate(files, 1):
                paths.append(folder / f"IM{n}")
                paths[-1].write_bytes(made.data)
            done = subprocess.run([_tool("storescu"), "-aet", SENDER, "-aec", orthanc.aet, "127.0.0.1",
                                   str(orthanc_dicom), *map(str, paths)], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr

            def arrived() -> dict[str, list[bytes]] | None:
                got = _ours(orthanc, files[0].study_uid)
                return got if len(got.get(SR_CLASS, [])) == 1 and len(got.get(SC_CLASS, [])) == len(files) else None

            wait_for(arrived, 240, "the report back in Orthanc", interval=1)
            # The study, now holding our results, is stable again and forwarded again: still one job.
            wait_for(lambda: "ours instance from ORTHANC" in node_log.read_text(errors="replace") or None, 60,
                     "the node to see our own objects come back", interval=1)
            assert _jobs_of(env, files[0].study_uid) == 1
            assert len(_ours(orthanc, files[0].study_uid)[SR_CLASS]) == 1
    finally:
        up.stop(timeout=60, sig=signal.SIGINT)
        dispose_engines()


def test_results_go_to_a_dicomweb_peer_by_stow_rs(
    fracture_env: dict[str, str], xrays: list[Image.Image], tmp_path: Path,
) -> None:
    register_model(fracture_env, save_tiny_checkpoint(tmp_path / "all-positive.pt", threshold=0.0))
    http = free_port()
    env = {**fracture_env, "DICOM_PORT": str(free_port()), "DICOM_STUDY_QUIET_S": str(QUIET_S),
           "DICOM_PEERS": f"{SENDER}@127.0.0.1:104", "DICOMWEB_PEERS": f"PACSWEB=http://127.0.0.1:{http}/dicom-web",
           "DICOM_SEND_RESULTS_TO": "PACSWEB"}
    files = study(xrays[:2], accession="RT-WEB")
    with running_orthanc(tmp_path / "orthanc", http_port=http) as orthanc:
        up = start_fracture_up(env, free_port(), tmp_path / "logs", broker="sqlite", timeout=180)
        try:
            node_log = Path(env["FRACTURE_HOME"]) / "logs" / "dicom-node.log"
            wait_for(lambda: "listening on port" in node_log.read_text(errors="replace"), 60, "the DICOM node")
            _send(env, tmp_path / "study", [f.data for f in files])

            def arrived() -> dict[str, list[bytes]] | None:
                got = _ours(orthanc, files[0].study_uid)
                return got if len(got.get(SR_CLASS, [])) == 1 and len(got.get(SC_CLASS, [])) == len(files) else None

            objects = wait_for(arrived, 240, "the SR and captures stored by STOW-RS", interval=1)
            found = _job_of(env, files[0].study_uid)
            assert found is not None
            _check_report(objects[SR_CLASS][0], {f.sop_uid for f in files}, found[1], tmp_path)  # type: ignore[index]
        finally:
            up.stop(timeout=60, sig=signal.SIGINT)
            dispose_engines()
