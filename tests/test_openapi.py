"""The API's one description: every route documented and every documented route served, the reference page
served from the installed package, a wrong field named, no torch in the web, and schemathesis against a live
system (no 5xx, every answer as documented, authentication enforced)."""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from flask.testing import FlaskClient
from harness import LiveSystem, wait_for
from web_client import post_files

from fracture.config import Settings
from fracture.db import get_engine

ROOT = Path(__file__).resolve().parents[1]
NOT_OPERATIONS = {"/api/openapi.json", "/api/docs", "/api/docs/assets/{filename}"}


def _documented(client: FlaskClient) -> dict[str, dict[str, object]]:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.") and spec["info"]["title"] == "Fracture API"
    return spec["paths"]  # type: ignore[no-any-return]


def test_every_api_route_is_documented_and_every_documented_route_exists(client: FlaskClient) -> None:
    served = set()
    for rule in client.application.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        if path.startswith("/api/") and path not in NOT_OPERATIONS:
            served |= {(path, m.lower()) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    documented = {(path, method) for path, item in _documented(client).items() for method in item
                  if method in ("get", "post", "put", "patch", "delete")}
    assert served == documented, {"undocumented": served - documented, "not served": documented - served}
    assert len(documented) >= 40


def test_every_operation_has_a_summary_an_answer_schema_and_the_error_shape(client: FlaskClient) -> None:
    paths = _documented(client)
    spec = client.get("/api/openapi.json").get_json()
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    for path, item in paths.items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            assert op.get("summary"), (method, path)
            assert "default" in op["responses"], (method, path)  # any error: {"error": sentence}
            ok = [code for code in op["responses"] if code.startswith("2")]
            assert ok, (method, path)
    assert paths["/api/health"]["get"]["security"] == []  # the probe needs no account; the rest a token
    assert spec["security"] == [{"bearerAuth": []}]


def test_the_reference_page_comes_from_the_installed_package_under_the_pages_csp(client: FlaskClient) -> None:
    anonymous = client.application.test_client()
    page = anonymous.get("/api/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html and "<script>" not in html  # no CDN, no inline code
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for asset in re.findall(r'(?:src|href)="(/api/docs/assets/[^"]+)"', html):
        with anonymous.get(asset) as served:
            assert served.status_code == 200 and len(served.data) > 1000, asset
    assert anonymous.get("/api/openapi.json").status_code == 200  # public, like the page
    assert anonymous.get("/api/jobs").status_code == 401  # the API itself is not


def test_a_wrong_or_malformed_field_is_a_400_naming_it(client: FlaskClient) -> None:
    cases = [
        ("post", "/api/schedules", {"bogus": 1}, "bogus"),
        ("post", "/api/evaluations", {"model_version": "release-1", "dataset_id": "x"}, "dataset_id"),
        ("post", "/api/datasets/1/gate", {"gate": "yes"}, "gate"),
        ("get", "/api/jobs?limit=0", None, "limit"),
        ("get", "/api/jobs?limit=many", None, "limit"),
    ]
    for method, url, body, field in cases:
        response = getattr(client, method)(url, json=body) if body is not None else client.get(url)
        assert response.status_code == 400, (url, response.get_json())
        assert field in response.get_json()["error"], response.get_json()
    # A huge id is no row: 404, never an overflow in the database driver.
    assert client.get("/api/trainings/99999999999999999999").status_code == 404


def test_the_web_serves_its_pages_and_api_without_importing_torch(fracture_env: dict[str, str]) -> None:
    code = """
import sys
from web import create_app
app = create_app()
client = app.test_client()
headers = {"Authorization": "Bearer " + sys.argv[1]}
for url in ("/", "/jobs", "/models", "/training", "/datasets", "/api/jobs", "/api/models", "/api/trainings",
            "/api/schedules", "/api/datasets", "/api/evaluations", "/api/openapi.json", "/api/docs"):
    assert client.get(url, headers=headers).status_code == 200, url
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision") or m.startswith("fracture.ml")))
"""
    out = subprocess.run([sys.executable, "-c", code, fracture_env["FRACTURE_TEST_TOKEN"]], cwd=ROOT, text=True,
                         env={**os.environ, **fracture_env}, capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def _seed(system: LiveSystem, sample_images: list[Path]) -> dict[str, object]:
    """Real rows for the generated requests to reach: a classified job with its images, the active model, a ready
    training dataset, a schedule on it, a queued training run and a queued evaluation."""
    from fracture import datasets, evaluations, trainings
    from fracture.config import get_settings
    from fracture.db import session_scope
    from trainer.dataset_validation import validate_dataset

    files = [("files", (f"case/{n}.png", path.read_bytes())) for n, path in enumerate(sample_images[:3])]
    created = system.http.post(f"{system.url}/api/jobs", files=files, timeout=120)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    def finished() -> dict[str, object] | None:
        job = system.http.get(f"{system.url}/api/jobs/{job_id}", timeout=10).json()
        return job if job["final"] else None

    wait_for(finished, 300, f"job {job_id} to finish\n{system.logs()}", interval=0.5)
    rows = system.http.get(f"{system.url}/api/jobs/{job_id}/results", timeout=10).json()["results"]
    models = system.http.get(f"{system.url}/api/models", timeout=10).json()
    active = next(m for m in models["models"] if m["name"] == models["active"])
    settings = get_settings(system.env)
    with session_scope(settings.database_url) as session:
        dataset_id = datasets.create_dataset(session, "fuzzed", "training", "server", sample_images[0].parents[2]).id
    assert validate_dataset(settings, dataset_id) == "ready"
    schedule = system.http.post(f"{system.url}/api/schedules", json={"daily_at": "03:00", "dataset_ids": [dataset_id]},
                                timeout=10)
    assert schedule.status_code == 201, schedule.text
    with session_scope(settings.database_url) as session:
        run_id = trainings.create_run(session, {"dataset_ids": [dataset_id]}, "a run for the fuzzer").id
        evaluation_id = evaluations.create_evaluation(session, active["id"], dataset_id).id
    return {"job_id": job_id, "image_id": rows[0]["image_id"], "ref": active["name"], "dataset_id": dataset_id,
            "schedule_id": schedule.json()["id"], "run_id": run_id, "evaluation_id": evaluation_id}


def test_schemathesis_finds_no_5xx_no_undocumented_answer_and_no_open_door(
    live_system: LiveSystem, sample_images: list[Path], tmp_path: Path,
) -> None:
    """Requests generated from the document, against gunicorn + redis + a real worker: no 5xx, every answer of a
    documented status and shape, and no operation that needs a token answers without one (ignored_auth)."""
    system = live_system
    seeded = _seed(system, sample_images)
    config = tmp_path / "schemathesis.toml"
    # Half the path parameters name real rows (the rest are generated and mostly 404): the handlers' own logic runs.
    config.write_text("[parameters]\n" + "".join(f'"path.{k}" = {json.dumps(v)}\n' for k, v in seeded.items()))
    # SCHEMATHESIS_EXAMPLES (per operation), SCHEMATHESIS_SEED (random generation from that seed instead of the
    # deterministic default) and SCHEMATHESIS_REPORT (where to keep the NDJSON report) let a developer search further.
    report = Path(os.environ.get("SCHEMATHESIS_REPORT", tmp_path / "schemathesis.ndjson"))
    examples = os.environ.get("SCHEMATHESIS_EXAMPLES", "25")
    seed = os.environ.get("SCHEMATHESIS_SEED")
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "--no-color", "run",
           f"{system.url}/api/openapi.json", "-H", f"Authorization: Bearer {system.token}",
           "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                       "response_schema_conformance,ignored_auth",
           "--max-examples", examples, "--phases", "examples,coverage,fuzzing",
           *(["--seed", seed] if seed else ["--generation-deterministic"]),
           "--request-timeout", "60", "--report", "ndjson", "--report-ndjson-path", str(report)]
    out = subprocess.run(cmd, text=True, capture_output=True, timeout=1200, cwd=tmp_path)  # its cache stays there
    print(out.stdout[-5000:])
    assert out.returncode == 0, out.stdout[-10000:] + out.stderr[-2000:] + system.logs()[-3000:]
    summary = out.stdout[out.stdout.rindex("SUMMARY"):]
    assert re.search(r"Tested: 4\d", summary) and "generated" in summary, summary


def test_the_readme_curl_lines_call_documented_operations(client: FlaskClient) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## JSON API"):readme.index("### DICOM")]
    patterns = [(re.compile("^" + "[^/]+".join(map(re.escape, re.split(r"\{[a-z_]+\}", path))) + "$"), method)
                for path, item in _documented(client).items() for method in item]
    calls = re.findall(r"curl ([^\n]*(?:\\\n[^\n]*)*?)http://127\.0\.0\.1:5000(/api/[^\s]*)", section)
    assert len(calls) >= 5, calls
    for options, url in calls:
        method = "post" if " -F " in f" {options}" or "-X POST" in options else "get"
        path = url.split("?")[0]
        assert any(rx.match(path) and m == method for rx, m in patterns), (method, path)


def test_a_streamed_csv_leaves_no_database_connection_checked_out(client: FlaskClient, settings: Settings,
                                                                  sample_images: list[Path]) -> None:
    """Found by schemathesis: each CSV download kept a pooled connection until the garbage collector ran, and a
    few dozen downloads exhausted the pool (every later request then waited 30 s and answered 500)."""
    job_id = post_files(client, [(p.read_bytes(), f"s/{n}.png") for n, p in enumerate(sample_images[:3])]) \
        .get_json()["id"]
    engine = get_engine(settings.database_url)
    gc.collect()
    gc.disable()  # what the pool holds now is what the requests left, not what a collection happened to free
    try:
        for url in (f"/api/jobs/{job_id}/results.csv", f"/api/jobs/{job_id}/results.csv?in_distribution=true",
                    f"/api/jobs/{job_id}/reviews.csv") * 3:
            with client.get(url) as response:
                assert response.status_code == 200 and response.data.startswith(b"path,"), url
            assert engine.pool.checkedout() == 0, url
    finally:
        gc.enable()


def test_the_reference_page_renders_every_operation_in_a_real_browser(live_system: LiveSystem) -> None:
    """Swagger UI from the package's own files, under the pages' CSP: every operation listed, nothing blocked."""
    from browser import chromium_page, wait_until

    with chromium_page() as watched:
        page = watched.page
        page.goto(f"{live_system.url}/api/docs")
        wait_until(page, "document.querySelectorAll('.opblock').length >= 40", 30, "Swagger UI to list the API")
        shown = page.evaluate("Array.from(document.querySelectorAll('.opblock-summary-path'))"
                              ".map(e => e.getAttribute('data-path'))")
        assert "/api/jobs/{job_id}/results.csv" in shown and "/api/health" in shown, shown
        assert page.locator(".info .title").first.inner_text().startswith("Fracture API")
    assert not watched.blocked and not watched.errors, (watched.blocked, watched.errors)
