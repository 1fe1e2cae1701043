"""The state of deliveries: each DICOM object of a job's results (the study's SR, a heatmap capture) for each peer.

A DICOM job, once final, is claimed for reporting exactly once (`claim_report`); its objects are stored and one
delivery row per (peer, object) recorded, then each is sent by its own task with retries. A row the peer acknowledged
is SENT and never sent again; one whose retry window ran out is FAILED with the last error, and an admin may send it
again (`resend`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fracture.models import FINAL_JOB_STATUSES, Delivery, DeliveryStatus, Job, JobSource


def claim_report(session: Session, job_id: str) -> bool:
    """Whether this caller is the one to report `job_id` (a final DICOM job not reported yet): set atomically."""
    claimed = session.execute(
        update(Job).where(Job.id == job_id, Job.source == JobSource.DICOM, Job.reported_at.is_(None),
                          Job.status.in_(FINAL_JOB_STATUSES))
        .values(reported_at=datetime.now(UTC)).execution_options(synchronize_session=False))
    return bool(getattr(claimed, "rowcount", 0))


def plan(session: Session, job_id: str, peers: Sequence[str], objects: Sequence[tuple[str, str, str]]) -> list[int]:
    """Record a queued delivery of each (kind, SOP Instance UID, storage key) to each peer; the ids to send (flushed).

    A (job, peer, object) already recorded is not recorded twice."""
    known = {(d.peer, d.sop_instance_uid) for d in session.scalars(select(Delivery).where(Delivery.job_id == job_id))}
    rows = [Delivery(job_id=job_id, peer=peer, kind=kind, sop_instance_uid=sop, storage_key=key)
            for peer in peers for kind, sop, key in objects if (peer, sop) not in known]
    session.add_all(rows)
    session.flush()
    return [row.id for row in rows]


def attempt(session: Session, delivery_id: int) -> Delivery | None:
    """Count an attempt at a delivery still to make; None when there is none (sent already, or gone)."""
    delivery = session.get(Delivery, delivery_id)
    if delivery is None or delivery.status == DeliveryStatus.SENT:
        return None
    delivery.attempts += 1
    return delivery


def sent(session: Session, delivery_id: int) -> None:
    """The peer acknowledged it (C-STORE success): never sent to that peer again."""
    session.execute(update(Delivery).where(Delivery.id == delivery_id)
                    .values(status=DeliveryStatus.SENT, sent_at=datetime.now(UTC), last_error=None))


def failed(session: Session, delivery_id: int, error: str, final: bool) -> None:
    """An attempt failed: keep why; `final` when the retry window ran out."""
    values: dict[str, object] = {"last_error": error[:2000]}
    if final:
        values["status"] = DeliveryStatus.FAILED
    session.execute(update(Delivery).where(Delivery.id == delivery_id, Delivery.status != DeliveryStatus.SENT)
                    .values(**values))


def resend(session: Session, delivery_id: int) -> Delivery:
    """An admin's "send again" of a delivery that failed (LookupError if none; ValueError if it was sent)."""
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        raise LookupError(f"there is no delivery {delivery_id}")
    if delivery.status == DeliveryStatus.SENT:
        raise ValueError(f"delivery {delivery_id} was acknowledged by {delivery.peer}: it is not sent twice")
    delivery.status = DeliveryStatus.QUEUED
    return delivery


def for_job(session: Session, job_id: str) -> list[Delivery]:
    """A job's deliveries, the report first, then by object and peer."""
    stmt = select(Delivery).where(Delivery.job_id == job_id)
    return list(session.scalars(stmt.order_by(Delivery.kind.desc(), Delivery.id)))


def never_tried(session: Session, older_than: datetime) -> list[int]:
    """Deliveries recorded before `older_than` and never attempted: their task was lost (the broker was down or
    restarted empty when they were sent)."""
    stmt = select(Delivery.id).where(Delivery.status == DeliveryStatus.QUEUED, Delivery.attempts == 0,
                                     Delivery.created_at < older_than)
    return list(session.scalars(stmt.order_by(Delivery.id)))
