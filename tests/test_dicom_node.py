"""The DICOM node as a real process, fed by dcmtk's storescu (a real, independent DICOM sender): an unknown calling
AE title is rejected, a study of real X-rays (one of them JPEG 2000) becomes exactly one job once quiet, sending it
again makes none, a node SIGKILLed right after acknowledging loses nothing, and `fracture up` runs the node beside
the rest, so that a study sent to it is classified."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dicom_files import DicomFile, study
from harness import Proc, free_port, start_fracture_up, start_proc, wait_for
from PIL import Image
from pydicom import dcmread, uid
from skipping import skip_or_fail
from sqlalchemy import select

from fracture.config import get_settings
from fracture.db import dispose_engines, session_scope
from fracture.models import Image as ImageRow
from fracture.models import Job, JobSource, ReceivedInstance, User

pytestmark = pytest.mark.slow

PEER = "PACS"
QUIET_S = 3


@pytest.fixture
def storescu() -> str:
    exe = shutil.which("storescu")
    if exe is None:
        skip_or_fail("storescu is not installed (apt-get install dcmtk; scripts/system-deps.sh)")
    return exe


@pytest.fixture
def node_env(fracture_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The installation's environment with a DICOM node on a free port that accepts only PACS."""
    yield {**fracture_env, "DICOM_PORT": str(free_port()), "DICOM_AE_TITLE": "FRACTURE",
           "DICOM_PEERS": f"{PEER}@127.0.0.1:104", "DICOM_STUDY_QUIET_S": str(QUIET_S)}
    dispose_engines()


@pytest.fixture
def start_node(
    node_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], Proc]]:
    """Start `python -m worker.dicom_node` and wait until it listens; every node started is stopped afterwards."""
    started: list[Proc] = []

    def start() -> Proc:
        proc = start_proc(f"dicom-node-{len(started) + 1}", [sys.executable, "-m", "worker.dicom_node"], node_env,
                          tmp_path / "logs")
        started.append(proc)

        def listening() -> bool:
            proc.expect_alive()
            return "listening on port" in proc.log_text()

        wait_for(listening, 60, "the DICOM node to listen")
        return proc

    yield start
    for proc in started:
        proc.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for proc in started:
            print(f"\n===== {proc.name} =====\n{proc.log_text()}")


def write_files(files: list[DicomFile], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, made in enumerate(files, start=1):
        path = folder / f"IM{n:06d}"
        path.write_bytes(made.data)
        paths.append(path)
    return paths


def send(
    storescu: str, env: dict[str, str], paths: list[Path], calling: str = PEER
) -> subprocess.CompletedProcess[str]:
    """storescu from `calling` to the node: one association, every file, each in its own transfer syntax (-xv
    proposes JPEG 2000 lossless beside the uncompressed ones, as a PACS proposes what it holds)."""
    args = [storescu, "-xv", "-aet", calling, "-aec", "FRACTURE", "127.0.0.1", env["DICOM_PORT"], *map(str, paths)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def the_study(xrays: list[Image.Image], accession: str) -> list[DicomFile]:
    """Three real X-rays of one study, the third compressed as JPEG 2000 (lossless)."""
    files = study(xrays[:2], accession=accession)
    return files + study(xrays[2:3], accession=accession, study_uid=files[0].study_uid,
                         syntax=uid.JPEG2000Lossless)


def recorded(env: dict[str, str]) -> list[ReceivedInstance]:
    with session_scope(get_settings(env).database_url) as session:
        return list(session.scalars(select(ReceivedInstance)))


def study_jobs(env: dict[str, str], study_uid: str) -> list[tuple[Job, list[ImageRow], str]]:
    """The jobs holding images of the study, each with its images and its owner's username."""
    with session_scope(get_settings(env).database_url) as session:
        ids = set(session.scalars(select(ImageRow.job_id).where(ImageRow.study_instance_uid == study_uid)))
        out = []
        for job in session.scalars(select(Job).where(Job.id.in_(ids))):
            images = list(session.scalars(select(ImageRow).where(ImageRow.job_id == job.id)))
            owner = session.get(User, job.owner_id)
            out.append((job, images, owner.username if owner else ""))
        return out


def test_an_unknown_calling_ae_title_is_rejected_and_nothing_stored(
    node_env: dict[str, str], start_node: Callable[[], Proc], storescu: str, xrays: list[Image.Image], tmp_path: Path,
) -> None:
    node = start_node()
    paths = write_files(the_study(xrays, "A-ROGUE"), tmp_path / "study")
    sent = send(storescu, node_env, paths, calling="ROGUE")
    assert sent.returncode != 0, sent.stdout + sent.stderr
    assert recorded(node_env) == []
    assert not (Path(node_env["FRACTURE_HOME"]) / "storage" / "dicom").exists()
    wait_for(lambda: "rejected an association from AE title 'ROGUE'" in node.log_text(), 10, "the rejection logged")
    assert node.alive()


def test_a_study_becomes_exactly_one_job_and_sending_it_again_makes_none(
    node_env: dict[str, str], start_node: Callable[[], Proc], storescu: str, xrays: list[Image.Image], tmp_path: Path,
) -> None:
    start_node()
    files = the_study(xrays, "A1234")
    paths = write_files(files, tmp_path / "study")
    sent = send(storescu, node_env, paths)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    rows = {r.sop_instance_uid: r for r in recorded(node_env)}
    assert set(rows) == {f.sop_uid for f in files}
    # Kept as sent: the JPEG 2000 instance in its own transfer syntax, with the file meta that says so.
    kept = Path(node_env["FRACTURE_HOME"]) / "storage" / rows[files[2].sop_uid].storage_key
    assert dcmread(kept, stop_before_pixels=True).file_meta.TransferSyntaxUID == uid.JPEG2000Lossless

    def dispatched() -> list[tuple[Job, list[ImageRow], str]] | None:
        # The job is committed first, then dispatched by id: wait for both (the dispatch records enqueued_at).
        found = study_jobs(node_env, files[0].study_uid)
        return found if found and all(job.enqueued_at is not None for job, _, _ in found) else None

    jobs = wait_for(dispatched, QUIET_S + 30, "the study's job, dispatched")
    [(job, images, owner)] = jobs  # type: ignore[misc]
    assert (job.source, job.accession_number, job.sender_ae, job.total) == (JobSource.DICOM, "A1234", PEER, 3)
    assert owner == "dicom-node"
    assert {i.sop_instance_uid for i in images} == {f.sop_uid for f in files}

    again = send(storescu, node_env, paths)
    assert again.returncode == 0, again.stdout + again.stderr
    time.sleep(QUIET_S + 2)  # past the quiet period and a pass of the loop: a second job would be there by now
    assert len(study_jobs(node_env, files[0].study_uid)) == 1
    assert len(recorded(node_env)) == 3


def test_a_node_killed_right_after_acknowledging_loses_nothing(
    node_env: dict[str, str], start_node: Callable[[], Proc], storescu: str, xrays: list[Image.Image], tmp_path: Path,
) -> None:
    node = start_node()
    files = the_study(xrays, "A-KILL")
    sent = send(storescu, node_env, write_files(files, tmp_path / "study"))
    node.kill()  # SIGKILL, well inside the quiet period: no job yet
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert study_jobs(node_env, files[0].study_uid) == []
    assert len(recorded(node_env)) == 3

    start_node()
    jobs = wait_for(lambda: study_jobs(node_env, files[0].study_uid), QUIET_S + 30, "the study's job after a restart")
    [(job, images, _owner)] = jobs  # type: ignore[misc]
    assert job.total == 3 and len(images) == 3


def test_fracture_up_runs_the_node_and_a_study_sent_to_it_is_classified(
    node_env: dict[str, str], storescu: str, xrays: list[Image.Image], tmp_path: Path,
) -> None:
    up = start_fracture_up(node_env, free_port(), tmp_path / "logs", broker="sqlite", timeout=180)
    try:
        node_log = Path(node_env["FRACTURE_HOME"]) / "logs" / "dicom-node.log"
        wait_for(lambda: "listening on port" in node_log.read_text(errors="replace"), 60, "the node under fracture up")
        files = the_study(xrays, "A-UP")
        sent = send(storescu, node_env, write_files(files, tmp_path / "study"))
        assert sent.returncode == 0, sent.stdout + sent.stderr

        def classified() -> Job | None:
            found = study_jobs(node_env, files[0].study_uid)
            return found[0][0] if found and found[0][0].status == "done" else None

        job = wait_for(classified, QUIET_S + 120, "the study's job to be classified")
        assert job.processed == 3 and job.failed == 0, job  # type: ignore[attr-defined]
    finally:
        up.stop(timeout=60, sig=signal.SIGINT)


def test_an_instance_that_cannot_be_kept_is_answered_a_failure_and_taken_when_sent_again(
    node_env: dict[str, str], start_node: Callable[[], Proc], storescu: str, xrays: list[Image.Image], tmp_path: Path,
) -> None:
    node = start_node()
    blocker = Path(node_env["FRACTURE_HOME"]) / "storage" / "dicom"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the node's folder goes: writing any instance fails")
    paths = write_files(the_study(xrays, "A-FULL")[:1], tmp_path / "study")
    sent = send(storescu, node_env, paths)
    assert sent.returncode != 0, "storescu reports the failed store (and would send the instance again)"
    assert "could not keep an instance from PACS; answered out of resources" in node.log_text()  # 0xA700
    assert recorded(node_env) == []
    assert node.alive()

    blocker.unlink()
    again = send(storescu, node_env, paths)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(recorded(node_env)) == 1
