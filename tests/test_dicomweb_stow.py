"""DICOMweb STOW-RS (`POST /dicom-web/studies`): instances stored through the same intake as the DICOM node, the
standard's answer per instance, a malformed part refused while the rest is kept, a bad token a 401 storing nothing."""

from __future__ import annotations

import uuid

from dicom_files import study
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select

from fracture.config import Settings
from fracture.db import session_scope
from fracture.models import ReceivedInstance

REFERENCED, FAILED, SOP_UID, REASON = "00081199", "00081198", "00081155", "00081197"


def multipart(parts: list[bytes]) -> tuple[bytes, str]:
    """A multipart/related body of application/dicom parts, and its Content-Type."""
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
                    for part in parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def received(settings: Settings) -> set[str]:
    with session_scope(settings.database_url) as session:
        return set(session.scalars(select(ReceivedInstance.sop_instance_uid)))


def test_stow_rs_stores_each_good_instance_and_refuses_a_malformed_part(
    client: FlaskClient, settings: Settings, xrays: list[Image.Image],
) -> None:
    files = study(xrays[:2], accession="STOW-1")
    body, content_type = multipart([files[0].data, b"\0" * 128 + b"DICM" + b"not a data set", files[1].data])
    answer = client.post("/dicom-web/studies", data=body, headers={"Content-Type": content_type})
    assert answer.status_code == 202 and answer.mimetype == "application/dicom+json", answer.data
    stored = [item[SOP_UID]["Value"][0] for item in answer.get_json()[REFERENCED]["Value"]]
    assert stored == [files[0].sop_uid, files[1].sop_uid]
    [refused] = answer.get_json()[FAILED]["Value"]
    assert refused[REASON]["Value"] == [0xC000]
    assert received(settings) == {files[0].sop_uid, files[1].sop_uid}
    again = client.post("/dicom-web/studies", data=body[:], headers={"Content-Type": content_type})
    assert again.status_code == 202 and received(settings) == {files[0].sop_uid, files[1].sop_uid}  # no second copy


def test_stow_rs_wants_a_valid_token_and_a_multipart_related_body(
    client: FlaskClient, settings: Settings, xrays: list[Image.Image],
) -> None:
    body, content_type = multipart([f.data for f in study(xrays[:1], accession="STOW-2")])
    anonymous = client.application.test_client()
    for headers in ({}, {"Authorization": "Bearer frt_not-a-token"}):
        refused = anonymous.post("/dicom-web/studies", data=body, headers={"Content-Type": content_type, **headers})
        assert refused.status_code == 401 and "error" in refused.get_json(), refused.data
    assert received(settings) == set()
    wrong = client.post("/dicom-web/studies", data=b"{}", headers={"Content-Type": "application/json"})
    assert wrong.status_code == 415 and "multipart/related" in wrong.get_json()["error"]
