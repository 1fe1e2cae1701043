"""`POST /dicom-web/studies` (DICOMweb STOW-RS, PS3.18 10.5): a multipart/related body of application/dicom parts,
each kept and recorded by fracture.dicom_intake exactly as the DICOM node keeps a C-STORE; the study becomes a job
once it is quiet. Authenticated by the API token (the guard). The answer is the standard's DICOM JSON: the stored
instances under ReferencedSOPSequence, the refused ones under FailedSOPSequence with a reason."""

from __future__ import annotations

import email
import email.policy
import logging
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from fracture import dicom_intake
from web.context import db, storage

bp = Blueprint("dicomweb", __name__)
log = logging.getLogger(__name__)
CALLING = "DICOMWEB"  # what the intake records as the sender of a STOW-RS instance
# PS3.18 table 10.5.3-1 / PS3.7 C.4.2: the failure reasons a STOW-RS answer may give.
PROCESSING_FAILURE = 0x0110  # 272
CANNOT_UNDERSTAND = 0xC000  # 49152


def _parts() -> list[bytes] | None:
    """The application/dicom parts of a multipart/related body; None when the body is not one."""
    content_type = request.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/related"):
        return None
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.message_from_bytes(head + request.get_data(), policy=email.policy.HTTP)
    if not message.is_multipart():
        return None
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        parts.append(payload if isinstance(payload, bytes) else b"")
    return parts


def _sequence_item(sop_class: str, sop_uid: str, reason: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
                            "00081155": {"vr": "UI", "Value": [sop_uid]} if sop_uid else {"vr": "UI"}}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


def _answer(body: dict[str, Any], status: int) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/dicom+json"
    return response


@bp.post("/dicom-web/studies")
def store_instances() -> Response:
    """Store the body's instances: 200 when all were kept, 202 when some were refused, 409 when none was."""
    parts = _parts()
    if parts is None or not parts:
        return _answer({"error": "Send multipart/related; type=\"application/dicom\" with one DICOM file a part."},
                       415 if parts is None else 400)
    session, store = db(), storage()
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for n, data in enumerate(parts, 1):
        try:
            header = dicom_intake.read_header(data)
            dicom_intake.receive(session, store, data, CALLING)
            session.commit()  # recorded before it is answered, as the node does
        except dicom_intake.NotAnInstance as e:
            session.rollback()
            log.warning("STOW-RS part %d refused: %s", n, e)
            failed.append(_sequence_item("", "", CANNOT_UNDERSTAND))
            continue
        except Exception:  # storage or database: this part failed, the others go on
            session.rollback()
            current_app.logger.exception("STOW-RS part %d not stored", n)
            failed.append(_sequence_item(header.sop_class_uid, header.sop_instance_uid, PROCESSING_FAILURE))
            continue
        stored.append(_sequence_item(header.sop_class_uid, header.sop_instance_uid))
    body: dict[str, Any] = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    return _answer(body, 200 if not failed else (202 if stored else 409))
