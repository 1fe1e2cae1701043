"""The state of heatmaps: the only code that writes Heatmap rows (asked for, done, failed) and their stored PNGs.

A heatmap belongs to one image under the job's pinned model version. The web asks for one (the first request sends
the task, to the interactive queue), the worker marks it done or failed; a request that was lost (its task never ran)
or failed a while ago is sent again on the next ask, so nothing stays pending for ever. One asked for in bulk
(HEATMAPS_ABOVE_THRESHOLD: queued behind the chunks) is sent once more, interactively, when a person asks for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from fracture.db import insert_on_conflict
from fracture.models import Heatmap, HeatmapStatus, Image, Job, Result
from fracture.storage import Storage

# A pending request older than this was lost (a worker died, the broker restarted): the next ask sends it again.
# On the interactive queue a request waits for one chunk at most, so after a minute it is lost; one asked for in
# bulk waits behind whole jobs. A failure is shown for 5 minutes before the next ask tries again (a restarted
# worker may succeed).
RESEND_AFTER = timedelta(minutes=5)
RESEND_INTERACTIVE_AFTER = timedelta(minutes=1)
# How the stored PNGs are drawn, in their storage key: a change of the drawing (as from maps scaled to their own maximum
# to one absolute scale, "abs1") makes the ones stored before it out of date, and the next ask makes them again.
RENDERING = "abs1"


class HeatmapRefused(ValueError):
    """No heatmap can be made for this image now; `final` when it never can (its classification is an error)."""

    def __init__(self, message: str, final: bool) -> None:
        super().__init__(message)
        self.final = final


@dataclass(frozen=True)
class Requested:
    """A heatmap row after a request, and whether its task must be sent now."""

    heatmap: Heatmap
    send: bool


def storage_key(job_id: str, image_id: int, version_id: int) -> str:
    """Where the overlay (RGBA, the image's aspect) is stored."""
    return f"heatmaps/{job_id}/{image_id}-{version_id}-{RENDERING}.png"


def is_stored(heatmap: Heatmap, storage: Storage) -> bool:
    """Whether a heatmap is done, drawn the current way, and its file still there."""
    key = heatmap.storage_key
    return heatmap.status == HeatmapStatus.DONE and key is not None \
        and key == storage_key(heatmap.job_id, heatmap.image_id, heatmap.model_version_id) and storage.exists(key)


def composite_key(key: str) -> str:
    """Where the download (the image with its overlay drawn on) is stored, beside the overlay."""
    return key.removesuffix(".png") + "-composite.png"


def find(session: Session, image_id: int, version_id: int) -> Heatmap | None:
    """The heatmap row of `image_id` under `version_id`, if one was ever asked for."""
    return session.scalars(
        select(Heatmap).where(Heatmap.image_id == image_id, Heatmap.model_version_id == version_id)
    ).first()


def check_classified(session: Session, job: Job, image_id: int) -> int:
    """The model version to explain `image_id` of `job` with; raise HeatmapRefused when it has no usable result."""
    image = session.get(Image, image_id)
    if image is None or image.job_id != job.id:
        raise LookupError(f"no image {image_id} in job {job.id}")
    if job.model_version_id is None:
        raise HeatmapRefused("the job has no model version", final=True)
    result = session.scalars(
        select(Result).where(Result.image_id == image_id, Result.model_version_id == job.model_version_id)
    ).first()
    if result is None:
        if image.ingest_error:
            raise HeatmapRefused(f"the image could not be classified: {image.ingest_error}", final=True)
        raise HeatmapRefused("the image is not classified yet; ask again when it is", final=False)
    if result.error is not None:
        raise HeatmapRefused(f"the image could not be classified: {result.error}", final=True)
    return job.model_version_id


def request(session: Session, job: Job, image_id: int, storage: Storage, now: datetime | None = None) -> Requested:
    """Get or create the heatmap of `image_id` under the job's model version, as a person asks for it; say whether
    its task must be sent (to the interactive queue).

    Raises HeatmapRefused when the image has no result to explain, LookupError when it is not the job's.
    """
    version_id = check_classified(session, job, image_id)
    sent = _ensure_rows(session, job.id, version_id, [image_id], storage, now, interactive=True)
    heatmap = find(session, image_id, version_id)
    assert heatmap is not None
    return Requested(heatmap, bool(sent))


def request_many(session: Session, job_id: str, version_id: int, image_ids: Sequence[int], storage: Storage,
                 now: datetime | None = None) -> list[int]:
    """Ask in bulk for the heatmaps of `image_ids` (classified images of `job_id`); return those whose task must be
    sent (behind the chunks)."""
    return _ensure_rows(session, job_id, version_id, image_ids, storage, now, interactive=False)


def _ensure_rows(session: Session, job_id: str, version_id: int, image_ids: Sequence[int], storage: Storage,
                 now: datetime | None, interactive: bool) -> list[int]:
    now = now or datetime.now(UTC)
    if not image_ids:
        return []
    values = [{"image_id": i, "job_id": job_id, "model_version_id": version_id, "status": HeatmapStatus.PENDING,
               "requested_at": now, "interactive": interactive} for i in image_ids]
    stmt = insert_on_conflict(session, Heatmap).values(values).on_conflict_do_nothing(
        index_elements=["image_id", "model_version_id"]).returning(Heatmap.image_id)
    created = set(session.scalars(stmt).all())
    existing = session.scalars(
        select(Heatmap).where(Heatmap.model_version_id == version_id, Heatmap.image_id.in_(image_ids),
                              Heatmap.image_id.not_in(created)).with_for_update()
    ).all()
    # A bulk request still waiting behind the chunks jumps the queue once when a person asks for it.
    resend = [h for h in existing if _needs_sending(h, storage, now)
              or (interactive and h.status == HeatmapStatus.PENDING and not h.interactive)]
    for heatmap in resend:
        heatmap.status, heatmap.error, heatmap.storage_key = HeatmapStatus.PENDING, None, None
        heatmap.requested_at, heatmap.finished_at = now, None
        heatmap.interactive = heatmap.interactive or interactive
    session.flush()
    return sorted(created | {h.image_id for h in resend})


def _needs_sending(heatmap: Heatmap, storage: Storage, now: datetime) -> bool:
    if heatmap.status == HeatmapStatus.DONE:
        return not is_stored(heatmap, storage)  # its file was removed, or drawn before the current way
    if heatmap.status == HeatmapStatus.FAILED:
        stamp, after = heatmap.finished_at, RESEND_AFTER
    else:
        stamp, after = heatmap.requested_at, RESEND_INTERACTIVE_AFTER if heatmap.interactive else RESEND_AFTER
    return stamp is None or now - stamp >= after


def withdraw(session: Session, heatmap: Heatmap) -> None:
    """Forget a request whose task could not be sent (the broker was down), so that the next ask sends it."""
    if heatmap.status == HeatmapStatus.PENDING:
        session.delete(heatmap)
        session.flush()


def mark_done(session: Session, storage: Storage, job_id: str, image_id: int, version_id: int,
              overlay_png: bytes, composite_png: bytes) -> Heatmap:
    """Store the overlay and the composite of a computed heatmap and record it done (a repeat overwrites both)."""
    key = storage_key(job_id, image_id, version_id)
    storage.write_bytes(composite_key(key), composite_png)
    storage.write_bytes(key, overlay_png)  # last: a done row's files are both there
    return _finish(session, job_id, image_id, version_id, HeatmapStatus.DONE, key=key)


def mark_failed(session: Session, job_id: str, image_id: int, version_id: int, reason: str) -> Heatmap:
    """Record why the heatmap of `image_id` could not be made; the reason is shown to whoever asks for it."""
    return _finish(session, job_id, image_id, version_id, HeatmapStatus.FAILED, error=reason)


def _finish(session: Session, job_id: str, image_id: int, version_id: int, status: HeatmapStatus,
            key: str | None = None, error: str | None = None) -> Heatmap:
    heatmap = find(session, image_id, version_id)
    if heatmap is None:  # computed without a request (a task sent by hand): record it all the same
        heatmap = Heatmap(image_id=image_id, job_id=job_id, model_version_id=version_id)
        session.add(heatmap)
    heatmap.status, heatmap.storage_key, heatmap.error = status, key, error
    heatmap.finished_at = datetime.now(UTC)
    session.flush()
    return heatmap


def positive_images(session: Session, job_id: str, version_id: int, image_ids: Sequence[int],
                    positive_class: str) -> list[int]:
    """Those of `image_ids` whose result under `version_id` is the positive class (above the threshold)."""
    return sorted(session.scalars(
        select(Result.image_id).where(Result.job_id == job_id, Result.model_version_id == version_id,
                                      Result.image_id.in_(image_ids), Result.prediction == positive_class)
    ).all())
