"""The core of the DICOM node's intake on a real SQLite installation and real storage: instances recorded once,
quiet studies made jobs (owned by the service account, dispatched to the embedded broker), late instances a job of
their own, our own reports ignored, a CT instance given the upload's error."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from dicom_files import DicomFile, dicom_file, small, study
from PIL import Image
from pydicom import dcmread, uid
from sqlalchemy import func, select

from fracture import dicom_intake
from fracture.config import Settings
from fracture.db import session_scope
from fracture.decode import ImageError, decode
from fracture.dicom_captures import build_heatmap_capture
from fracture.dicom_intake import Received
from fracture.models import Image as ImageRow
from fracture.models import Job, JobSource, ReceivedInstance, User
from fracture.queue import make_app
from fracture.storage import Storage

LATER = timedelta(hours=1)


def receive(settings: Settings, made: DicomFile, calling_ae: str = "PACS") -> Received:
    with session_scope(settings.database_url) as session:
        return dicom_intake.receive(session, Storage(settings.storage_dir), made.data, calling_ae)


def instances(settings: Settings) -> list[ReceivedInstance]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(ReceivedInstance).order_by(ReceivedInstance.id)))


def dicom_jobs(settings: Settings) -> list[Job]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(Job).where(Job.source == JobSource.DICOM).order_by(Job.created_at)))


def test_an_instance_is_recorded_once_and_kept_on_disk(settings: Settings, xrays: list[Image.Image]) -> None:
    made = study(xrays[:1])[0]
    assert receive(settings, made) == Received.STORED
    assert receive(settings, made) == Received.DUPLICATE
    [row] = instances(settings)
    assert (row.sop_instance_uid, row.study_instance_uid, row.calling_ae) == (made.sop_uid, made.study_uid, "PACS")
    assert (row.accession_number, row.study_date, row.modality, row.job_id) == ("ACC-0001", "20261204", "DX", None)
    assert Storage(settings.storage_dir).read_bytes(row.storage_key) == made.data
    assert row.size_bytes == len(made.data) and row.storage_key.endswith(row.sha256)


def test_the_same_uid_with_other_bytes_keeps_the_first_copy(settings: Settings, xrays: list[Image.Image]) -> None:
    first = study(xrays[:1])[0]
    other = dicom_file(np.asarray(small(xrays[1])), SOPInstanceUID=first.sop_uid, StudyInstanceUID=first.study_uid)
    assert other.data != first.data
    assert receive(settings, first) == Received.STORED
    assert other.sop_uid == first.sop_uid
    assert receive(settings, other) == Received.CONFLICT
    [row] = instances(settings)
    assert Storage(settings.storage_dir).read_bytes(row.storage_key) == first.data


def test_our_own_report_is_ignored_and_garbage_refused(settings: Settings, xrays: list[Image.Image]) -> None:
    xray = dicom_file(np.asarray(small(xrays[0])))
    source = dcmread(io.BytesIO(xray.data))
    # A heatmap capture exactly as the report writer makes it (its SR is recognised by the same marks).
    capture = build_heatmap_capture(source, np.stack([source.pixel_array] * 3, axis=-1), "fracture tiny", "v1")
    buf = io.BytesIO()
    capture.save_as(buf, enforce_file_format=True)
    ours = DicomFile(buf.getvalue(), str(capture.StudyInstanceUID), str(capture.SOPInstanceUID))
    theirs = dicom_file(np.asarray(small(xrays[0])), modality="OT", SOPClassUID=uid.SecondaryCaptureImageStorage,
                        Manufacturer="ACME", SeriesDescription="scanned request form")
    assert receive(settings, ours) == Received.OURS
    assert instances(settings) == []
    assert receive(settings, theirs) == Received.STORED
    with pytest.raises(dicom_intake.NotAnInstance):
        receive(settings, DicomFile(b"\0" * 128 + b"DICM" + b"not a data set", "", ""))


def test_a_quiet_study_becomes_one_job_and_late_instances_another(
    settings: Settings, xrays: list[Image.Image]
) -> None:
    files = study(xrays[:3], accession="A1234")
    for made in files:
        assert receive(settings, made, "CR1") == Received.STORED
    app = make_app(settings)

    # Not quiet yet: nothing happens.
    assert dicom_intake.start_stable_studies(settings, app) == []
    [job_id] = dicom_intake.start_stable_studies(settings, app, now=datetime.now(UTC) + LATER)

    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.source, job.accession_number, job.study_date, job.sender_ae) == ("dicom", "A1234", "20261204",
                                                                                    "CR1")
        assert job.total == 3 and job.enqueued_at is not None, "committed, then dispatched to the broker"
        assert job.name == "DICOM A1234 from CR1 (3 files)"
        owner = session.get(User, job.owner_id)
        assert owner is not None and owner.username == settings.dicom_owner == "dicom-node" and not owner.is_admin
        images = list(session.scalars(select(ImageRow).where(ImageRow.job_id == job_id).order_by(ImageRow.seq)))
        assert [i.sop_instance_uid for i in images] == [f.sop_uid for f in files]
        assert {i.study_instance_uid for i in images} == {files[0].study_uid}
        assert all(i.patient_name is None for i in images)  # SHOW_PATIENT_IDENTIFIERS is off
    assert {row.job_id for row in instances(settings)} == {job_id}

    # The same study again: nothing new recorded, no second job.
    assert [receive(settings, made, "CR1") for made in files] == [Received.DUPLICATE] * 3
    assert dicom_intake.start_stable_studies(settings, app, now=datetime.now(UTC) + LATER) == []

    # An instance of the study that arrives after its job: a job of its own once the study is quiet again.
    late = study(xrays[3:4], accession="A1234", study_uid=files[0].study_uid)[0]
    late_ct = dicom_file(np.asarray(small(xrays[3])), modality="CT", StudyInstanceUID=files[0].study_uid)
    assert receive(settings, late, "CR1") == Received.STORED
    assert receive(settings, late_ct, "CR1") == Received.STORED
    [second] = dicom_intake.start_stable_studies(settings, app, now=datetime.now(UTC) + LATER)
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count(ImageRow.id)).where(ImageRow.job_id == second)) == 2
        ct = session.scalars(select(ImageRow).where(ImageRow.job_id == second, ImageRow.seq == 2)).one()
    assert [j.id for j in dicom_jobs(settings)] == [job_id, second]
    # The CT instance goes to the worker as any uploaded file and gets the upload's error there.
    with pytest.raises(ImageError, match="DICOM modality CT is not a radiograph"):
        decode(Storage(settings.storage_dir).path(str(ct.storage_key)), 64)


def test_a_study_waits_while_no_model_is_active(settings: Settings, xrays: list[Image.Image]) -> None:
    from fracture.models import ModelStatus, ModelVersion

    with session_scope(settings.database_url) as session:
        for version in session.scalars(select(ModelVersion)):
            version.status = ModelStatus.RETIRED
    receive(settings, study(xrays[:1])[0])
    later = datetime.now(UTC) + LATER
    assert dicom_intake.start_stable_studies(settings, make_app(settings), now=later) == []
    assert instances(settings)[0].job_id is None
    with session_scope(settings.database_url) as session:
        assert dicom_intake.stable_studies(session, settings.dicom_study_quiet_s, later) != []
