"""Migrations up, down and up again on SQLite and a throwaway PostgreSQL; the data layer on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pg import pg_server, pg_url  # noqa: F401  (fixtures)
from sqlalchemy import Engine, delete, func, inspect, select

from fracture import migrate
from fracture.db import make_engine
from fracture.models import Base, Image, Job, JobStatus, ModelVersion, Result


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or a fresh database on the throwaway PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'fracture.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def engine(db_url: str):  # type: ignore[no-untyped-def]
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def revisions_base_to_head() -> list[str]:
    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def schema_diff(engine: Engine) -> list[object]:
    """What `alembic check` would report: the differences between the migrated schema and the ORM."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_upgrade_matches_models_then_downgrade_and_upgrade_again(db_url: str, engine: Engine) -> None:
    heads = revisions_base_to_head()
    orm_tables = set(Base.metadata.tables)

    migrate.upgrade(db_url)
    assert migrate.current(db_url) == heads[-1]
    assert tables(engine) == orm_tables | {"alembic_version"}
    assert schema_diff(engine) == []

    migrate.downgrade(db_url, "base")
    assert migrate.current(db_url) is None
    assert tables(engine) == {"alembic_version"}

    migrate.upgrade(db_url)
    assert migrate.current(db_url) == heads[-1]
    assert schema_diff(engine) == []


def test_each_revision_steps_up_and_down(db_url: str, engine: Engine) -> None:
    revisions = revisions_base_to_head()
    for rev in revisions:
        migrate.upgrade(db_url, rev)
        assert migrate.current(db_url) == rev
    for rev in reversed(revisions):
        assert migrate.current(db_url) == rev
        migrate.downgrade(db_url, "-1")
    assert migrate.current(db_url) is None
    assert tables(engine) == {"alembic_version"}


def test_data_layer_on_postgresql_upserts_one_result_per_image_and_version(pg_url: str) -> None:  # noqa: F811
    from sqlalchemy.dialects.postgresql import insert

    from fracture.db import session_scope

    migrate.upgrade(pg_url)
    with session_scope(pg_url) as session:
        version = ModelVersion(name="v1", arch="tiny", checkpoint_key="models/v1.pt", checkpoint_sha256="0" * 64,
                               threshold=0.5)
        job = Job(name="batch", total=2)
        session.add_all([version, job])
        session.flush()
        job.model_version_id = version.id
        session.add_all([Image(job_id=job.id, seq=i, path=f"hand/{i}.png", storage_key=f"uploads/{job.id}/{i:06d}")
                         for i in range(2)])
        session.flush()
        job_id, version_id = job.id, version.id
        image_id = session.scalars(select(Image.id).where(Image.job_id == job_id, Image.seq == 0)).one()

    def upsert(probability: float, prediction: str) -> None:
        stmt = insert(Result).values(image_id=image_id, job_id=job_id, model_version_id=version_id,
                                     prediction=prediction, probability=probability)
        stmt = stmt.on_conflict_do_update(
            index_elements=[Result.image_id, Result.model_version_id],
            set_={"prediction": stmt.excluded.prediction, "probability": stmt.excluded.probability},
        )
        with session_scope(pg_url) as session:
            session.execute(stmt)

    upsert(0.2, "not fractured")
    upsert(0.9, "fractured")  # the same chunk delivered twice: must not add a row

    with session_scope(pg_url) as session:
        rows = session.scalars(select(Result).where(Result.job_id == job_id)).all()
        assert [(r.image_id, r.prediction, r.probability) for r in rows] == [(image_id, "fractured", 0.9)]
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.QUEUED and job.created_at.tzinfo is not None
        assert session.scalar(select(func.count()).select_from(Image).where(Image.job_id == job_id)) == 2
        # Deleting a job cascades to its images and results in the database itself (ON DELETE CASCADE).
        session.execute(delete(Job).where(Job.id == job_id))
        assert session.scalar(select(func.count()).select_from(Image)) == 0
        assert session.scalar(select(func.count()).select_from(Result)) == 0
