"""A DICOM job's results back to the PACS: build the study's SR and the heatmap captures of the images called
fractured, store them, record one delivery per peer and object; then deliver one by C-STORE. Plain code the tasks
call."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import and_, select

from fracture import deliveries, heatmaps
from fracture.config import DicomPeer, Settings
from fracture.db import session_scope
from fracture.dicom_captures import build_heatmap_capture
from fracture.dicom_reports import ImageFinding, build_report
from fracture.models import Heatmap, HeatmapStatus, Image, Job, ModelVersion, Result
from fracture.storage import Storage
from worker.heatmaps import make_heatmap

log = logging.getLogger(__name__)
REPORT, HEATMAP = "report", "heatmap"


class DeliveryError(RuntimeError):
    """An attempt to send an object failed; the task tries again within its retry window."""


@dataclass(frozen=True)
class _Row:
    image_id: int
    storage_key: str | None
    prediction: str | None
    probability: float | None
    in_distribution: bool | None
    ood_score: float | None
    error: str | None


def _rows(settings: Settings, job_id: str) -> tuple[Job, ModelVersion, list[_Row]] | None:
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        version = session.get(ModelVersion, job.model_version_id) if job and job.model_version_id else None
        if job is None or version is None:
            return None
        stmt = (select(Image, Result).outerjoin(Result, and_(Result.image_id == Image.id,
                                                             Result.model_version_id == job.model_version_id))
                .where(Image.job_id == job_id).order_by(Image.seq))
        rows = [_Row(image.id, image.storage_key, result.prediction if result else None,
                     result.probability if result else None, result.in_distribution if result else None,
                     result.ood_score if result else None, (result.error if result else None) or image.ingest_error)
                for image, result in session.execute(stmt)]
        session.expunge_all()
        return job, version, rows


def _dicom(storage: Storage, key: str | None, pixels: bool = False) -> Any:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    if not key:
        return None
    try:
        with storage.open(key) as f:
            return dcmread(f, stop_before_pixels=not pixels)
    except (InvalidDicomError, OSError):
        return None  # not a DICOM file (an upload's image): not part of a study's report


def _uid(*parts: object) -> str:
    """A UID derived from `parts`: an object made again (a task run twice) keeps its UID, so it is delivered once."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _with_uid(ds: Any, sop_uid: str) -> Any:
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    return ds


def _inputs(settings: Settings, job_id: str) -> tuple[ModelVersion, list[_Row], dict[int, Any], Storage] | None:
    loaded = _rows(settings, job_id)
    if loaded is None:
        return None
    _, version, rows = loaded
    storage = Storage(settings.storage_dir)
    sources = {row.image_id: header for row in rows if (header := _dicom(storage, row.storage_key)) is not None}
    return version, rows, sources, storage


def build_report_object(settings: Settings, job_id: str) -> tuple[str, str, str] | None:
    """Build and store the study's SR: (kind, SOP Instance UID, storage key), or None for a job with no DICOM input."""
    inputs = _inputs(settings, job_id)
    if inputs is None or not inputs[2]:
        return None
    version, rows, sources, storage = inputs
    findings = [ImageFinding(sources[r.image_id], r.prediction, r.probability, r.in_distribution, r.ood_score, r.error)
                for r in rows if r.image_id in sources]
    report = build_report(findings, f"fracture {version.arch}", version.name, float(version.threshold or 0.5),
                          series_uid=_uid(job_id, "report series"))
    report = _with_uid(report, _uid(job_id, "report"))
    return REPORT, str(report.SOPInstanceUID), _store(storage, job_id, report)


def build_captures(settings: Settings, job_id: str) -> Iterator[tuple[str, str, str]]:
    """Build and store a heatmap capture of each image called fractured, one by one (yielded as each is stored)."""
    inputs = _inputs(settings, job_id)
    if inputs is None or not settings.dicom_send_heatmaps:
        return
    version, rows, sources, storage = inputs
    positive = (version.classes or ["fractured"])[0]
    called = [r for r in rows if r.prediction == positive and r.image_id in sources]
    for number, row in enumerate(called, 1):
        rgb = _composite(settings, storage, job_id, row.image_id, version.id)
        if rgb is None:
            continue
        capture = build_heatmap_capture(sources[row.image_id], rgb, f"fracture {version.arch}", version.name,
                                        series_uid=_uid(job_id, "capture series"), instance_number=number)
        capture = _with_uid(capture, _uid(job_id, row.image_id, "capture"))
        yield HEATMAP, str(capture.SOPInstanceUID), _store(storage, job_id, capture)


def _composite(settings: Settings, storage: Storage, job_id: str, image_id: int, version_id: int) -> np.ndarray | None:
    """The image with its heatmap drawn on (computed here if it was not yet), RGB; None when it cannot be made."""
    outcome = make_heatmap(settings, job_id, image_id, version_id)
    with session_scope(settings.database_url) as session:
        row = session.scalars(select(Heatmap).where(Heatmap.image_id == image_id,
                                                    Heatmap.model_version_id == version_id)).first()
        key = row.storage_key if row is not None and row.status == HeatmapStatus.DONE else None
    if key is None:
        log.warning("job %s image %d: no heatmap capture (%s)", job_id, image_id, outcome)
        return None
    data = storage.read_bytes(heatmaps.composite_key(key))
    return np.asarray(PILImage.open(io.BytesIO(data)).convert("RGB"))


def _store(storage: Storage, job_id: str, ds: Any) -> str:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    key = f"reports/{job_id}/{ds.SOPInstanceUID}.dcm"
    storage.write_bytes(key, buf.getvalue())
    return key


def report_job(settings: Settings, job_id: str, send: Callable[[int], None]) -> bool:
    """Report a final DICOM job once (the first caller claims it): store its SR, record a delivery of it to each
    DICOM_SEND_RESULTS_TO peer and `send` those; True when claimed (the captures are to be made next)."""
    peers = list(settings.dicom_send_results_to)
    if not peers:
        return False
    with session_scope(settings.database_url) as session:
        if not deliveries.claim_report(session, job_id):
            return False
    made = build_report_object(settings, job_id)
    if made is not None:
        _plan_and_send(settings, job_id, [made], send)
    return True


def report_captures(settings: Settings, job_id: str, send: Callable[[int], None]) -> int:
    """Make the job's heatmap captures and send each one's deliveries as soon as it is stored; how many deliveries.

    Safe to run twice: a capture made again has the same UID, and a delivery already recorded is not recorded again."""
    return sum(_plan_and_send(settings, job_id, [made], send) for made in build_captures(settings, job_id))


def _plan_and_send(settings: Settings, job_id: str, objects: list[tuple[str, str, str]],
                   send: Callable[[int], None]) -> int:
    with session_scope(settings.database_url) as session:
        ids = deliveries.plan(session, job_id, list(settings.dicom_send_results_to), objects)
    for delivery_id in ids:
        send(delivery_id)  # a send lost to a broker outage is sent again by the reaper
    return len(ids)


def _peer(settings: Settings, title: str) -> DicomPeer:
    for peer in settings.dicom_peers:
        if peer.ae_title == title:
            return peer
    raise DeliveryError(f"{title} is in neither DICOM_PEERS (AE@host:port) nor DICOMWEB_PEERS: nowhere to send to")


def deliver(settings: Settings, delivery_id: int) -> str:
    """Send one delivery, by C-STORE or (a DICOMWEB_PEERS peer) STOW-RS; "sent", "nothing to do" (sent already or
    gone), or DeliveryError to try again."""
    with session_scope(settings.database_url) as session:
        row = deliveries.attempt(session, delivery_id)
        if row is None:
            return "nothing to do"
        peer_title, key = row.peer, row.storage_key
    data = Storage(settings.storage_dir).read_bytes(key)
    web = dict(settings.dicomweb_peers).get(peer_title)
    if web is not None:
        _stow(web, data)
    else:
        _c_store(settings, _peer(settings, peer_title), data)
    with session_scope(settings.database_url) as session:
        deliveries.sent(session, delivery_id)
    return "sent"


def _c_store(settings: Settings, peer: DicomPeer, data: bytes) -> None:
    from pydicom import dcmread
    from pynetdicom import AE

    ds = dcmread(io.BytesIO(data))
    ae = AE(ae_title=settings.dicom_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise DeliveryError(f"{peer} refused or did not answer the association")
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        raise DeliveryError(f"{peer} did not answer the C-STORE (connection lost or timed out)")
    if code not in (0x0000, 0xB000, 0xB007, 0xB006):  # success, or success with a warning
        raise DeliveryError(f"{peer} answered the C-STORE with status 0x{code:04X}")


def _stow(base_url: str, data: bytes) -> None:
    """STOW-RS one instance to `base_url`/studies (PS3.18 10.5); DeliveryError unless it was stored."""
    import urllib.error
    import urllib.request
    import uuid

    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    request = urllib.request.Request(f"{base_url}/studies", data=body, method="POST", headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 (a configured http(s) URL)
            status = answer.status
    except urllib.error.HTTPError as e:
        raise DeliveryError(f"{base_url} answered the STOW-RS with HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DeliveryError(f"{base_url} did not answer the STOW-RS: {e}") from None
    if status != 200:  # 202: stored with warnings or partly; one instance a request, so not stored
        raise DeliveryError(f"{base_url} answered the STOW-RS with HTTP {status}")


def give_up(settings: Settings, delivery_id: int, error: str, final: bool) -> None:
    """Record a failed attempt (and, at the end of the retry window, the delivery as failed)."""
    with session_scope(settings.database_url) as session:
        deliveries.failed(session, delivery_id, error, final)
