"""What the latency histograms cost: bucket counters (fracture.latency) against one row per chunk summed at scrape.

    .venv/bin/python bench/latency_scrape.py                  # 100,000 chunks on SQLite
    .venv/bin/python bench/latency_scrape.py --pg URL         # and on PostgreSQL (an empty database's URL)

A migrated database gets N chunks' timings both ways: through fracture.latency.observe_chunk (one upsert of the
chunk's bucket row and one of its images' bucket row each, committed every chunk as a worker does), and as one
row per chunk in a table of timings, the design this replaced. Then each scrape is timed: fracture.latency.families
(reads the few bucket rows), and the one query that makes the same buckets from the timings (a SUM(CASE) per bound,
a full scan). Prints the figures; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, case, func, insert, select  # noqa: E402

from fracture import latency  # noqa: E402
from fracture.db import get_engine, session_scope  # noqa: E402
from fracture.migrate import upgrade  # noqa: E402


def timed(fn: object, repeat: int = 7) -> float:
    """The median wall time of `fn()` in milliseconds."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        runs.append((time.perf_counter() - start) * 1000)
    return statistics.median(runs)


def bench(url: str, n: int, observed: int) -> dict[str, float]:
    upgrade(url)
    rng = random.Random(0)
    seconds = [rng.lognormvariate(1.5, 0.8) for _ in range(n)]
    # The bucket counters: `observed` chunks through the real code, one transaction each (a worker's cost).
    start = time.perf_counter()
    for s in seconds[:observed]:
        with session_scope(url) as session:
            latency.observe_chunk(session, s, 64, "cpu")
    per_chunk_ms = (time.perf_counter() - start) * 1000 / observed
    with session_scope(url) as session:  # the rest in one transaction: the rows end up the same
        for s in seconds[observed:]:
            latency.observe_chunk(session, s, 64, "cpu")
    with session_scope(url) as session:
        scrape_counters = timed(lambda: list(latency.families(session)))

    # The alternative: one row per chunk, bucketed by SQL at scrape time.
    meta = MetaData()
    timings = Table("bench_chunk_timings", meta, Column("id", Integer, primary_key=True),
                    Column("device", String(16)), Column("images", Integer), Column("seconds", Float))
    meta.create_all(get_engine(url))
    with session_scope(url) as session:
        for i in range(0, n, 10_000):
            session.execute(insert(timings), [{"device": "cpu", "images": 64, "seconds": s}
                                              for s in seconds[i:i + 10_000]])
    bounds = latency.CHUNK.buckets
    query = select(timings.c.device, func.count(), func.sum(timings.c.seconds),
                   *(func.sum(case((timings.c.seconds <= b, 1), else_=0)) for b in bounds)).group_by(timings.c.device)
    with session_scope(url) as session:
        scrape_rows = timed(lambda: session.execute(query).all())
    meta.drop_all(get_engine(url))
    return {"chunks": n, "observe_ms_per_chunk": round(per_chunk_ms, 3),
            "scrape_bucket_counters_ms": round(scrape_counters, 3), "scrape_per_chunk_rows_ms": round(scrape_rows, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="chunks")
    parser.add_argument("--observed", type=int, default=2_000, help="chunks observed one transaction each (timed)")
    parser.add_argument("--pg", help="an empty PostgreSQL database's URL, measured too")
    args = parser.parse_args()
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        figures["sqlite"] = bench(f"sqlite:///{tmp}/bench.sqlite", args.n, args.observed)
    if args.pg:
        figures["postgresql"] = bench(args.pg, args.n, args.observed)
    for db, f in figures.items():
        print(f"{db}: {f['chunks']} chunks; observe {f['observe_ms_per_chunk']} ms per chunk (its own commit); "
              f"scrape: bucket counters {f['scrape_bucket_counters_ms']} ms, "
              f"one row per chunk {f['scrape_per_chunk_rows_ms']} ms")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
