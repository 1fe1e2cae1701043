"""The one "broker is down" path (fracture.queue): BrokerUnavailable, broker_errors and send_or_mark, against a
real Celery app whose redis URL has nothing listening, and a real installation's SQLite database."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import free_port
from installation import create_job

from fracture import datasets, queue
from fracture.config import get_settings
from fracture.db import session_scope
from fracture.jobs import BROKER_DOWN_MESSAGE
from fracture.models import Dataset, DatasetStatus, Job


@pytest.fixture
def down_env(fracture_env: dict[str, str]) -> dict[str, str]:
    return {**fracture_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens there


def test_every_sender_raises_the_one_exception(down_env: dict[str, str]) -> None:
    app = queue.make_app(get_settings(down_env))
    for send in (lambda: queue.send_retrain(app, 1), lambda: queue.send_trainer_task(app, queue.EVALUATE_TASK, 1),
                 lambda: queue.send_heatmap(app, "job", 1, 1)):
        with pytest.raises(queue.BrokerUnavailable, match="broker is not reachable"):
            send()


def test_dispatch_job_marks_the_job_not_dispatched(down_env: dict[str, str], sample_images: list[Path]) -> None:
    settings = get_settings(down_env)
    job_id = create_job(down_env, sample_images[:2])
    with pytest.raises(queue.BrokerUnavailable):
        queue.dispatch_job(queue.make_app(settings), settings, job_id)
    with session_scope(settings.database_url) as session:
        job = session.get_one(Job, job_id)
        assert job.error == BROKER_DOWN_MESSAGE and job.enqueued_at is None


def test_send_or_mark_records_the_row_and_carries_it(down_env: dict[str, str], tmp_path: Path) -> None:
    settings = get_settings(down_env)
    app = queue.make_app(settings)
    with session_scope(settings.database_url) as session:
        dataset = datasets.create_dataset(session, "d", None, datasets.DatasetSource.FOLDER, tmp_path, None)
        dataset_id = dataset.id

    def mark_unsent() -> None:
        with session_scope(settings.database_url) as session:
            datasets.mark_invalid(session, dataset_id, datasets.BROKER_DOWN)

    with pytest.raises(queue.BrokerUnavailable) as raised:
        queue.send_or_mark(lambda: queue.send_trainer_task(app, queue.VALIDATE_DATASET_TASK, dataset_id),
                           mark_unsent, subject=dataset, message="not validated: the queue is down")
    assert raised.value.subject is dataset and str(raised.value) == "not validated: the queue is down"
    with session_scope(settings.database_url) as session:
        row = session.get_one(Dataset, dataset_id)
        assert row.status == DatasetStatus.INVALID and row.error == datasets.BROKER_DOWN


def test_send_or_mark_leaves_the_row_alone_when_sent() -> None:
    marked: list[bool] = []
    queue.send_or_mark(lambda: None, lambda: marked.append(True))
    assert marked == []


def test_fracture_up_with_the_broker_down_leaves_its_dataset_invalid(down_env: dict[str, str], tmp_path: Path) -> None:
    from launcher.supervisor import register_dataset_dir

    folder = tmp_path / "operator"
    (folder / "fractured").mkdir(parents=True)
    settings = get_settings({**down_env, "FRACTURE_DATASET": str(folder)})
    dataset_id = register_dataset_dir(settings, lambda _line: None)
    assert dataset_id is not None
    with session_scope(settings.database_url) as session:
        row = session.get_one(Dataset, dataset_id)
        assert row.status == DatasetStatus.INVALID and row.error == datasets.BROKER_DOWN
