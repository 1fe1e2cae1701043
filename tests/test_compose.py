"""docker-compose.yml, as Debian's docker-compose parses it: services, GPU reservations, shared volume, wiring."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fracture.queue import INFERENCE_WORKER_QUEUES

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("migrate", "web", "worker", "trainer", "beat", "dicom-node")
GPU_SERVICES = ("worker", "trainer")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The file as `docker-compose config` resolves it (validated against the Compose schema, variables filled)."""
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (scripts/system-deps.sh installs Debian's package)")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    # Defaults only: a developer's POSTGRES_PASSWORD or SECRET_KEY must not change what is checked.
    own = ("POSTGRES_PASSWORD", "SECRET_KEY", "SESSION_COOKIE_SECURE", "WEB_PORT", "WORKER_CONCURRENCY", "COMPOSE_FILE",
           "DICOM_PORT", "TRUSTED_PROXY_HOPS")
    env = {k: v for k, v in os.environ.items() if k not in own}
    proc = subprocess.run([exe, "-f", "docker-compose.yml", "config"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"docker-compose config rejected the file:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    return command.split() if isinstance(command, str) else list(command or [])


def test_services_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "postgres", "prometheus", *APP_SERVICES}
    assert {"data", "pgdata"} <= set(compose["volumes"])
    assert services["postgres"]["image"].startswith("postgres:15")
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    assert any(v.startswith("pgdata:/var/lib/postgresql/data") for v in services["postgres"]["volumes"])


def test_app_services_share_data_volume_and_environment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in APP_SERVICES:
        service = services[name]
        assert service["build"]["context"] == str(REPO_ROOT), name
        assert "data:/data:rw" in service["volumes"], name
        env = service["environment"]
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert "@postgres:5432/" in env["DATABASE_URL"], name
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
        assert env["FRACTURE_HOME"] == "/data", name
        assert env["STORAGE_DIR"] == "/data/storage", name
        # One database for everyone: the web's job rows are what the workers update.
        assert env["DATABASE_URL"] == services["web"]["environment"]["DATABASE_URL"], name


def test_migrations_run_before_everything_else(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert command_of(services["migrate"]) == ["fracture", "db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", "worker", "trainer", "beat", "dicom-node"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_roles_and_gpu_reservations(compose: dict[str, Any]) -> None:
    services = compose["services"]
    web = command_of(services["web"])
    assert web[0] == "gunicorn" and "web.wsgi:app" in web
    assert any(p["target"] == 5000 for p in services["web"]["ports"])

    worker = command_of(services["worker"])
    assert worker[:4] == ["celery", "-A", "worker.app", "worker"]
    assert worker[worker.index("-Q") + 1] == INFERENCE_WORKER_QUEUES  # "inference,interactive", as fracture up
    trainer = command_of(services["trainer"])
    assert trainer[:4] == ["celery", "-A", "trainer.app", "worker"]  # the trainer's own worker app
    assert trainer[trainer.index("-Q") + 1] == "training" and trainer[trainer.index("-c") + 1] == "1"
    assert command_of(services["beat"])[:4] == ["celery", "-A", "worker.app", "beat"]
    # The same command `fracture up` runs (launcher.supervisor.DICOM_NODE_ARGS), only with `--profile dicom`.
    assert command_of(services["dicom-node"]) == ["python", "-m", "worker.dicom_node"]
    assert services["dicom-node"]["profiles"] == ["dicom"]
    assert any(p["target"] == 11112 for p in services["dicom-node"]["ports"])

    for name in GPU_SERVICES:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]} in devices, name
    for name in set(services) - set(GPU_SERVICES):
        assert "deploy" not in services[name], name


def test_commands_point_at_code_that_exists() -> None:
    """The modules and CLI commands the containers run are real (a typo here only shows up in production)."""
    assert (REPO_ROOT / "web" / "wsgi.py").is_file()
    assert (REPO_ROOT / "worker" / "app.py").is_file()
    assert (REPO_ROOT / "trainer" / "app.py").is_file()
    assert (REPO_ROOT / "worker" / "dicom_node.py").is_file()
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile and "uv sync --frozen" in dockerfile
    fracture = Path(sys.executable).parent / "fracture"
    proc = subprocess.run([str(fracture), "db", "upgrade", "--help"], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_the_web_with_the_token_the_web_checks(compose: dict[str, Any]) -> None:
    import yaml

    services = compose["services"]
    prometheus = services["prometheus"]
    assert any(v.endswith(":/etc/prometheus/prometheus.yml:ro") or v.endswith(":/etc/prometheus/prometheus.yml")
               for v in map(str, prometheus["volumes"]))
    assert prometheus["environment"]["METRICS_TOKEN"] == services["web"]["environment"]["METRICS_TOKEN"]
    config = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["web:5000"] and "credentials_file" in job["authorization"]


def test_the_topology_test_runs_the_compose_commands(compose: dict[str, Any], tmp_path: Path) -> None:
    """tests/topology.py (`make prod-check`) reads its commands from docker-compose.yml: only the executable's folder,
    the bind address, the node name and the volume's path change (one list, not two copies)."""
    from topology import APP_SERVICES, compose_command, compose_services, localise

    raw = compose_services()
    assert set(APP_SERVICES) | {"migrate"} <= set(raw)
    env: dict[str, str] = {}
    for name in ("migrate", *APP_SERVICES):
        # The file as docker-compose resolves it is the file the topology reads.
        container = compose_command(raw[name], env)
        assert container == command_of(compose["services"][name]), name
        local = localise(name, container, tmp_path, 8123)
        assert Path(local[0]).name == container[0] and Path(local[0]).is_file(), (name, local[0])
        expected = [a.replace("/data", str(tmp_path)) for a in container[1:]]
        if container[0] == "gunicorn":
            expected[expected.index("--bind") + 1] = "127.0.0.1:8123"
        if container[0] == "celery" and "worker" in container:
            expected += ["-n", f"{name}-1@%h"]
        assert local[1:] == expected, name


def test_the_readme_starts_the_parts_with_the_compose_commands(compose: dict[str, Any]) -> None:
    """The README's "separate machines" commands are the containers' commands, word for word."""
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split("To run the parts by hand on separate machines", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].split() for line in block.strip().splitlines()]
    commands = [command_of(compose["services"][name]) for name in ("migrate", "web", "worker", "trainer", "beat")]
    assert lines == commands
