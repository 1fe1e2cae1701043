"""Train the CNN: select the epoch and threshold on val, evaluate on train/val/test, write artifacts.

Reads top to bottom: get_args_parser, train_one_epoch, then main's steps in order (set_up, network_input,
load_data, build_network, start_training, train_epochs, keep_selected_epoch, evaluate_selected,
audit_robustness, write_artifacts), then main. Beside it: trainer.prepared_data (the run's data in memory),
trainer.split_evaluation (scoring the splits), trainer.training_state (what last.pt holds),
trainer.box_supervision (--boxes) and trainer.training_artifacts (plots, checkpoint, model card, summary).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from fracture import val_auc
from fracture.ml import ood
from fracture.ml.checkpoint import read_payload
from fracture.ml.net import OUTPUT_STRIDES, POOLINGS, ModelArgs, build_model, load_pretrained
from fracture.ml.preprocess import VIEWS, PreprocessSpec, normalize
from fracture.recipe import AUGMENTATIONS, FLOAT_FIELDS, FRAMINGS, INTENSITIES, RECIPE, draws_acquisition
from trainer import card
from trainer.augmentation import AcquisitionChange, TrainAugment
from trainer.augmented_batches import augmented_batches
from trainer.box_supervision import (
    BOX_CELLS,
    BOX_LOSSES,
    box_loss,
    box_weight_of,
    boxed_rows,
    framed_masks,
    pointing_game,
)
from trainer.decoded_images import batches
from trainer.metrics import binary_metrics
from trainer.prepared_data import Prepared, prepare_data, split_sizes
from trainer.split_evaluation import (
    FinalEvaluation,
    changed_copy,
    evaluate_split,
    final_evaluation,
    robustness_audit,
)
from trainer.train_val_test_split import POLICIES
from trainer.training_artifacts import write_artifacts
from trainer.training_state import (
    LogCallback,
    TrainingState,
    rescheduled,
    resume,
    save_last,
    start_training,
    weights_of,
)

SELECTION_SEED = 1  # the acquisition-changed copy of val an acquisition run is also selected on
EpochCallback = Callable[[int, int, dict[str, list[float]]], None]
# How the kept epoch is chosen (--select; see selected_on).
SELECTIONS = ("best", "last", "auc-pointing")


def get_args_parser() -> argparse.ArgumentParser:
    """Describe the options of `fracture train`."""
    p = argparse.ArgumentParser(description="Train the fracture CNN", add_help=True)
    # The defaults are the shipped release's recipe (fracture/release/README.md), so a retrain from the web
    # or a schedule trains a model comparable with the one it may replace.
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="dataset root: ROOT/{train,val,test}/{class}/ or ROOT/{class}/")
    data.add_argument("--data-spec", help='JSON list of datasets trained together: [{"name", "root", "members"}]')
    p.add_argument("--locked", default=None,
                   help='JSON list of locked evaluation datasets whose images are left out: [{"name", "hashes"}]')
    p.add_argument("--out", required=True, help="run folder for checkpoints, plots, model card")
    p.add_argument("--split", default="grouped", choices=POLICIES)
    p.add_argument("--arch", default="fracnet")
    p.add_argument("--width", default=RECIPE["width"], type=int)
    p.add_argument("--depths", default="1,1,2,1")
    p.add_argument("--output-stride", default=int(RECIPE["output_stride"]), type=int, choices=OUTPUT_STRIDES,
                   help="fracnet's last block's map is the input's side over this: 16 keeps the last stage at its "
                        "input's resolution with dilated convolutions (twice the heatmap's and the box loss's "
                        "resolution; 13%% more serving time on 2 CPU cores); --init may come from either stride")
    p.add_argument("--pooling", default=RECIPE["pooling"], choices=POOLINGS,
                   help="how fracnet's logit pools its class-activation map: mean (the global average) or lse "
                        "(log-mean-exp over the map's cells, led by the strongest: a small finding can carry the "
                        "score); --init may come from either")
    p.add_argument("--image-size", default=RECIPE["image_size"], type=int)
    p.add_argument("--epochs", default=RECIPE["epochs"], type=int)
    p.add_argument("--batch-size", default=64, type=int)
    p.add_argument("--lr", default=RECIPE["lr"], type=float,
                   help="the one-cycle schedule's peak learning rate (to fine-tune --init: a tenth to a quarter)")
    p.add_argument("--interpolate", default=RECIPE["interpolate"], type=float, metavar="ALPHA",
                   help="with --init: keep ALPHA of the selected epoch's weights and take 1 - ALPHA from --init's (a "
                        "weight-space ensemble of the fine-tune and the model it started from, WiSE-FT); 1: none")
    p.add_argument("--weight-decay", default=5e-4, type=float)
    p.add_argument("--min-sensitivity", default=0.96, type=float,
                   help="the sensitivity floor the threshold is chosen to meet (trainer.metrics.choose_threshold)")
    p.add_argument("--min-specificity", default=0.95, type=float, help="the specificity floor")
    p.add_argument("--ema", default=0.99, type=float,
                   help="decay of the weights' moving average that is evaluated and shipped (0: off)")
    p.add_argument("--views", default=RECIPE["views"], choices=VIEWS,
                   help="test-time views averaged when choosing the threshold, evaluating and serving")
    p.add_argument("--seed", default=RECIPE["seed"], type=int, help="seed of the weights, augmentation and order")
    p.add_argument("--split-seed", default=None, type=int,
                   help="seed of the grouped split (default: --seed); fix it to retrain on the same data")
    p.add_argument("--augment", default=RECIPE["augment"], choices=AUGMENTATIONS,
                   help="acquisition: margins, rotations, exposure, resolution, markers (trainer.acquisition); "
                        "acquisition-lossy: clipping windows and coarse resolutions twice as often")
    p.add_argument("--intensity", default=RECIPE["intensity"], choices=INTENSITIES,
                   help="per-image intensity normalisation, saved in the checkpoint and applied when serving: "
                        "equalize at the input size; equalize-full also on the decoded image, before the resize")
    p.add_argument("--framing", default=RECIPE["framing"], choices=FRAMINGS,
                   help="trim: crop uniform black or white bands at the edges before the network (saved in the "
                        "checkpoint and applied when serving)")
    p.add_argument("--weights", default=None, help="pretrained weights (file or torchvision name)")
    p.add_argument("--box-loss", default="share", choices=BOX_LOSSES,
                   help="what the box loss asks: share (the map's mass on the boxes' cells) or peak (only that the "
                        "map's highest cell lie in a box: what the pointing game scores)")
    p.add_argument("--box-cells", default="touched", choices=BOX_CELLS,
                   help="the map's cells the box loss counts as a box's: every cell it touches, or only those whose "
                        "peak, upsampled as the served heatmap is, lies in it (centres: what the pointing game "
                        "scores; a box holding no cell's peak keeps the cells it touches)")
    p.add_argument("--select", default="best", choices=SELECTIONS,
                   help="the epoch kept: the best on val (see the card's 'selected on'), the last (a fine-tune "
                        "whose first epochs are still the initial model's), or, with --boxes, the best on the mean "
                        "of that val score and the pointing game on val's boxed fractured images (auc-pointing: "
                        "an epoch that classifies well and points at fractures)")
    p.add_argument("--init", default=None,
                   help="start from the weights of this checkpoint (same architecture and channels; any input size "
                        "or output stride): a longer or fine-tuned training of a model; give it the data and split "
                        "it was trained on, or the val and test figures are not held out")
    p.add_argument("--boxes", default=None,
                   help="CSV of fracture boxes (md5,x0,y0,x1,y1, relative to the image; more rows for more boxes): "
                        "the fractured training images among them also teach the network where to look")
    p.add_argument("--box-weight", default=1.0, type=float,
                   help="weight of the box loss: -log of the share of the last layer's class-activation map "
                        "(softmax over its cells) that falls on the cells a box covers")
    p.add_argument("--max-minutes", default=None, type=float,
                   help="a time budget for the epochs: after the first, the epoch count (and the learning-rate "
                        "schedule) shrinks to what fits; the final evaluation comes on top")
    p.add_argument("--threads", default=0, type=int, help="torch CPU threads (0: all cores)")
    p.add_argument("--loader-workers", default=0, type=int,
                   help="processes that augment the coming batches while the network trains (0: in turn, in this "
                        "process); a run gives the same model whatever the number above 0, another than with 0")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--dry-run", action="store_true", help="one epoch on at most 64 images per split")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-robustness", dest="robustness", action="store_false",
                   help="skip the model card's robustness audit of the test split (trainer.robustness)")
    p.add_argument("--compare", default=None,
                   help="model_card.json of a run of the same recipe under the other split policy, shown side by side")
    return p


def train_one_epoch(model: nn.Module, data: Prepared, spec: PreprocessSpec, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler, augment: TrainAugment, device: torch.device,
                    batch_size: int, gen: torch.Generator, progress: bool,
                    ema: AveragedModel | None = None, box_weight: float = 0.0,
                    loader_workers: int = 0, box_kind: str = "share", box_cells: str = "touched"
                    ) -> tuple[float, float]:
    """One pass over train with augmentation (in `loader_workers` processes beside the training when > 0: see
    trainer.augmented_batches); returns (mean loss, accuracy at 0.5)."""
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model.train()
    rows = data.split_index["train"]
    loss_fn = nn.BCEWithLogitsLoss()
    total_loss, correct, seen = 0.0, 0, 0
    amp = device.type == "cuda"
    steps = batches(len(rows), batch_size, gen, shuffle=True)
    augmented = augmented_batches(data, spec, augment, rows, steps, gen, box_weight, loader_workers,
                                  pin_memory=device.type == "cuda")
    for batch, images, masks in tqdm(augmented, total=len(steps), desc="train", leave=False, disable=not progress):
        frames = None
        if masks is not None:  # the fracture boxes' masks cropped with the frame, as normalize crops the images
            frames, masks = framed_masks(images, masks, spec)
        x = normalize(images.to(device, non_blocking=True), spec, frames)
        x = x.contiguous(memory_format=memory_format)
        y = data.labels[batch].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if masks is not None:
                logits, cam = model.forward_cam(x)  # type: ignore[operator]  # FracNet (checked in main)
            else:
                logits = model(x)
        loss = loss_fn(logits.float(), y)
        if masks is not None:
            loss = loss + box_weight * box_loss(cam, masks.to(device), box_kind, box_cells)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            ema.update_parameters(model)
        total_loss += loss.item() * len(batch)
        correct += int(((logits.detach().float() > 0).float() == y).sum())
        seen += len(batch)
    return total_loss / max(seen, 1), correct / max(seen, 1)


def warm_start(model: nn.Module, margs: ModelArgs, spec: PreprocessSpec, init: str | Path) -> None:
    """Load a checkpoint's weights into `model`; ValueError when its architecture or input channels differ (its
    input size, intensity normalisation, output stride and pooling may: the networks are fully convolutional with
    a global pooling, the weights are the same shapes, and the training adapts them to this run's)."""
    payload = read_payload(init)
    theirs = replace(ModelArgs.from_dict(payload["model_args"]), output_stride=margs.output_stride,
                     pooling=margs.pooling)
    their_spec = PreprocessSpec.from_dict(payload["preprocess"])
    if theirs != margs or their_spec.channels != spec.channels:
        differ = [f"{k} {v} (this run: {getattr(margs, k)})" for k, v in vars(theirs).items() if getattr(margs, k) != v]
        if their_spec.channels != spec.channels:
            differ.append(f"input channels {their_spec.channels} (this run: {spec.channels})")
        raise ValueError(f"the weights to start from ({init}) are another network's: {', '.join(differ)}")
    model.load_state_dict(payload["state_dict"])


def interpolate(model: nn.Module, init: str | Path, alpha: float) -> None:
    """Blend `model`'s weights with the checkpoint it was fine-tuned from: alpha of its own, 1 - alpha of `init`'s,
    tensor by tensor (batch-norm statistics too; integer counters stay the model's). The two share one network
    (warm_start checked it), and a fine-tune stays near its start, where the straight line between them keeps the
    accuracy of both (Wortsman et al. 2022, robust fine-tuning of zero-shot models: WiSE-FT)."""
    theirs = read_payload(init)["state_dict"]
    mine = model.state_dict()
    model.load_state_dict({k: (alpha * v + (1 - alpha) * theirs[k].to(v)) if v.is_floating_point() else v
                           for k, v in mine.items()})


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's generators; return a generator of its own for the batches' order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_up(args: argparse.Namespace) -> tuple[Path, torch.device, torch.Generator]:
    """Make the run folder, set torch's CPU threads and the seeds: (run folder, device, the batches' generator)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = seed_everything(args.seed)
    return out, torch.device("cuda" if torch.cuda.is_available() else "cpu"), gen


def network_input(args: argparse.Namespace) -> tuple[PreprocessSpec, ModelArgs]:
    """Describe the network's input (the preprocessing the checkpoint carries) and its architecture."""
    channels = 1 if args.arch == "fracnet" else 3
    spec = PreprocessSpec(image_size=args.image_size, channels=channels,
                          mean=(0.5,) * channels, std=(0.25,) * channels, views=args.views,
                          intensity=getattr(args, "intensity", "none"), framing=getattr(args, "framing", "none"))
    margs = ModelArgs(arch=args.arch, width=args.width, depths=tuple(int(d) for d in args.depths.split(",")),
                      in_channels=channels, output_stride=getattr(args, "output_stride", 32),
                      pooling=getattr(args, "pooling", "mean"))
    return spec, margs


def load_data(args: argparse.Namespace, spec: PreprocessSpec, cache_dir: Path, out: Path,
              say: LogCallback) -> Prepared:
    """Prepare the run's data, write its audit to the run folder and say what it holds."""
    t0 = time.time()
    data = prepare_data(args, spec, cache_dir)
    (out / "audit.txt").write_text(data.report.render() + "\n")
    (out / "audit.json").write_text(json.dumps(data.report.to_dict(), indent=2))
    say(f"data ready in {time.time() - t0:.1f}s: {split_sizes(data)} distinct images ({args.split} split) from "
        f"{data.files}; left out as locked evaluation images: {data.locked['total']}; "
        f"{card.corrections_text(data.corrections)}")
    return data


def build_network(args: argparse.Namespace, margs: ModelArgs, spec: PreprocessSpec, device: torch.device,
                  say: LogCallback) -> nn.Module:
    """Build the network, load --weights or --init into it, and move it to the device."""
    if getattr(args, "select", "best") == "auc-pointing" and not box_weight_of(args):
        raise ValueError("--select auc-pointing needs --boxes (and a box weight): val's boxes measure the pointing")
    if getattr(args, "boxes", None) and args.arch != "fracnet":
        raise ValueError("--boxes needs the fracnet architecture (its class-activation map is what the boxes teach)")
    alpha, (low, high) = getattr(args, "interpolate", 1.0), FLOAT_FIELDS["interpolate"]
    if not low <= alpha <= high:  # the bounds a training from the product is checked against too
        raise ValueError(f"--interpolate must be from {low:g} to {high:g}, not {alpha:g}")
    if alpha < 1.0 and not getattr(args, "init", None):
        raise ValueError("--interpolate below 1 needs --init: it blends the fine-tune with the weights it started from")
    if margs.pooling != "mean" and args.arch != "fracnet":
        raise ValueError(f"--pooling {margs.pooling} needs the fracnet architecture "
                         "(it pools its class-activation map)")
    model = build_model(margs)
    if args.weights:
        load_pretrained(model, args.weights)
    if getattr(args, "init", None):
        warm_start(model, margs, spec, args.init)
        say(f"started from the weights of {args.init}")
    # channels_last pays on CUDA; on CPU, oneDNN's backward crashed (double free) on narrow layers.
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return model.to(device).to(memory_format=memory_format)  # type: ignore[call-overload]  # stubs lack memory_format


def train_epochs(args: argparse.Namespace, state: TrainingState, data: Prepared, spec: PreprocessSpec,
                 device: torch.device, last: Path, on_epoch: EpochCallback | None, say: LogCallback) -> None:
    """Train from the epoch `state` stands at to the last, selecting on val and saving last.pt after each."""
    augment = TrainAugment(args.image_size, args.augment, spec)
    box_weight = box_weight_of(args)
    if box_weight:
        say(f"box supervision: {len(boxed_rows(data, 'train'))} fractured training images with boxes, weight "
            f"{box_weight}; {len(boxed_rows(data, 'val'))} of val's measure the pointing game each epoch")
    # An acquisition run's changed copy of val, made once, when the first epoch selects on it.
    changed_val = functools.cache(lambda: changed_copy(data, "val", AcquisitionChange(SELECTION_SEED, spec)))
    t_train, first_epoch = time.time(), state.epoch
    while state.epoch < state.epochs:
        te = time.time()
        train = train_one_epoch(state.model, data, spec, state.opt, state.sched, augment, device, args.batch_size,
                                state.gen, not args.no_progress, state.ema, box_weight, args.loader_workers,
                                getattr(args, "box_loss", "share"), getattr(args, "box_cells", "touched"))
        figures = select_on_val(args, state, data, changed_val, spec, device, train, te)
        state.epoch += 1
        fit_time_budget(args, state, first_epoch, t_train, te, say)
        say(f"epoch {state.epoch}/{state.epochs} {figures} ({state.history['epoch_s'][-1]:.1f}s)")
        save_last(state, last)
        if on_epoch is not None:
            on_epoch(state.epoch, state.epochs, state.history)


def select_on_val(args: argparse.Namespace, state: TrainingState, data: Prepared, changed_val: Callable[[], Prepared],
                  spec: PreprocessSpec, device: torch.device, train: tuple[float, float], started: float) -> str:
    """Record the epoch's figures, keep its weights if it scores best on val so far; return its figures' text."""
    # The epoch is selected on one view (cheap, every epoch); the threshold and the reported figures
    # of the final evaluation use the served views.
    y, prob, va_loss = evaluate_split(state.served, data, "val", spec, device, views="identity")
    va = binary_metrics(y, prob, 0.5)
    for k, v in (("train_loss", train[0]), ("train_acc", train[1]), ("val_loss", va_loss),
                 ("val_acc", va["accuracy"]), ("val_auc", va["roc_auc"]), ("epoch_s", time.time() - started)):
        state.history[k].append(float(v))  # type: ignore[arg-type]  # metrics are floats
    auc = float(va["roc_auc"]) if not math.isnan(float(va["roc_auc"])) else 0.0  # type: ignore[arg-type]
    changed = ""
    score = auc
    if draws_acquisition(args.augment):
        auc_c = changed_val_auc(state.served, changed_val(), spec, device)
        state.history.setdefault("val_auc_changed", []).append(auc_c)
        score = (auc + auc_c) / 2
        changed = f" val_auc_changed {auc_c:.4f}"
    boxed = boxed_rows(data, "val") if box_weight_of(args) else None
    if boxed is not None and len(boxed):
        pointing = pointing_game(state.served, data, boxed, spec, device)
        state.history.setdefault("val_pointing", []).append(pointing)
        changed += f" val_pointing {pointing:.3f}"
        if getattr(args, "select", "best") == "auc-pointing":
            score = (score + pointing) / 2
    if score > state.best["auc"] or (score == state.best["auc"] and va_loss < state.best["loss"]):
        state.best = {"auc": score, "loss": va_loss, "epoch": state.epoch + 1, "state": weights_of(state.served)}
    return (f"train_loss {train[0]:.4f} train_acc {train[1]:.4f} val_loss {va_loss:.4f} "
            f"val_acc {va['accuracy']:.4f} selection val_auc (one view) {auc:.4f}{changed}")


def changed_val_auc(served: nn.Module, changed_val: Prepared, spec: PreprocessSpec, device: torch.device) -> float:
    """Score the served network's ROC-AUC (one view) on the acquisition-changed copy of val; 0 when undefined.

    An acquisition run is selected on val as it is and on this one fixed changed copy (the same every epoch): an
    epoch that forgets the invariance is not the one kept."""
    y_c, prob_c, _ = evaluate_split(served, changed_val, "val", spec, device, views="identity")
    auc_c = float(binary_metrics(y_c, prob_c, 0.5)["roc_auc"])  # type: ignore[arg-type]
    return 0.0 if math.isnan(auc_c) else auc_c


def fit_time_budget(args: argparse.Namespace, state: TrainingState, first_epoch: int, t_train: float, te: float,
                    say: LogCallback) -> None:
    """After this process's first epoch, shrink the epoch count and the schedule to what --max-minutes fits."""
    if not (getattr(args, "max_minutes", None) and state.epoch == first_epoch + 1 and state.epoch < state.epochs):
        return
    fits = first_epoch + int((args.max_minutes * 60 - (time.time() - t_train)) / (time.time() - te)) + 1
    if fits < state.epochs:
        say(f"--max-minutes {args.max_minutes:g}: {max(fits, state.epoch)} epochs fit, not {state.epochs}")
        state.epochs = max(fits, state.epoch)
        state.sched = rescheduled(state.opt, args.lr, state.epochs, state.steps_per_epoch, state.epoch)


def keep_selected_epoch(args: argparse.Namespace, state: TrainingState) -> None:
    """Load the kept epoch's weights into the network: the best on val, or the last with --select last."""
    if getattr(args, "select", "best") == "last":
        state.best = {"auc": None, "loss": None, "epoch": state.epochs, "state": weights_of(state.served)}
    state.model.load_state_dict(state.best["state"])
    if getattr(args, "interpolate", 1.0) < 1.0:
        interpolate(state.model, args.init, args.interpolate)


def selected_on(args: argparse.Namespace) -> str:
    """How the kept epoch was chosen, in words (the card's 'selected on')."""
    select = getattr(args, "select", "best")
    auc = ("val ROC-AUC, one view: the mean of val as it is and of an acquisition-changed copy"
           if draws_acquisition(args.augment) else "val ROC-AUC, one view")
    how = ("the last epoch (--select last)" if select == "last" else
           f"the mean of {auc} and the pointing game on val's boxed fractured images (--select auc-pointing)"
           if select == "auc-pointing" else auc)
    alpha = getattr(args, "interpolate", 1.0)
    return how + (f"; then {alpha:g} of its weights and {1 - alpha:g} of --init's (--interpolate {alpha:g})"
                  if alpha < 1.0 else "")


def evaluate_selected(args: argparse.Namespace, state: TrainingState, data: Prepared, spec: PreprocessSpec,
                      device: torch.device, say: LogCallback) -> FinalEvaluation:
    """Evaluate the kept network as served on every split, and record in its metrics how it was selected."""
    curves, threshold, metrics, detector = final_evaluation(state.model, data, spec, device, args.min_sensitivity,
                                                            args.min_specificity, draws_acquisition(args.augment))
    metrics["selected_epoch"] = state.best["epoch"]
    metrics["selected_on"] = selected_on(args)
    metrics["split_policy"] = args.split
    metrics["served_views"] = spec.views  # what the val ROC-AUC above measures (fracture.val_auc)
    if "val" in metrics:
        say(f"selected epoch {state.best['epoch']}; {val_auc.served_text(metrics['val']['roc_auc'], spec.views)}")
    if data.corrections["offered"]:  # the models page lists these beside the selected epoch
        metrics["corrections"] = data.corrections["used"]
        metrics["corrections_relabelled"] = data.corrections["relabelled"]
    return curves, threshold, metrics, detector


def audit_robustness(model: nn.Module, margs: ModelArgs, spec: PreprocessSpec, data: Prepared, threshold: float,
                     detector: ood.Detector | None, device: torch.device, say: LogCallback) -> dict[str, Any]:
    """Audit the model as served on the test split under acquisition changes (the model card's table)."""
    t_audit = time.time()
    robustness = robustness_audit(model, margs, spec, data, threshold, detector, device)
    say(f"robustness audit of the test split under {len(robustness['rows'])} acquisition changes "
        f"in {time.time() - t_audit:.0f}s: worst {robustness['worst']}")
    return robustness


def main(args: argparse.Namespace, on_epoch: EpochCallback | None = None,
         cache_dir: Path | None = None, log: LogCallback | None = None) -> dict[str, Any]:
    """Run one training and return a summary (paths of the artifacts and the metrics); progress lines go to `log`."""
    say = log or (lambda line: print(line, file=sys.stderr))
    out, device, gen = set_up(args)
    spec, margs = network_input(args)
    t0 = time.time()
    data = load_data(args, spec, cache_dir if cache_dir is not None else out / "cache", out, say)
    model = build_network(args, margs, spec, device, say)
    state = start_training(args, model, data, gen)
    if args.resume and (out / "last.pt").is_file():
        resume(state, out / "last.pt", say)
    train_epochs(args, state, data, spec, device, out / "last.pt", on_epoch, say)
    keep_selected_epoch(args, state)
    evaluation = evaluate_selected(args, state, data, spec, device, say)
    _, threshold, metrics, detector = evaluation
    if getattr(args, "robustness", True) and len(data.split_index["test"]):
        metrics["robustness"] = audit_robustness(state.model, margs, spec, data, threshold, detector, device, say)
    return write_artifacts(args, out, state, margs, spec, data, evaluation, device, t0)
