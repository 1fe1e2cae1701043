"""Model versions on the web: promote, retire and roll back (admins), compare two side by side (pages and API).

A version is named in URLs by its name ("release-1") or its id. New jobs use the active version; a job keeps the
version it was created with, so none of these actions changes a job already accepted.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from fracture.evaluations import evaluations_with_names
from fracture.models import Dataset, ModelVersion, RunStatus
from fracture.registry import RegistryError, active_version, find_version, promote, record_decision, retire, rollback
from web.auth import current_user, require_admin
from web.context import db
from web.views import model_dict

bp = Blueprint("models", __name__)

# The figures put side by side, per split and per evaluation dataset (ood_flagged: the share of the images the
# version's out-of-distribution detector flags, None without one).
COMPARED = ("n", "roc_auc", "sensitivity", "specificity", "accuracy", "precision", "f1", "threshold", "ood_flagged")


def get_version(ref: str | int) -> ModelVersion:
    """The version named or numbered `ref`; 404 when there is none."""
    version = find_version(db(), ref)
    if version is None:
        abort(404, description=f"There is no model version named or numbered {str(ref)!r}.")
    return version


def public(version: ModelVersion) -> dict[str, Any]:
    """A version as the API shows it (the page's table helpers left out), with its plots' URLs."""
    out = {k: v for k, v in model_dict(version).items() if not k.startswith("metric_")}
    out["plot_urls"] = {name: url_for("pages.model_plot", version_id=version.id, name=name) for name in out["plots"]}
    return out


def promote_version(ref: str | int) -> ModelVersion:
    """Make a version active by an admin's hand (the safe-promotion checks apply to automatic promotion only)."""
    session = db()
    version = get_version(ref)
    earlier = version.decision if (version.decision or "").startswith(("not promoted", "promoted:")) else None
    promote(session, version)
    record_decision(version, f"promoted by hand by {current_user().username}"
                             + (f" (the automatic check had said: {earlier})" if earlier else ""))
    session.commit()
    return version


def retire_version(version: ModelVersion) -> None:
    """Retire a version that is not active and say who did; RegistryError for the active one."""
    retire(db(), version)
    record_decision(version, f"retired by hand by {current_user().username}")
    db().commit()


def rollback_active() -> tuple[ModelVersion, ModelVersion | None]:
    """Make the previously active version active again and say who did; RegistryError when there is none."""
    session = db()
    target, replaced = rollback(session)
    user = current_user().username
    record_decision(target, f"made active again by a rollback by {user}"
                            + (f", replacing {replaced.name}" if replaced else ""))
    if replaced is not None:
        record_decision(replaced, f"retired by a rollback to {target.name} by {user}")
    session.commit()
    return target, replaced


def comparison(a: ModelVersion, b: ModelVersion) -> dict[str, Any]:
    """Two versions side by side: their metrics per split and their latest evaluation per dataset and split."""
    splits = [s for s in dict.fromkeys([*(a.metrics or {}), *(b.metrics or {})])
              if isinstance((a.metrics or {}).get(s), dict) or isinstance((b.metrics or {}).get(s), dict)]
    per_split = [{"split": s, "a": _figures((a.metrics or {}).get(s)), "b": _figures((b.metrics or {}).get(s))}
                 for s in splits]
    latest = {side: _latest_evaluations(v.id) for side, v in (("a", a), ("b", b))}
    gates = set(db().scalars(select(Dataset.name).where(Dataset.gate.is_(True))))
    keys = sorted(set(latest["a"]) | set(latest["b"]))
    per_dataset = [{"dataset": d, "split": s, "gate": d in gates,
                    "a": latest["a"].get((d, s)), "b": latest["b"].get((d, s))} for d, s in keys]
    return {"a": public(a), "b": public(b), "compared": list(COMPARED), "splits": per_split,
            "evaluations": per_dataset}


def _figures(metrics: object) -> dict[str, Any] | None:
    return {k: metrics.get(k) for k in COMPARED} if isinstance(metrics, dict) else None


def _latest_evaluations(version_id: int) -> dict[tuple[str, str], dict[str, Any]]:
    """The newest finished evaluation of a version on each (dataset, split), its figures and plots' URLs."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for evaluation, _, dataset in evaluations_with_names(db(), version_id):  # newest first
        key = (dataset, evaluation.split or "all")
        if evaluation.status != RunStatus.DONE or key in latest:
            continue
        figures = _figures(evaluation.metrics or {}) or {}
        figures["id"] = evaluation.id
        figures["plots"] = {name: url_for("evaluations.plot", evaluation_id=evaluation.id, name=name)
                            for name in sorted(evaluation.plots or {})}
        latest[key] = figures
    return latest


def _pair() -> tuple[ModelVersion, ModelVersion]:
    """The versions `a` and `b` of the query; by default the active one and the newest other one."""
    a_ref, b_ref = request.args.get("a", "").strip(), request.args.get("b", "").strip()
    a = get_version(a_ref) if a_ref else active_version(db())
    b: ModelVersion | None
    if b_ref:
        b = get_version(b_ref)
    else:
        others = select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
        b = next((v for v in db().scalars(others) if a is None or v.id != a.id), None)
    if a is None or b is None:
        abort(400, description="Give two model versions to compare: ?a=<name or id>&b=<name or id>.")
    return a, b


# ---------------------------------------------------------------- pages


@bp.get("/models/compare")
def compare_page() -> ResponseReturnValue:
    a, b = _pair()
    versions = db().scalars(select(ModelVersion.name).order_by(ModelVersion.created_at.desc())).all()
    return render_template("model_compare.html", c=comparison(a, b), versions=versions)


@bp.post("/models/<ref>/promote")
def promote_page(ref: str) -> ResponseReturnValue:
    require_admin("promote a model")
    version = promote_version(ref)
    flash(f"Model {version.name} is now the active model; new jobs use it.", "ok")
    return redirect(url_for("pages.models"))


@bp.post("/models/<ref>/retire")
def retire_page(ref: str) -> ResponseReturnValue:
    require_admin("retire a model")
    version = get_version(ref)
    try:
        retire_version(version)
    except RegistryError as e:
        flash(f"Cannot retire: {e}.", "error")
        return redirect(url_for("pages.models", _anchor=f"model-{version.id}"))
    flash(f"Model {version.name} is retired.", "ok")
    return redirect(url_for("pages.models"))


@bp.post("/models/rollback")
def rollback_page() -> ResponseReturnValue:
    require_admin("roll back the active model")
    try:
        target, replaced = rollback_active()
    except RegistryError as e:
        flash(f"Cannot roll back: {e}.", "error")
        return redirect(url_for("pages.models"))
    flash(f"Rolled back: {target.name} is active again" + (f"; {replaced.name} is retired." if replaced else "."),
          "ok")
    return redirect(url_for("pages.models"))


# ---------------------------------------------------------------- API


@bp.post("/api/models/<ref>/promote")
def promote_api(ref: str) -> Response:
    """Make a version (name or id) the active model (admins only); new jobs use it, accepted jobs keep theirs."""
    require_admin("promote a model")
    return jsonify(public(promote_version(ref)))


@bp.post("/api/models/<ref>/retire")
def retire_api(ref: str) -> Response:
    """Retire a version that is not active (admins only): 409 for the active one."""
    require_admin("retire a model")
    version = get_version(ref)
    try:
        retire_version(version)
    except RegistryError as e:
        abort(409, description=f"Cannot retire: {e}.")
    return jsonify(public(version))


@bp.post("/api/models/rollback")
def rollback_api() -> Response:
    """Make the previously active version active again (admins only): {"active", "replaced"}; 409 when none."""
    require_admin("roll back the active model")
    try:
        target, replaced = rollback_active()
    except RegistryError as e:
        abort(409, description=f"Cannot roll back: {e}.")
    return jsonify({"active": public(target), "replaced": public(replaced) if replaced else None})


@bp.get("/api/models/compare")
def compare_api() -> Response:
    """Two versions side by side: ?a=<name or id>&b=<name or id> (default: the active one and the newest other)."""
    a, b = _pair()
    return jsonify(comparison(a, b))
