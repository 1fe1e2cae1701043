"""The trainings API's shapes: a run (status, progress, curves, ETA, datasets, recipe) and the start request."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import marshmallow as ma
from flask import url_for
from marshmallow import fields as f
from sqlalchemy import select
from sqlalchemy.orm import object_session

from fracture import val_auc
from fracture.models import FINAL_RUN_STATUSES, Dataset, ModelVersion, RunStatus, TrainingRun
from fracture.recipe import RECIPE, recipe_of
from web.timefmt import Lifetime


def _finite(values: list[Any]) -> list[float | None]:
    return [float(v) if isinstance(v, int | float) and math.isfinite(v) else None for v in values]


class RunSchema(Lifetime):
    """A training run: its one headline figure is its registered version's val ROC-AUC (`val_auc`);
    `selection_val_auc` is the per-epoch figure that picked the epoch (history.val_auc is its curve)."""

    id = f.Integer(required=True)
    status = f.String(required=True, metadata={"enum": [s.value for s in RunStatus]})
    epoch = f.Integer(required=True)
    epochs = f.Integer(allow_none=True)
    val_auc = f.Float(allow_none=True)
    val_auc_measures = f.String(allow_none=True)
    selection_val_auc = f.Float(allow_none=True)
    selection_val_auc_measures = f.String(required=True)
    train_loss = f.Float(allow_none=True)
    eta_s = f.Float(allow_none=True)
    elapsed_s = f.Float(allow_none=True)
    model_version = f.String(allow_none=True)
    error = f.String(allow_none=True)
    message = f.String(allow_none=True)
    history = f.Dict(keys=f.String(), values=f.List(f.Float(allow_none=True)), required=True)
    datasets = f.List(f.Dict(), required=True)
    recipe = f.Dict(required=True)
    start_from = f.Dict(allow_none=True)
    cancel_requested = f.Boolean(required=True)
    final = f.Boolean(required=True)
    schedule_id = f.Integer(allow_none=True)
    log_url = f.String(required=True)
    page_url = f.String(required=True)

    @ma.pre_dump
    def _derive(self, run: TrainingRun, **_: Any) -> dict[str, Any]:
        session = object_session(run)
        assert session is not None
        history = {k: _finite(v) for k, v in (run.history or {}).items() if isinstance(v, list)}
        started, finished = run.started_at, run.finished_at
        elapsed = ((finished or datetime.now(UTC)) - started).total_seconds() if started else None
        done_s = [s for s in history.get("epoch_s", [])[-run.epoch:] if s is not None] if run.epoch else []
        eta = None
        if run.status in FINAL_RUN_STATUSES:
            eta = 0.0
        elif done_s and run.epochs:
            eta = round(sum(done_s) / len(done_s) * max(run.epochs - run.epoch, 0), 1)
        params = dict(run.params or {})
        ids = params.get("dataset_ids") or []
        names = {d.id: d.name for d in session.scalars(select(Dataset).where(Dataset.id.in_(ids)))} if ids else {}
        version = session.get(ModelVersion, run.model_version_id) if run.model_version_id else None
        origin = session.get(ModelVersion, params["start_from"]) if params.get("start_from") else None
        views = (version.metrics or {}).get("served_views") if version else None
        return {
            "id": run.id, "status": run.status, "epoch": run.epoch, "epochs": run.epochs,
            "val_auc": version.selection_metric if version else None,
            "val_auc_measures": val_auc.served_measures(views),
            "selection_val_auc": (history.get("val_auc") or [None])[-1],
            "selection_val_auc_measures": val_auc.SELECTION_MEASURES,
            "train_loss": (history.get("train_loss") or [None])[-1],
            "eta_s": eta, "elapsed_s": round(elapsed, 1) if elapsed is not None else None,
            "model_version": version.name if version else None, "error": run.error, "message": run.message,
            "history": history, "datasets": [{"id": i, "name": names.get(i)} for i in ids],
            "recipe": recipe_of(params) | ({"dry_run": True} if params.get("dry_run") else {}),
            "start_from": {"id": origin.id, "name": origin.name} if origin else None,
            "cancel_requested": bool(run.cancel_requested), "final": run.status in FINAL_RUN_STATUSES,
            "schedule_id": run.schedule_id, "created_at": run.created_at, "started_at": started,
            "finished_at": finished, "log_url": url_for("trainings_api.api_log", run_id=run.id),
            "page_url": url_for("trainings.page", run_id=run.id),
        }


def run_json(run: TrainingRun) -> dict[str, Any]:
    out: dict[str, Any] = RunSchema().dump(run)
    return out


class RunListSchema(ma.Schema):
    trainings = f.List(f.Nested(RunSchema), required=True)


# The datasets to train on and the recipe fields to change (the rest keep their defaults); each recipe field is
# declared once, in fracture.recipe.RECIPE, and checked with its reason by fracture.schedule_params.check_params.
StartBody = ma.Schema.from_dict({
    "dataset_ids": f.List(f.Raw(), metadata={"description": "Ready training datasets' ids (their union is split)."}),
    "dry_run": f.Raw(metadata={"description": "true: one epoch on at most 64 images per split (a quick check)."}),
    "start_from": f.Raw(metadata={"description": "A model version's name or id: its weights are fine-tuned instead "
                                                 "of random ones (its network must be the recipe's: arch, width)."}),
    **{name: f.Raw(metadata={"description": f"The recipe's {name} (default {default!r})."})
       for name, default in RECIPE.items()},
}, name="StartBody")


class RunStartedSchema(ma.Schema):
    id = f.Integer(required=True)
    status = f.String(required=True)


class RunNotSentSchema(RunStartedSchema):
    """Recorded, then failed: the broker was down."""

    error = f.String(required=True)
