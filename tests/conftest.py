"""Shared fixtures: real images, a tiny real checkpoint, a migrated database, redis, workers, a live system.

The code behind them lives in plain modules that tests import directly: harness.py (processes) and
installation.py (an installation's environment and database rows).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from bad_files import dataset_file
from harness import LiveSystem, RedisServer, WorkerFactory, free_port, start_web
from installation import (
    SITE_DATASET,
    dataset_candidates,
    find_dataset,
    image_files,
    materialize,
    new_installation,
    save_tiny_checkpoint,
)
from skipping import skip_if_unavailable, skip_or_fail

if TYPE_CHECKING:
    from flask.testing import FlaskClient
    from PIL.Image import Image as PILImage

    from fracture.config import Settings


# ---------------------------------------------------------------- data and model


@pytest.fixture(scope="session")
def dataset_root() -> Path:
    """The shared real dataset (`<repo>/../shared/datasets/...`, or $FRACTURE_DATASET)."""
    root = find_dataset()
    if root is None:
        looked = ", ".join(map(str, dataset_candidates()))
        skip_or_fail(f"real dataset not found (looked in {looked}; set FRACTURE_DATASET)")
    return root


@pytest.fixture(scope="session")
def site_root() -> Path:
    """The second site's shared real dataset (`<repo>/../shared/datasets/bone-fracture-roboflow-site`)."""
    if not (SITE_DATASET / "materialize").is_file():
        skip_or_fail(f"second real dataset not found at {SITE_DATASET}")
    return SITE_DATASET


@pytest.fixture(scope="session")
def sample_dir(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real sample: at most 10 files per split and class, laid out as the dataset ships (~60 files)."""
    return materialize(dataset_root, tmp_path_factory.mktemp("sample"), per_class=10)


@pytest.fixture(scope="session")
def sample_images(sample_dir: Path) -> list[Path]:
    """The files of `sample_dir`, sorted."""
    return image_files(sample_dir)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real but untrained checkpoint (width 8, 64 px): plumbing only, never assert its predictions."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def xray(sample_images: list[Path]) -> PILImage:
    """A real X-ray of the dataset, as 8-bit grayscale."""
    from PIL import Image

    path = next(p for p in sample_images if p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n")
    with Image.open(path) as im:
        return im.convert("L")


@pytest.fixture(scope="module")
def xrays(sample_images: list[Path]) -> list[PILImage]:
    """Four different real X-rays of the dataset, as 8-bit grayscale (a study's worth)."""
    from PIL import Image

    out = []
    for path in sample_images[:4]:
        with Image.open(path) as im:
            out.append(im.convert("L"))
    return out


@pytest.fixture(scope="module")
def jpeg(sample_images: list[Path]) -> bytes:
    """The bytes of a real JPEG of the dataset."""
    return next(p.read_bytes() for p in sample_images if p.read_bytes()[:3] == b"\xff\xd8\xff")


@pytest.fixture(scope="module")
def truncated_jpeg(dataset_root: Path) -> bytes:
    """`not fractured/IMG0004134.jpg` of the dataset: a real JPEG cut short."""
    data = dataset_file(dataset_root, "not fractured", "IMG0004134.jpg").read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and not data.rstrip(b"\0").endswith(b"\xff\xd9")
    return data


# ---------------------------------------------------------------- a migrated installation


@pytest.fixture
def fracture_env(tmp_path: Path, tiny_checkpoint: Path) -> dict[str, str]:
    """A full process environment for a fresh installation: migrated SQLite, tiny model active, an admin.

    The broker defaults to the embedded SQLite transport under FRACTURE_HOME; set REDIS_URL to change.
    The admin `tester`'s credentials are in FRACTURE_TEST_USER, FRACTURE_TEST_PASSWORD, FRACTURE_TEST_TOKEN.
    """
    return new_installation(tmp_path / "home", tiny_checkpoint)


@pytest.fixture
def settings(fracture_env: dict[str, str]) -> Iterator[Settings]:
    """The Settings of `fracture_env`'s installation; the pooled database engines are dropped afterwards."""
    from fracture.config import get_settings
    from fracture.db import dispose_engines

    yield get_settings(fracture_env)
    dispose_engines()


@pytest.fixture
def client(settings: Settings) -> Iterator[FlaskClient]:
    """A Flask test client of that installation, signed in as the test admin (Bearer token)."""
    from web_client import make_client

    from fracture.db import dispose_engines

    yield make_client(settings)
    dispose_engines()


# ---------------------------------------------------------------- redis and workers


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private `redis-server` on a free loopback port, no persistence; yields its URL (db 0)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    with skip_if_unavailable():
        server.start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's redis, emptied for this test."""
    import redis

    with redis.Redis.from_url(redis_server) as client:
        client.flushall()
    return redis_server


@pytest.fixture
def celery_worker_proc(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[WorkerFactory]:
    """A factory of real Celery worker processes: `.start(env, queues=..., concurrency=...) -> Proc`."""
    factory = WorkerFactory(tmp_path / "logs")
    yield factory
    factory.stop_all()
    if _call_failed(request):
        for proc in factory.started:
            print(f"\n===== {proc.name} log =====\n{proc.log_text()}")


# ---------------------------------------------------------------- a live system


@pytest.fixture
def live_system(
    fracture_env: dict[str, str], redis_url: str, celery_worker_proc: WorkerFactory, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[LiveSystem]:
    """Web (gunicorn) + real redis + one real inference worker, sharing a fresh FRACTURE_HOME."""
    env = {**fracture_env, "REDIS_URL": redis_url}
    worker = celery_worker_proc.start(env)
    port = free_port()
    web = start_web(env, port, tmp_path / "logs")
    system = LiveSystem(f"http://127.0.0.1:{port}", env, Path(env["FRACTURE_HOME"]), web, worker,
                        token=env["FRACTURE_TEST_TOKEN"])
    yield system
    system.close()
    if _call_failed(request):
        print(f"\n{system.logs()}")
    web.stop()


# ---------------------------------------------------------------- hooks


# A test that starts a server (redis-server, a PostgreSQL cluster), real worker processes or a whole live system
# is slow whatever its file says (the browser tests say so in their files): `make test-fast` (pytest -m "not slow")
# leaves it out, `make test` and CI run everything.
PROCESS_FIXTURES = frozenset({"live_system", "celery_worker_proc", "redis_server", "redis_url", "pg_server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Keep each phase's report on the test item so fixtures can print logs when the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _call_failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test body of `request` has run and failed (see pytest_runtest_makereport)."""
    report = getattr(request.node, "rep_call", None)
    return report is not None and bool(report.failed)
