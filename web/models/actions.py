"""What the models pages and API do: promote, retire and roll back (admins), compare two versions side by side.

A version is named in URLs by its name ("release-1") or its id. New jobs use the active version; a job keeps the
version it was created with, so none of these actions changes a job already accepted. On the page each action says
what it will do ("Make v3 active instead of release-1") and asks first (web/confirm.py); its form also carries the
state it was shown in, so a form sent twice, or from a page that is out of date, changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flask import abort, request, url_for
from sqlalchemy import select

from fracture import audit_log
from fracture.evaluations import evaluations_with_names
from fracture.models import Dataset, ModelStatus, ModelVersion, RunStatus
from fracture.registry import (
    RegistryError,
    active_version,
    find_version,
    promote,
    record_decision,
    retire,
    rollback,
    rollback_path,
)
from web.auth import current_user
from web.context import db
from web.models.schemas import model_json

# The figures put side by side, per split and per evaluation dataset (ood_flagged: the share of the images the
# version's out-of-distribution detector flags, None without one).
COMPARED = ("n", "roc_auc", "sensitivity", "specificity", "accuracy", "precision", "f1", "threshold", "ood_flagged")


def get_version(ref: object) -> ModelVersion:
    """The version named or numbered `ref`; 400 when `ref` is neither a name nor an id, 404 when there is none."""
    if isinstance(ref, bool) or not isinstance(ref, str | int) or (isinstance(ref, str) and not ref.strip()):
        abort(400, description="Give model_version: a model version's name (for example release-1) or its id.")
    version = find_version(db(), ref.strip() if isinstance(ref, str) else ref)
    if version is None:
        abort(404, description=f"There is no model version named or numbered {str(ref)!r}.")
    return version


def promote_version(ref: str | int) -> ModelVersion:
    """Make a version active by an admin's hand (the safe-promotion checks apply to automatic promotion only)."""
    session = db()
    version = get_version(ref)
    if version.status == ModelStatus.ACTIVE:
        return version  # already serving: a second click changes nothing
    earlier = _gate_said(version)
    replaced = active_version(session)
    promote(session, version)
    user = current_user().username
    record_decision(version, f"promoted by hand by {user}"
                             + (f" (the automatic check had said: {earlier})" if earlier else ""))
    audit_log.record(session, user, "model.promote", version.name,
                     {"id": version.id, "replaced": replaced.name if replaced is not None else None,
                      "automatic_check": earlier})
    session.commit()
    return version


def retire_version(version: ModelVersion) -> None:
    """Retire a version that is not active and say who did; RegistryError for the active one."""
    retire(db(), version)
    earlier = _gate_said(version)
    user = current_user().username
    record_decision(version, f"retired by hand by {user}"
                             + (f" (the automatic check had said: {earlier})" if earlier else ""))
    audit_log.record(db(), user, "model.retire", version.name, {"id": version.id})
    db().commit()


def rollback_active(to: str | None = None) -> tuple[ModelVersion, ModelVersion | None]:
    """Make the version active before the current one active again and say who did.

    RegistryError when there is none, or when `to` names another version than the one a rollback goes to.
    """
    session = db()
    if to:
        path = rollback_path(session, steps=1)
        if not path or path[0].name != to:
            raise RegistryError(f"a rollback now goes to {path[0].name}, not {to}" if path
                                else f"there is no previously active version to roll back to (asked for {to})")
    target, replaced = rollback(session)
    user = current_user().username
    record_decision(target, f"made active again by a rollback by {user}"
                            + (f", replacing {replaced.name}" if replaced else ""))
    if replaced is not None:
        record_decision(replaced, f"retired by a rollback to {target.name} by {user}")
    audit_log.record(session, user, "model.rollback", target.name,
                     {"id": target.id, "replaced": replaced.name if replaced is not None else None})
    session.commit()
    return target, replaced


def _gate_said(version: ModelVersion) -> str | None:
    """The automatic promotion check's sentence about `version`, kept through later decisions; None without one."""
    decision = version.decision or ""
    marker = "(the automatic check had said: "
    if marker in decision:
        return decision.split(marker, 1)[1].removesuffix(")")
    return decision if decision.startswith(("not promoted", "promoted:")) else None


def gate_refusal(version: ModelVersion) -> str | None:
    """Why the promotion gate refused `version` ("on dataset 'x' sensitivity 0.500 < 0.95"); None if it did not."""
    said = _gate_said(version) or ""
    if not said.startswith("not promoted"):
        return None
    return said.removeprefix("not promoted:").strip() or said


# ---------------------------------------------------------------- what each action will do, in words


@dataclass(frozen=True)
class Action:
    """A page form's button text, the question it asks first, and the state it was shown in (hidden fields)."""

    label: str
    question: str
    fields: dict[str, str] = field(default_factory=dict)


def _test_auc(version: ModelVersion) -> float | None:
    test = (version.metrics or {}).get("test")
    value = test.get("roc_auc") if isinstance(test, dict) else None
    return float(value) if isinstance(value, int | float) else None


def promote_action(version: ModelVersion, active: ModelVersion | None) -> Action:
    """ "Make v3 active instead of release-1", and a question naming the consequence and any refusal by the gate."""
    if active is None:
        label = f"Make {version.name} active"
        lines = [f"Make {version.name} the active model?", f"New jobs will be classified by {version.name}."]
    else:
        label = f"Make {version.name} active instead of {active.name}"
        lines = [f"Make {version.name} the active model instead of {active.name}?",
                 f"New jobs will be classified by {version.name}; {active.name} is retired (a rollback returns "
                 f"to it). Jobs already accepted keep their version."]
    refused = gate_refusal(version)
    if refused:
        lines.append(f"The promotion gate refused {version.name}: {refused}.")
    mine, theirs = _test_auc(version), _test_auc(active) if active is not None else None
    if mine is not None:
        lines.append(f"Test ROC-AUC: {version.name} {mine:.3f}"
                     + (f", {active.name} {theirs:.3f}." if active is not None and theirs is not None else "."))
    return Action(label, "\n".join(lines), {"active": active.name if active is not None else ""})


def retire_action(version: ModelVersion) -> Action:
    return Action(f"Retire {version.name}",
                  f"Retire {version.name}?\nIt is marked retired and no longer offered as a candidate; it stays "
                  f"in this list and can still be made active by hand. No job changes.")


def rollback_action() -> Action | None:
    """ "Roll back to release-1" when there is a version before the current one; None when there is none."""
    session = db()
    path = rollback_path(session, steps=2)
    if not path:
        return None
    target, active = path[0], active_version(session)
    current = active.name if active is not None else "no version"
    lines = [f"Roll back to {target.name}?",
             f"{target.name} becomes the active model again instead of {current}"
             + (f", and {current} is retired" if active is not None else "")
             + "; new jobs use it, jobs already accepted keep their version.",
             f"A further rollback would go to {path[1].name}, never back to {current}." if len(path) > 1
             else f"No further rollback will be possible: {current} cannot be rolled back to."]
    return Action(f"Roll back to {target.name}", "\n".join(lines),
                  {"active": active.name if active is not None else "", "to": target.name})


def model_actions(versions: Sequence[ModelVersion]) -> dict[str, Any]:
    """For the models page (its view passes them): each listed version's actions by id ("promote", "retire"), and
    the rollback (or None)."""
    active = active_version(db())
    by_id = {v.id: {"promote": promote_action(v, active), "retire": retire_action(v)} for v in versions}
    return {"by_id": by_id, "rollback": rollback_action()}


def out_of_date() -> str | None:
    """Why a page form's `active` field no longer matches the active version (the page was stale); None if it does."""
    if "active" not in request.form:
        return None
    active = active_version(db())
    now = active.name if active is not None else ""
    if request.form["active"] == now:
        return None
    return (f"the active model is now {now or 'none'}, not {request.form['active'] or 'none'} as the page showed "
            "(sent twice, or from an out-of-date page); look again and choose")


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
    return {"a": model_json(a), "b": model_json(b), "compared": list(COMPARED), "splits": per_split,
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


def compared_pair() -> tuple[ModelVersion, ModelVersion]:
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
