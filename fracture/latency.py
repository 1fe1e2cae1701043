"""Latency histograms that every process adds to and any web process reads: bucket counters in the database.

prometheus_client's histograms live in one process's memory (its multiprocess mode: in one folder of one host),
and the inference workers run on other machines. So an observation is one upsert of the row of the bucket it falls
in (how many, and their sum in seconds), made by whichever process saw it, in the transaction of what it measured;
/metrics (fracture.metrics) turns the few rows into cumulative buckets at scrape time, whatever the number of
chunks, and every web process answers the same.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from sqlalchemy import select
from sqlalchemy.orm import Session

from fracture.db import insert_on_conflict
from fracture.models import LatencyBucket


@dataclass(frozen=True)
class Histogram:
    """One latency histogram: its Prometheus name and help, its one label's name (or none), its buckets' bounds."""

    name: str
    help: str
    label: str | None
    buckets: tuple[float, ...]

    def bucket_of(self, seconds: float) -> str:
        """The upper bound, as Prometheus writes it, of the bucket `seconds` falls in."""
        return floatToGoString(next((b for b in self.buckets if seconds <= b), math.inf))


# A 64-image chunk takes well under a second on a GPU and tens of seconds on a few CPU cores; the bounds cover
# both, with the time limit's order of magnitude at the top.
CHUNK = Histogram("fracture_chunk_seconds", "Wall time of one inference chunk: decode, preprocess, forward, write",
                  "device", (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120))
IMAGE = Histogram("fracture_image_seconds", "Wall time per image: its chunk's time shared by the chunk's images",
                  "device", (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
JOB = Histogram("fracture_job_seconds", "Submit to final state of a job (created to finished)",
                "status", (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600))
HISTOGRAMS = (CHUNK, IMAGE, JOB)


def observe(session: Session, histogram: Histogram, seconds: float, label: str = "", weight: int = 1) -> None:
    """Count `weight` observations of `seconds` (one upsert of their bucket's row, atomic under concurrent writers);
    committed with the caller's transaction."""
    if weight <= 0:
        return
    seconds = max(0.0, seconds)
    stmt = insert_on_conflict(session, LatencyBucket).values(
        metric=histogram.name, label=label, le=histogram.bucket_of(seconds), observations=weight,
        seconds=seconds * weight)
    session.execute(stmt.on_conflict_do_update(
        index_elements=["metric", "label", "le"],
        set_={"observations": LatencyBucket.observations + stmt.excluded.observations,
              "seconds": LatencyBucket.seconds + stmt.excluded.seconds}))


def observe_chunk(session: Session, seconds: float, images: int, device: str) -> None:
    """Count one chunk of `images` that took `seconds` on `device`, and each of its images at its share."""
    observe(session, CHUNK, seconds, device)
    if images > 0:
        observe(session, IMAGE, seconds / images, device, weight=images)


def families(session: Session) -> Iterator[HistogramMetricFamily]:
    """Every histogram as a Prometheus family: cumulative buckets, count (the +Inf bucket) and sum per label value.

    A stored bound that is not one of the histogram's (its bounds changed since) counts in the next bound above it,
    so the buckets stay cumulative and the count exact.
    """
    rows = session.execute(select(LatencyBucket.metric, LatencyBucket.label, LatencyBucket.le,
                                  LatencyBucket.observations, LatencyBucket.seconds))
    stored: dict[str, dict[str, list[tuple[float, int, float]]]] = defaultdict(lambda: defaultdict(list))
    for metric, label, bound, n, total in rows:
        stored[metric][label].append((float(bound), int(n), float(total)))
    for histogram in HISTOGRAMS:
        family = HistogramMetricFamily(histogram.name, histogram.help,
                                       labels=[histogram.label] if histogram.label else None)
        series = stored.get(histogram.name, {})
        if not series and histogram.label is None:
            series = {"": []}  # an unlabelled histogram is there from the start, at zero
        for label, counts in sorted(series.items()):
            bounds = (*histogram.buckets, math.inf)
            per_bound = [0] * len(bounds)
            for upper, n, _ in counts:
                per_bound[next(i for i, b in enumerate(bounds) if upper <= b)] += n
            cumulative: list[tuple[str, float]] = []
            running = 0
            for upper_bound, n in zip(bounds, per_bound, strict=True):
                running += n
                cumulative.append((floatToGoString(upper_bound), running))
            family.add_metric([label] if histogram.label else [], cumulative, sum(t for _, _, t in counts))
        yield family
