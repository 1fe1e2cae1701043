"""Train the CNN: select the epoch and threshold on val, evaluate on train/val/test, write artifacts.

Reads top to bottom: get_args_parser, prepare_data, train_one_epoch, evaluate_split, main.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from fracture import val_auc
from fracture.checkpoint import POSITIVE_CLASS, read_payload, save_checkpoint
from fracture.net import ModelArgs, build_model, load_pretrained
from fracture.preprocess import VIEWS, PreprocessSpec, normalize
from fracture.recipe import AUGMENTATIONS, INTENSITIES, RECIPE
from trainer import card, plots
from trainer.augmentation import AcquisitionChange, TrainAugment
from trainer.decoded_images import batches
from trainer.metrics import binary_metrics
from trainer.prepared_data import Prepared, prepare_data
from trainer.split_evaluation import changed_copy, evaluate_split, final_evaluation, robustness_audit, test_members
from trainer.train_val_test_split import POLICIES

SELECTION_SEED = 1  # the acquisition-changed copy of val an acquisition run is also selected on
EpochCallback = Callable[[int, int, dict[str, list[float]]], None]
LogCallback = Callable[[str], None]


def get_args_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--image-size", default=RECIPE["image_size"], type=int)
    p.add_argument("--epochs", default=RECIPE["epochs"], type=int)
    p.add_argument("--batch-size", default=64, type=int)
    p.add_argument("--lr", default=2e-3, type=float)
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
                   help="acquisition: margins, rotations, exposure, resolution, markers (trainer.acquisition)")
    p.add_argument("--intensity", default=RECIPE["intensity"], choices=INTENSITIES,
                   help="per-image intensity normalisation, saved in the checkpoint and applied when serving")
    p.add_argument("--weights", default=None, help="pretrained weights (file or torchvision name)")
    p.add_argument("--select", default="best", choices=("best", "last"),
                   help="the epoch kept: the best on val (see the card's 'selected on'), or the last (a fine-tune "
                        "whose first epochs are still the initial model's)")
    p.add_argument("--init", default=None,
                   help="start from the weights of this checkpoint (same architecture and input size): a longer "
                        "or fine-tuned training of a model; give it the data and split it was trained on, or the "
                        "val and test figures are not held out")
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
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--dry-run", action="store_true", help="one epoch on at most 64 images per split")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-robustness", dest="robustness", action="store_false",
                   help="skip the model card's robustness audit of the test split (trainer.robustness)")
    p.add_argument("--compare", default=None,
                   help="model_card.json of a run of the same recipe under the other split policy, shown side by side")
    return p


def box_loss(cam: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """-log of the share of each map (softmax over its cells) on the cells its box mask covers, averaged over the
    images whose box survived the augmentation; 0 when none did."""
    cells = F.adaptive_max_pool2d((masks > 127).float(), cam.shape[-2:]).flatten(1)
    keep = cells.sum(1) > 0
    if not bool(keep.any()):
        return cam.sum() * 0.0
    share = (torch.softmax(cam.flatten(1)[keep].float(), 1) * cells[keep]).sum(1)
    return -torch.log(share.clamp_min(1e-6)).mean()


def train_one_epoch(model: nn.Module, data: Prepared, spec: PreprocessSpec, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler, augment: TrainAugment, device: torch.device,
                    batch_size: int, gen: torch.Generator, progress: bool,
                    ema: AveragedModel | None = None, box_weight: float = 0.0) -> tuple[float, float]:
    """One pass over train with augmentation; returns (mean loss, accuracy at 0.5)."""
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model.train()
    rows = data.split_index["train"]
    loss_fn = nn.BCEWithLogitsLoss()
    total_loss, correct, seen = 0.0, 0, 0
    amp = device.type == "cuda"
    steps = batches(len(rows), batch_size, gen, shuffle=True)
    for idx in tqdm(steps, desc="train", leave=False, disable=not progress):
        if len(idx) < 2:
            continue
        batch = rows[idx]
        masks = None
        if data.box_index is not None and data.box_masks is not None and box_weight > 0:
            which = data.box_index[batch]
            masks = torch.zeros((len(batch), 1, spec.image_size, spec.image_size), dtype=torch.uint8)
            masks[which >= 0] = data.box_masks[which[which >= 0]]
        images, masks = augment.with_masks(data.images[batch], masks)
        x = normalize(images.to(device, non_blocking=True), spec)
        x = x.contiguous(memory_format=memory_format)
        y = data.labels[batch].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if masks is not None:
                logits, cam = model.forward_cam(x)  # type: ignore[operator]  # FracNet (checked in main)
            else:
                logits = model(x)
        loss = loss_fn(logits.float(), y)
        if masks is not None:
            loss = loss + box_weight * box_loss(cam, masks.to(device))
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
    """Load a checkpoint's weights into `model`; ValueError when its architecture or input size differ (its
    intensity normalisation may: the training adapts the weights to this run's)."""
    payload = read_payload(init)
    theirs = ModelArgs.from_dict(payload["model_args"])
    their_spec = PreprocessSpec.from_dict(payload["preprocess"])
    if theirs != margs or (their_spec.image_size, their_spec.channels) != (spec.image_size, spec.channels):
        raise ValueError(f"--init {init}: its network {theirs} and input {their_spec} are not this run's "
                         f"({margs}, {spec})")
    model.load_state_dict(payload["state_dict"])


def rescheduled(opt: torch.optim.Optimizer, lr: float, epochs: int, steps_per_epoch: int,
                done: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The one-cycle schedule of `epochs` epochs, advanced past the `done` epochs already trained (--max-minutes
    shortens a run's schedule after its first epoch)."""
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    with warnings.catch_warnings():  # the optimizer's steps were taken already: only the schedule moves on
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(done * steps_per_epoch):
            sched.step()
    return sched


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def main(args: argparse.Namespace, on_epoch: EpochCallback | None = None,
         cache_dir: Path | None = None, log: LogCallback | None = None) -> dict[str, Any]:
    """Run one training and return a summary (paths of the artifacts and the metrics); progress lines go to `log`."""
    say = log or (lambda line: print(line, file=sys.stderr))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = seed_everything(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    channels = 1 if args.arch == "fracnet" else 3
    spec = PreprocessSpec(image_size=args.image_size, channels=channels,
                          mean=(0.5,) * channels, std=(0.25,) * channels, views=args.views,
                          intensity=getattr(args, "intensity", "none"))
    margs = ModelArgs(arch=args.arch, width=args.width, depths=tuple(int(d) for d in args.depths.split(",")),
                      in_channels=channels)
    progress = not args.no_progress

    t0 = time.time()
    data = prepare_data(args, spec, cache_dir if cache_dir is not None else out / "cache")
    (out / "audit.txt").write_text(data.report.render() + "\n")
    (out / "audit.json").write_text(json.dumps(data.report.to_dict(), indent=2))
    sizes = {k: len(v) for k, v in data.split_index.items()}
    say(f"data ready in {time.time() - t0:.1f}s: {sizes} distinct images ({args.split} split) from {data.files}; "
        f"left out as locked evaluation images: {data.locked['total']}; {card.corrections_text(data.corrections)}")

    if getattr(args, "boxes", None) and args.arch != "fracnet":
        raise ValueError("--boxes needs the fracnet architecture (its class-activation map is what the boxes teach)")
    model = build_model(margs)
    if args.weights:
        load_pretrained(model, args.weights)
    if getattr(args, "init", None):
        warm_start(model, margs, spec, args.init)
        say(f"started from the weights of {args.init}")
    # channels_last pays on CUDA; on CPU, oneDNN's backward crashed (double free) on narrow layers.
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(device).to(memory_format=memory_format)  # type: ignore[call-overload]  # stubs lack memory_format
    epochs = 1 if args.dry_run else args.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(data.split_index["train"]) / args.batch_size))
    sched = rescheduled(opt, args.lr, epochs, steps_per_epoch, done=0)
    history: dict[str, list[float]] = {k: [] for k in
                                       ("train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "epoch_s")}
    best: dict[str, Any] = {"auc": -1.0, "loss": math.inf, "epoch": 0, "state": None}
    # An exponential moving average of the weights (batch-norm statistics included) is steadier
    # than the raw weights on this small, noisy data; it is what gets evaluated and shipped.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True) if args.ema else None
    served: nn.Module = ema.module if ema is not None else model
    start_epoch = 0
    last = out / "last.pt"
    if args.resume and last.is_file():
        state = torch.load(last, weights_only=True)
        model.load_state_dict(state["model"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"]
        epochs = state.get("epochs", epochs)
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        say(f"resumed after epoch {start_epoch}")

    augment = TrainAugment(args.image_size, args.augment)
    box_weight = args.box_weight if getattr(args, "boxes", None) else 0.0
    if box_weight:
        n_boxed = int((data.box_index >= 0).sum()) if data.box_index is not None else 0
        say(f"box supervision: {n_boxed} fractured training images with boxes, weight {box_weight}")
    changed_val: Prepared | None = None  # an acquisition run's changed copy of val, made once
    t_train = time.time()
    epoch = start_epoch
    while epoch < epochs:
        te = time.time()
        tr_loss, tr_acc = train_one_epoch(model, data, spec, opt, sched, augment, device, args.batch_size, gen,
                                          progress, ema, box_weight)
        # The epoch is selected on one view (cheap, every epoch); the threshold and the reported figures
        # below use the served views.
        y, prob, va_loss = evaluate_split(served, data, "val", spec, device, views="identity")
        va = binary_metrics(y, prob, 0.5)
        for k, v in (("train_loss", tr_loss), ("train_acc", tr_acc), ("val_loss", va_loss),
                     ("val_acc", va["accuracy"]), ("val_auc", va["roc_auc"]), ("epoch_s", time.time() - te)):
            history[k].append(float(v))  # type: ignore[arg-type]  # metrics are floats
        auc = float(va["roc_auc"]) if not math.isnan(float(va["roc_auc"])) else 0.0  # type: ignore[arg-type]
        changed = ""
        score = auc
        if args.augment == "acquisition":
            # Selected on val as it is and on one fixed acquisition-changed copy of it (the same copy every epoch):
            # an epoch that forgets the invariance is not the one kept.
            if changed_val is None:
                changed_val = changed_copy(data, "val", AcquisitionChange(SELECTION_SEED))
            y_c, prob_c, _ = evaluate_split(served, changed_val, "val", spec, device, views="identity")
            auc_c = float(binary_metrics(y_c, prob_c, 0.5)["roc_auc"])  # type: ignore[arg-type]
            auc_c = 0.0 if math.isnan(auc_c) else auc_c
            history.setdefault("val_auc_changed", []).append(auc_c)
            score = (auc + auc_c) / 2
            changed = f" val_auc_changed {auc_c:.4f}"
        if score > best["auc"] or (score == best["auc"] and va_loss < best["loss"]):
            best = {"auc": score, "loss": va_loss, "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in served.state_dict().items()}}
        epoch += 1
        if getattr(args, "max_minutes", None) and epoch == start_epoch + 1 and epoch < epochs:
            fits = start_epoch + int((args.max_minutes * 60 - (time.time() - t_train)) / (time.time() - te)) + 1
            if fits < epochs:
                say(f"--max-minutes {args.max_minutes:g}: {max(fits, epoch)} epochs fit, not {epochs}")
                epochs = max(fits, epoch)
                sched = rescheduled(opt, args.lr, epochs, steps_per_epoch, epoch)
        say(f"epoch {epoch}/{epochs} train_loss {tr_loss:.4f} train_acc {tr_acc:.4f} val_loss {va_loss:.4f} "
            f"val_acc {va['accuracy']:.4f} selection val_auc (one view) {auc:.4f}{changed} "
            f"({history['epoch_s'][-1]:.1f}s)")
        torch.save({"model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                    "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "history": history, "best": best, "epoch": epoch, "epochs": epochs, "gen": gen.get_state(),
                    "torch_rng": torch.get_rng_state()}, last)
        if on_epoch is not None:
            on_epoch(epoch, epochs, history)

    if getattr(args, "select", "best") == "last":
        best = {"auc": None, "loss": None, "epoch": epochs,
                "state": {k: v.detach().clone() for k, v in served.state_dict().items()}}
    model.load_state_dict(best["state"])
    curves, threshold, metrics, detector = final_evaluation(model, data, spec, device, args.min_sensitivity,
                                                            args.min_specificity, args.augment == "acquisition")
    metrics["selected_epoch"] = best["epoch"]
    metrics["selected_on"] = ("the last epoch (--select last)" if getattr(args, "select", "best") == "last" else
                              "val ROC-AUC, one view: the mean of val as it is and of an acquisition-changed copy"
                              if args.augment == "acquisition" else "val ROC-AUC, one view")
    metrics["split_policy"] = args.split
    metrics["served_views"] = spec.views  # what the val ROC-AUC above measures (fracture.val_auc)
    if "val" in metrics:
        say(f"selected epoch {best['epoch']}; {val_auc.served_text(metrics['val']['roc_auc'], spec.views)}")
    if data.corrections["offered"]:  # the models page lists these beside the selected epoch
        metrics["corrections"] = data.corrections["used"]
        metrics["corrections_relabelled"] = data.corrections["relabelled"]

    if getattr(args, "robustness", True) and len(data.split_index["test"]):
        t_audit = time.time()
        metrics["robustness"] = robustness_audit(model, margs, spec, data, threshold, detector, device)
        say(f"robustness audit of the test split under {len(metrics['robustness']['rows'])} acquisition changes "
            f"in {time.time() - t_audit:.0f}s: worst {metrics['robustness']['worst']}")
    plot_files = plots.write_all(out / "plots", history, curves, metrics)
    # --resume continues the same run to the same result, so the command that reproduces it leaves it out.
    command = "fracture train " + " ".join(shlex.quote(a) for a in getattr(args, "argv", []) if a != "--resume")
    ckpt = out / "model.pt"
    sha = save_checkpoint(
        ckpt, model.cpu(), margs, spec, data.classes, threshold,
        positive_class=POSITIVE_CLASS if POSITIVE_CLASS in data.classes else data.classes[0],
        metrics=metrics, data_fingerprint=data.fingerprint, detector=detector,
        extra={"split_policy": args.split, "selection_metric": metrics.get("val", {}).get("roc_auc"),
               "history": history, "command": command, "seed": args.seed,
               "split_seed": args.seed if args.split_seed is None else args.split_seed,
               "augment": args.augment, "ood_acquisition": args.augment == "acquisition",
               "init": str(args.init) if getattr(args, "init", None) else None,
               "boxes": str(args.boxes) if box_weight else None, "box_weight": box_weight or None},
    )
    summary = {"checkpoint": str(ckpt), "sha256": sha, "metrics": metrics, "threshold": threshold,
               "history": history, "plots": {k: str(v) for k, v in plot_files.items()},
               "data_fingerprint": data.fingerprint, "audit": data.report.to_dict(), "split_sizes": sizes,
               "command": command, "model_args": margs.to_dict(), "preprocess": spec.to_dict(),
               "seconds": time.time() - t0, "device": device.type, "datasets": data.files,
               "locked_out": data.locked, "corrections": data.corrections, "splits": {"test": test_members(data)}}
    compare = json.loads(Path(args.compare).read_text()) if getattr(args, "compare", None) else None
    card.write(out, summary, compare)
    return summary
