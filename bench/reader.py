"""The reader's view benchmark: what thumbnails cost end to end, and how fast a 20,000-image job's pages answer.

    .venv/bin/python bench/reader.py            # 400 images end to end (x4 each way), a 20,000-image job
    .venv/bin/python bench/reader.py --quick    # 100 images, a 5,000-image job

Rows:
- end to end through `fracture up` (its default broker, one worker), the same zip with THUMBNAILS=1 and =0, in the
  order on, off, off, on, ..., median of 4 each with the range: the ratio is the cost of the worker's thumbnails
  (target: at most 10%);
- the same decode the worker runs, with and without the thumbnail, on one core, best of 3: the thumbnail's extra
  milliseconds per image against an image's end-to-end time (the end-to-end runs on this shared VM vary by several
  percent from run to run; this row does not);
- a heatmap asked for (as the viewer does) on an idle worker, and while a 2,000-image job is being classified (its
  chunks queued before the request), with how far that job had got when the heatmap came;
- the job page, its filters and sorts, the summary, the results API and the viewer on a job of 20,000 images with
  results and reviews (made directly in the database), median of 5 requests each through the Flask app.

Prints a table; the last line is one JSON object with every figure.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from installation import new_installation  # noqa: E402  (the tests' installation helpers)
from run import MODEL, System, make_zip, real_images  # noqa: E402  (the inference benchmark's harness)


def end_to_end(workdir: Path, n: int, rounds: int = 4) -> dict[str, float]:
    """Images per second of the same n-image zip with and without thumbnails: the median of `rounds` runs each, in
    the order on, off, off, on, ... (a drift of the machine's speed falls on both), and the lowest and highest."""
    files = real_images(n, workdir)
    zipped = make_zip(files, workdir / f"reader-{n}.zip")
    one = make_zip(files[:1], workdir / "reader-one.zip")
    runs: dict[str, list[float]] = {"on": [], "off": []}
    best: dict[str, float] = {}
    for r in range(rounds):
        for mode, flag in (("on", "1"), ("off", "0"))[:: 1 if r % 2 == 0 else -1]:
            system = System(workdir, concurrency=1, extra_env={"THUMBNAILS": flag})
            try:
                system.run_job(one, 1)  # warm: the worker loads the model on its first job
                runs[mode].append(system.run_job(zipped, n).ips)
                if mode == "on":
                    stored = list((system.home / "storage" / "thumbnails").rglob("*.jpg"))
                    assert len(stored) >= n, f"{len(stored)} thumbnails for {n} images"
                    best["thumb_kb"] = sum(p.stat().st_size for p in stored) / len(stored) / 1024
            finally:
                system.stop()
    for mode, ips in runs.items():
        best[mode], best[f"{mode}_min"], best[f"{mode}_max"] = statistics.median(ips), min(ips), max(ips)
    return best


def thumbnail_extra_ms(workdir: Path, n: int) -> dict[str, float]:
    """Milliseconds of one core per image that the worker's decode takes with and without the thumbnail (the same
    decode, a larger JPEG draft, the 160-px resize and the JPEG encode), best of 3 over the same n real files: the
    thumbnail's cost without the end-to-end runs' noise."""
    import torch

    from fracture.ml.inference import Predictor

    torch.set_num_threads(1)
    predictor = Predictor.from_file(MODEL, torch.device("cpu"))
    data = [f.read_bytes() for f in real_images(n, workdir)]

    def per_image(thumbnail: bool) -> float:
        t0 = time.perf_counter()
        for d in data:
            predictor._decode(d, thumbnail)
        return (time.perf_counter() - t0) * 1000 / len(data)

    per_image(True)  # warm the caches
    return {"on_ms": min(per_image(True) for _ in range(3)), "off_ms": min(per_image(False) for _ in range(3))}


def heatmap_wait(workdir: Path, n_backlog: int, broker: str = "auto") -> dict[str, float]:
    """Seconds from asking for a heatmap to its PNG (the viewer's polling, every 0.1 s here), on an idle system and
    while an n_backlog-image job is being classified (its chunks queued ahead of the request)."""
    files = real_images(max(n_backlog, 8), workdir)
    small = make_zip(files[:8], workdir / "heatmap-small.zip")
    backlog = make_zip(files[:n_backlog], workdir / f"heatmap-backlog-{n_backlog}.zip")
    system = System(workdir, concurrency=1, broker=broker)
    try:
        system.run_job(small, 8)
        job = system.http.get(f"{system.url}/api/jobs", timeout=30).json()["jobs"][0]["id"]
        ids = [r["image_id"] for r in system.http.get(f"{system.url}/api/jobs/{job}/results", timeout=30)
               .json()["results"]]

        def wait(image_id: int) -> float:
            url = f"{system.url}/api/jobs/{job}/images/{image_id}/heatmap.png"
            t0 = time.perf_counter()
            while (code := system.http.get(url, timeout=30).status_code) == 202:
                time.sleep(0.1)
            if code != 200:
                raise RuntimeError(f"heatmap of image {image_id}: HTTP {code}")
            return time.perf_counter() - t0

        wait(ids[0])  # the first loads the network for Grad-CAM
        idle = statistics.median(wait(i) for i in ids[1:4])
        with open(backlog, "rb") as f:
            posted = system.http.post(f"{system.url}/api/jobs", timeout=600,
                                      files={"files": (backlog.name, f, "application/zip")})
        posted.raise_for_status()
        big = posted.json()["id"]
        time.sleep(2)  # the chunks are queued and the worker is busy with them
        busy = wait(ids[4])
        left = system.http.get(f"{system.url}/api/jobs/{big}", timeout=30).json()
        return {"idle_s": idle, "busy_s": busy, "backlog_done_when_served": left["processed"] / left["total"]}
    finally:
        system.stop()


def big_job(workdir: Path, n: int) -> tuple[dict[str, str], str]:
    """An installation with the release model and one finished n-image job: results, 5% reviewed, 1% errors."""
    from sqlalchemy import select

    from fracture import jobs, reviews
    from fracture.config import get_settings
    from fracture.db import session_scope
    from fracture.models import Image, Job, User
    from fracture.storage import Storage

    env = new_installation(Path(tempfile.mkdtemp(prefix="reader-", dir=workdir)) / "home", MODEL)
    settings = get_settings(env)
    rng = random.Random(0)
    with session_scope(settings.database_url) as session:
        version_id = int(env["FRACTURE_MODEL_VERSION_ID"])
        entries = [jobs.NewImage(seq=k, path=f"study-{k // 4:05d}/image-{k:06d}.png", storage_key=None)
                   for k in range(1, n + 1)]
        job = jobs.create_job(session, "bench", f"bench ({n} files)", version_id, entries)
        ids = list(session.scalars(select(Image.id).where(Image.job_id == job.id).order_by(Image.seq)))
        outcomes = []
        for image_id in ids:
            if rng.random() < 0.01:
                outcomes.append(jobs.Outcome(image_id, error="could not decode image: bench"))
                continue
            p = rng.betavariate(0.4, 0.4)
            ood = rng.expovariate(2.0)
            outcomes.append(jobs.Outcome(image_id, "fractured" if p >= 0.258 else "not fractured", p, None,
                                         ood < 1.0, ood, thumbnail_key=f"thumbnails/{job.id}/{image_id}.jpg"))
        jobs.record_outcomes(session, job.id, version_id, outcomes)
        session.flush()
        job_row = session.get(Job, job.id)
        assert job_row is not None
        reviewer = session.scalars(select(User)).first()
        storage = Storage(settings.storage_dir)
        for o in outcomes[::20]:
            if o.prediction is not None and reviewer is not None:
                reviews.set_review(session, storage, job_row, o.image_id, o.prediction, reviewer.id)
        return env, job.id


def page_timings(env: dict[str, str], job_id: str, n: int, repeats: int = 5) -> dict[str, float]:
    from web_client import make_client

    from fracture.config import get_settings

    client = make_client(get_settings(env))
    middle = client.get(f"/api/jobs/{job_id}/results?offset={n // 2}&limit=1").get_json()["results"][0]["image_id"]
    last_page = -(-n // 50)
    urls = {
        "job page 1": f"/jobs/{job_id}",
        "job page, last": f"/jobs/{job_id}?page={last_page}",
        "job page, by probability": f"/jobs/{job_id}?sort=-probability",
        "job page, uncertain": f"/jobs/{job_id}?uncertain=1&sort=probability",
        "job page, unreviewed fractured by path": f"/jobs/{job_id}?prediction=fractured&review=unreviewed&sort=path",
        "summary API": f"/api/jobs/{job_id}/summary",
        "results API, last 50": f"/api/jobs/{job_id}/results?offset={n - 50}&limit=50",
        "viewer (middle image, by probability)": f"/jobs/{job_id}/images/{middle}?sort=-probability",
    }
    out: dict[str, float] = {}
    for name, url in urls.items():
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            response = client.get(url)
            times.append(1000 * (time.perf_counter() - t))
            assert response.status_code == 200, (url, response.status_code)
        out[name] = statistics.median(times)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="100 images end to end, a 5,000-image job")
    p.add_argument("--workdir", default=None)
    a = p.parse_args()
    n_e2e, n_big, n_backlog = (100, 5000, 500) if a.quick else (400, 20_000, 2000)
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="fracture-bench-reader-"))
    workdir.mkdir(parents=True, exist_ok=True)

    fig: dict[str, float | int] = {"images_e2e": n_e2e, "images_job": n_big}
    e2e = end_to_end(workdir, n_e2e)
    decode = thumbnail_extra_ms(workdir, n_e2e)
    extra_ms = decode["on_ms"] - decode["off_ms"]
    fig.update({"decode_ms_thumbnail": decode["on_ms"], "decode_ms_no_thumbnail": decode["off_ms"],
                "thumbnail_share_of_image_time": extra_ms * e2e["off"] / 1000})
    fig.update({"e2e_ips_thumbnails": e2e["on"], "e2e_ips_no_thumbnails": e2e["off"],
                "thumbnail_cost": 1 - e2e["on"] / e2e["off"], "thumbnail_kb": e2e["thumb_kb"]})
    hm = heatmap_wait(workdir, n_backlog)
    fig.update({"heatmap_idle_s": hm["idle_s"], "heatmap_busy_s": hm["busy_s"],
                "backlog_done_when_heatmap_served": hm["backlog_done_when_served"]})
    t = time.perf_counter()
    env, job_id = big_job(workdir, n_big)
    fig["make_job_s"] = time.perf_counter() - t
    pages = page_timings(env, job_id, n_big)

    print("| row | figure | ratio |\n|---|---|---|")
    print(f"| end to end, thumbnails on ({n_e2e} images, 1 worker; median of 4, range) | {e2e['on']:.1f} img/s "
          f"({e2e['on_min']:.1f}-{e2e['on_max']:.1f}) | {e2e['on'] / e2e['off']:.3f} x off (cost "
          f"{100 * fig['thumbnail_cost']:.1f}%, target <= 10%) |")
    print(f"| end to end, thumbnails off | {e2e['off']:.1f} img/s ({e2e['off_min']:.1f}-{e2e['off_max']:.1f}) "
          "| 1.000 |")
    print(f"| worker decode per image, with / without the thumbnail (1 core) | {decode['on_ms']:.2f} / "
          f"{decode['off_ms']:.2f} ms | +{extra_ms:.2f} ms: at most {100 * fig['thumbnail_share_of_image_time']:.1f}% "
          f"of an image's end-to-end time |")
    print(f"| thumbnail size (160 px JPEG) | {e2e['thumb_kb']:.1f} KiB | |")
    print(f"| heatmap, ask to PNG, idle worker | {hm['idle_s']:.2f} s | |")
    print(f"| heatmap, ask to PNG, while a {n_backlog}-image job is classified | {hm['busy_s']:.2f} s | "
          f"{hm['busy_s'] / hm['idle_s']:.1f} x idle; that job {100 * hm['backlog_done_when_served']:.0f}% done |")
    for name, ms in pages.items():
        print(f"| {name} ({n_big} images) | {ms:.0f} ms | |")
        fig[f"ms {name}"] = ms
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in fig.items()}))


if __name__ == "__main__":
    main()
