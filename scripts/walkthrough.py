"""The README's retraining walkthrough, driven through the JSON API of a running `fracture up`, with screenshots.

    FRACTURE_HOME=/data/home .venv/bin/fracture up &      # DATASET_ROOTS defaults to $FRACTURE_HOME/datasets
    .venv/bin/python scripts/walkthrough.py --url http://127.0.0.1:5000 --token ... --password ... \\
        --first datasets/multiregion --second datasets/site-2 --epochs 20

Registers the two shared datasets, splits a locked evaluation part (a fifth) off the second site's data and makes
it a gate, evaluates the active model on it, trains on the first dataset plus the second's training part, evaluates
the new version, compares and promotes it; prints every figure as one JSON object and writes
docs/screenshots/{datasets,dataset,training-run,compare}.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from browser import ALL_IMAGES_LOADED, CHROMIUM, CHROMIUM_ARGS, readme_shot, wait_until  # noqa: E402  (the tests' Chromium)


class Api:
    """A thin client of the JSON API with an admin's bearer token."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, f"{self.url}/api{path}", timeout=120, **kwargs)
        if response.status_code >= 400:
            raise SystemExit(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def wait(self, path: str, done: tuple[str, ...] = ("ready", "done"), timeout: float = 7200) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            body = self.call("GET", path)
            if body["status"] in done:
                return body
            if body["status"] in ("invalid", "failed", "cancelled"):
                raise SystemExit(f"{path} ended {body['status']}: {body.get('error')}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{path} still {body['status']} after {timeout:.0f} s")
            time.sleep(5)


def evaluate(api: Api, version: str, dataset_id: int, split: str | None = None) -> dict[str, Any]:
    """Run an evaluation and return its metrics."""
    body: dict[str, Any] = {"model_version": version, "dataset_id": dataset_id}
    if split:
        body["split"] = split
    created = api.call("POST", "/evaluations", json=body)
    return dict(api.wait(f"/evaluations/{created['id']}")["metrics"])


def summary(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m.get(k) for k in ("n", "roc_auc", "sensitivity", "specificity")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    api = Api(args.url, args.token)
    first = api.call("POST", "/datasets", json={"path": args.first, "name": "multiregion", "role": "training"})
    second = api.call("POST", "/datasets", json={"path": args.second, "name": "site-2", "role": "training"})
    first, second = api.wait(f"/datasets/{first['id']}"), api.wait(f"/datasets/{second['id']}")
    parts = api.call("POST", f"/datasets/{second['id']}/split", json={"fraction": 0.2, "seed": 0})
    site_train = api.wait(f"/datasets/{parts['training']['id']}")
    site_locked = api.wait(f"/datasets/{parts['evaluation']['id']}")
    api.call("POST", f"/datasets/{site_locked['id']}/gate", json={"gate": True})
    active = api.call("GET", "/models")["active"]
    figures: dict[str, Any] = {"active_before": active, "counts": {
        "multiregion": first["counts"], "site-2 training part": site_train["counts"],
        "site-2 evaluation part": site_locked["counts"]}}
    figures[f"{active} on site-2 evaluation part"] = summary(evaluate(api, active, site_locked["id"]))
    figures[f"{active} on site-2 (all)"] = summary(evaluate(api, active, second["id"]))

    run_ = api.call("POST", "/trainings", json={"dataset_ids": [first["id"], site_train["id"]], "epochs": args.epochs})
    started = time.monotonic()
    finished = api.wait(f"/trainings/{run_['id']}", done=("done",), timeout=args.timeout)
    minutes = round((time.monotonic() - started) / 60, 1)
    figures["training"] = {"id": run_["id"], "epochs": args.epochs, "minutes": minutes,
                           "message": finished.get("message"), "model_version": finished.get("model_version")}
    new = finished["model_version"]
    models = {m["name"]: m for m in api.call("GET", "/models")["models"]}
    figures["decision"] = models[new].get("decision")
    figures[f"{new} own grouped test"] = {k: models[new]["metrics"].get("test", {}).get(k)
                                          for k in ("n", "roc_auc", "sensitivity", "specificity")}
    figures[f"{new} on site-2 evaluation part"] = summary(evaluate(api, new, site_locked["id"]))
    if models[new]["status"] != "active":
        api.call("POST", f"/models/{new}/promote")
    figures["active_after"] = api.call("GET", "/models")["active"]
    shoot(args, site_locked["id"], run_["id"], active, new)
    return figures


def shoot(args: argparse.Namespace, dataset_id: int, run_id: int, a: str, b: str) -> None:
    """Screenshots of the datasets list, the locked part's page, the run's page and the comparison."""
    from playwright.sync_api import sync_playwright

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    url = args.url.rstrip("/")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}/login")
        page.locator("#username").fill(args.user)
        page.locator("#password").fill(args.password)
        page.locator("#login").click()
        page.wait_for_url(f"{url}/")
        for name, path in (("datasets", "/datasets"), ("dataset", f"/datasets/{dataset_id}"),
                           ("training-run", f"/training/{run_id}"), ("compare", f"/models/compare?a={a}&b={b}")):
            page.goto(f"{url}{path}")
            wait_until(page, ALL_IMAGES_LOADED, 30, "the images")
            readme_shot(page, out / f"{name}.png", full_page=name in ("dataset", "compare"))
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:5000")
    parser.add_argument("--token", required=True, help="an admin's API token")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", required=True, help="the admin's password (for the screenshots)")
    parser.add_argument("--first", required=True, help="server folder of the first dataset (under DATASET_ROOTS)")
    parser.add_argument("--second", required=True, help="server folder of the second site's data")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
