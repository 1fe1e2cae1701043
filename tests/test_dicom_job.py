"""DICOM files through the product: a job of a zip of them through the web API and a real Celery worker (predictions
for the X-rays, a reason for each refused file, the UIDs in the JSON and the CSV, the patient's name nowhere), the
patient's identifiers only with SHOW_PATIENT_IDENTIFIERS, and `fracture classify`'s CSV."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from bad_files import make_zip
from dicom_files import (
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    UNDECODABLE_SYNTAX,
    DicomFile,
    dicom_file,
    png_bytes,
    small,
    with_syntax,
)
from flask.testing import FlaskClient
from harness import WorkerFactory, wait_for
from installation import LABELS
from PIL import Image
from pydicom import uid
from sqlalchemy import select
from web_client import make_client, post_files

from fracture.config import Settings, get_settings
from fracture.db import session_scope
from fracture.jobs import PATIENT_COLUMNS, RESULT_COLUMNS
from fracture.models import Image as ImageRow

PATIENT_VALUES = (PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE, "Doe", "Jane")


def build_study(xray: Image.Image) -> tuple[dict[str, DicomFile], dict[str, bytes], dict[str, str]]:
    """DICOM files of one real X-ray that must decode to its pixels (by name), other files, and the files that
    must be refused with (the start of) their reason."""
    image = small(xray)
    pixels = np.asarray(image)
    stored = pixels.astype(np.uint16) * 200 + 1000  # modality value 100 p + 400 with the rescale below
    good = {
        "study/dx-8bit.dcm": dicom_file(pixels),
        "study/cr-16bit-window.dcm": dicom_file(stored, modality="CR", RescaleSlope=0.5, RescaleIntercept=-100,
                                                WindowCenter=13150.5, WindowWidth=25501),
        "study/dx-monochrome1.dcm": dicom_file(255 - pixels, photometric="MONOCHROME1"),
        "study/dx-jpeg2000.dcm": dicom_file(pixels, syntax=uid.JPEG2000Lossless),
        "study/dx-rle.dcm": dicom_file(pixels, syntax=uid.RLELossless),
        "study/DICOM/IM000001": dicom_file(pixels),  # no extension: found by its preamble
        "study/bare.dcm": dicom_file(pixels, preamble=False),
    }
    j2k = dicom_file(pixels[:64, :64], syntax=uid.JPEG2000Lossless).data
    bad = {
        "study/multiframe.dcm": dicom_file(np.stack([pixels[:64, :64]] * 12)).data,
        "study/ct.dcm": dicom_file(pixels[:64, :64], modality="CT").data,
        "study/DICOM/IM000002": dicom_file(pixels[:64, :64], modality="MR").data,
        "study/undecodable.dcm": with_syntax(j2k, UNDECODABLE_SYNTAX),
        "study/notes.dcm": b"a text file named like a DICOM file",
    }
    reasons = {
        "study/multiframe.dcm": "multi-frame DICOM (12 frames) is not supported: upload single X-ray images",
        "study/ct.dcm": "DICOM modality CT is not a radiograph",
        "study/DICOM/IM000002": "DICOM modality MR is not a radiograph",
        "study/undecodable.dcm": f"DICOM transfer syntax JPEG 2000 Part 2 Multi-component Image Compression "
                                 f"(Lossless Only) ({UNDECODABLE_SYNTAX}) cannot be decoded",
        "study/notes.dcm": "not a DICOM file",
    }
    return good, {"study/source.png": png_bytes(image), **bad}, reasons


def _csv(client: FlaskClient, job_id: str) -> tuple[str, list[dict[str, str]]]:
    response = client.get(f"/api/jobs/{job_id}/results.csv")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    return text, list(csv.DictReader(io.StringIO(text)))


def _json(client: FlaskClient, job_id: str) -> tuple[str, list[dict[str, object]]]:
    response = client.get(f"/api/jobs/{job_id}/results")
    assert response.status_code == 200
    return response.get_data(as_text=True), list(response.get_json()["results"])


def test_a_zip_of_dicom_files_through_the_api_and_a_real_worker(
    fracture_env: dict[str, str], settings: Settings, client: FlaskClient, celery_worker_proc: WorkerFactory,
    xray: Image.Image,
) -> None:
    good, others, reasons = build_study(xray)
    worker = celery_worker_proc.start(fracture_env)
    archive = make_zip([(name, f.data) for name, f in good.items()] + list(others.items()))
    loose = good["study/dx-8bit.dcm"]
    response = post_files(client, [(archive, "study.zip"), (loose.data, "loose.dcm")])
    assert response.status_code == 201, response.get_json()
    job_id = response.get_json()["id"]

    def finished() -> dict[str, object] | None:
        job = client.get(f"/api/jobs/{job_id}").get_json()
        return job if job["final"] else None

    job = wait_for(finished, 120, "the DICOM job to finish")
    assert job["status"] == "done", job  # type: ignore[index]
    assert worker.alive(), worker.log_text()

    text, rows = _json(client, job_id)
    by_path = {str(r["path"]): r for r in rows}
    assert set(by_path) == {*good, *others, "loose.dcm"}
    # Every DICOM file of the X-ray decodes to its pixels: the model gives each the probability of its PNG.
    source = by_path["study/source.png"]
    assert source["prediction"] in LABELS and source["error"] is None
    assert source["study_instance_uid"] is None and source["sop_instance_uid"] is None
    for name, made in [*good.items(), ("loose.dcm", loose)]:
        row = by_path[name]
        assert row["error"] is None and row["prediction"] == source["prediction"], row
        assert row["probability"] == pytest.approx(source["probability"], abs=1e-4), row
        assert (row["study_instance_uid"], row["sop_instance_uid"]) == (made.study_uid, made.sop_uid), row
    for name, reason in reasons.items():
        assert str(by_path[name]["error"]).startswith(reason), by_path[name]
        assert by_path[name]["prediction"] is None
    assert job["failed"] == len(reasons)  # type: ignore[index]

    csv_text, table = _csv(client, job_id)
    assert list(table[0]) == list(RESULT_COLUMNS)
    for line in table:
        row = by_path[line["path"]]
        assert line["study_instance_uid"] == (row["study_instance_uid"] or "")
        assert line["sop_instance_uid"] == (row["sop_instance_uid"] or "")
        assert line["error"] == (row["error"] or "")

    # The patient's identifiers are in no answer, no CSV, no page, and not even in the database.
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    listing = client.get("/jobs").get_data(as_text=True)
    for shown in (text, csv_text, page, listing):
        for value in PATIENT_VALUES:
            assert value not in shown
    assert not any(key in row for row in rows for key in PATIENT_COLUMNS)
    with session_scope(settings.database_url) as session:
        stored = session.execute(
            select(ImageRow.patient_name, ImageRow.patient_id, ImageRow.patient_birth_date)
            .where(ImageRow.job_id == job_id)
        ).all()
    assert stored and all(values == (None, None, None) for values in stored)


def test_patient_identifiers_only_while_the_setting_shows_them(
    fracture_env: dict[str, str], settings: Settings, xray: Image.Image,
) -> None:
    """No worker: the rows exist from the upload on, with what the header gave."""
    made = dicom_file(np.asarray(small(xray, 96)))
    showing = get_settings({**fracture_env, "SHOW_PATIENT_IDENTIFIERS": "1"})
    assert showing.show_patient_identifiers and not settings.show_patient_identifiers
    shown, hidden = make_client(showing), make_client(settings)

    allowed = post_files(shown, [(made.data, "scan.dcm")]).get_json()["id"]
    _, rows = _json(shown, allowed)
    assert (rows[0]["patient_name"], rows[0]["patient_id"], rows[0]["patient_birth_date"]) == (
        PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE)
    assert rows[0]["sop_instance_uid"] == made.sop_uid
    _, table = _csv(shown, allowed)
    assert list(table[0]) == [*RESULT_COLUMNS, *PATIENT_COLUMNS]
    assert (table[0]["patient_name"], table[0]["patient_id"], table[0]["patient_birth_date"]) == (
        PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE)

    # Once the setting is off, what was stored while it was on is not shown either.
    text, rows = _json(hidden, allowed)
    csv_text, table = _csv(hidden, allowed)
    assert list(table[0]) == list(RESULT_COLUMNS) and rows[0]["sop_instance_uid"] == made.sop_uid
    for value in PATIENT_VALUES:
        assert value not in text and value not in csv_text

    # Uploaded while it is off, nothing is stored: turning it on later shows empty columns.
    refused = post_files(hidden, [(made.data, "scan.dcm")]).get_json()["id"]
    _, rows = _json(shown, refused)
    assert rows[0]["patient_name"] is None and rows[0]["study_instance_uid"] == made.study_uid


def test_fracture_classify_writes_the_uids_and_the_patient_only_with_the_setting(
    tmp_path: Path, tiny_checkpoint: Path, xray: Image.Image,
) -> None:
    from launcher.classify import classify_files

    pixels = np.asarray(small(xray, 96))
    folder = tmp_path / "in"
    (folder / "DICOM").mkdir(parents=True)
    loose = dicom_file(pixels)
    (folder / "DICOM" / "IM000001").write_bytes(loose.data)
    (folder / "ct.dcm").write_bytes(dicom_file(pixels, modality="CT").data)
    (folder / "source.png").write_bytes(png_bytes(Image.fromarray(pixels)))
    member = dicom_file(pixels, syntax=uid.RLELossless)
    (folder / "series.zip").write_bytes(make_zip([("IM000003.dcm", member.data)]))
    settings = get_settings({"FRACTURE_HOME": str(tmp_path / "home")})

    out = tmp_path / "results.csv"
    files, errors, _ = classify_files([folder], out, tiny_checkpoint, "tiny", settings)
    text = out.read_text()
    rows = {r["path"]: r for r in csv.DictReader(io.StringIO(text))}
    assert (files, errors) == (4, 1)
    assert list(next(iter(rows.values()))) == list(RESULT_COLUMNS)
    source, dicom_row = rows["in/source.png"], rows["in/DICOM/IM000001"]
    assert source["study_instance_uid"] == source["sop_instance_uid"] == ""
    assert (dicom_row["study_instance_uid"], dicom_row["sop_instance_uid"]) == (loose.study_uid, loose.sop_uid)
    assert dicom_row["probability"] == source["probability"] and dicom_row["error"] == ""
    zipped = rows["in/series.zip/IM000003.dcm"]
    assert zipped["sop_instance_uid"] == member.sop_uid and zipped["probability"] == source["probability"]
    assert rows["in/ct.dcm"]["error"].startswith("DICOM modality CT is not a radiograph")
    for value in PATIENT_VALUES:
        assert value not in text

    shown = dataclasses.replace(settings, show_patient_identifiers=True)
    classify_files([folder], out, tiny_checkpoint, "tiny", shown)
    rows = {r["path"]: r for r in csv.DictReader(io.StringIO(out.read_text()))}
    assert list(next(iter(rows.values()))) == [*RESULT_COLUMNS, *PATIENT_COLUMNS]
    assert rows["in/DICOM/IM000001"]["patient_name"] == PATIENT_NAME
    assert rows["in/series.zip/IM000003.dcm"]["patient_id"] == PATIENT_ID
    assert rows["in/source.png"]["patient_name"] == ""
