"""The training and evaluation loops every stage reuses.

- :func:`train_one_epoch` runs one epoch of a stage's ``loss_fn`` (AMP, per-iteration or per-epoch
  schedule, exact epoch means across ranks, a clear stop on a non-finite loss).
- :func:`evaluate` gives accuracy, mean per-class accuracy, loss and the confusion matrix (and VAD
  regression statistics when the model predicts VAD), exact under DDP: each rank evaluates its
  shard, and counts and sums, never averages, are all-reduced.
- :class:`Trainer` holds what a training stage is made of (model on its device, its DDP wrapper, the
  objective, optimiser, schedule, AMP settings and checkpoint metadata); :meth:`Trainer.fit` is the
  epoch loop: resume, train, evaluate, keep the best, write checkpoint-last / checkpoint-best
  atomically, log. :meth:`Trainer.evaluate_checkpoint` is ``--eval``.

An *objective* is what a stage optimises: ``objective(model, batch) -> (loss, parts, outputs)`` and
``objective.predict(model, batch) -> {"logits"[, "vad"]}`` (utils/objectives.py).
"""

import contextlib
import json
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from utils import distributed as du
from utils.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, write_json
from utils.errors import UserError
from utils.files import hold_folder
from utils.labels import VAD_NAMES
from utils.log import RunLogger, StepLines, format_line, progress
from utils.metrics import RegressionStats, classification_summary, confusion_counts, save_confusion_matrix


# --------------------------------------------------------------------------- device helpers
def amp_setup(device: torch.device, enabled: bool):
    """(autocast dtype or None, GradScaler or None): bf16 where the GPU supports it, else fp16 + scaler."""
    if not enabled or device.type != "cuda":
        if enabled:
            print("--amp is ignored on CPU; running in fp32.")
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler(device.type)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: dict, device: torch.device, channels_last: bool = False) -> dict:
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            value = value.to(device, non_blocking=True)
            if channels_last and value.dim() == 4:
                value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


class NonFiniteLoss(UserError):
    pass


def build_optimizer(args, parameters) -> torch.optim.Optimizer:
    """Adam with the paper's betas (0.5, 0.999) over the trainable parameters."""
    trainable = [p for p in parameters if p.requires_grad]
    return torch.optim.Adam(trainable, lr=args.lr, betas=(0.5, 0.999), weight_decay=args.weight_decay)


def build_scheduler(args, optimizer):
    """(scheduler, per_iteration): the reference's CosineAnnealingLR(T_max=5) stepped every iteration,
    so the lr swings between lr and 0 every 10 iterations, or an ordinary per-epoch cosine."""
    if args.lr_schedule == "reference":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5, eta_min=0), True
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs, eta_min=0), False


# --------------------------------------------------------------------------- one epoch
def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler=None) -> None:
    """Backward and one optimiser step (through the GradScaler under fp16 autocast)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def train_one_epoch(
    model,
    loss_fn,
    loader,
    optimizer,
    device: torch.device,
    epoch: int,
    scheduler=None,
    per_iteration: bool = True,
    scaler=None,
    amp_dtype=None,
    channels_last: bool = False,
    print_freq: int = 0,
) -> dict:
    """Train one epoch. ``loss_fn(model, batch) -> (loss, parts, outputs)`` where ``parts`` maps names
    to detached scalar tensors (logged as ``train_<name>``) and ``outputs`` holds ``logits`` (train
    accuracy) and, for the multi-task model, ``vad`` (train VAD statistics).

    Returns epoch means over every sample of every rank, the lr, images/s and skipped images. When stdout
    is not a terminal, a progress line every ``print_freq`` steps (:class:`utils.log.StepLines`).
    """
    model.train()
    sums, names, vad_stats = None, None, None
    correct = seen = skipped = 0
    lines = StepLines(f"epoch {epoch}", len(loader), print_freq, device, du.get_world_size())
    start = time.perf_counter()
    for step, batch in enumerate(progress(loader, desc=f"epoch {epoch}")):
        skipped += batch.pop("skipped", 0)
        if "image" not in batch:
            continue
        batch = to_device(batch, device, channels_last)
        with autocast(device, amp_dtype):
            loss, parts, outputs = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                f"the training loss became {loss.item()} at epoch {epoch}, step {step}; the run "
                f"stops and checkpoint-last.pth is the last good state (lower --lr or check the data)."
            )
        optimizer_step(loss, optimizer, scaler)
        if scheduler is not None and per_iteration:
            scheduler.step()
        n = batch["label"].shape[0]
        values = torch.stack([loss.detach().float()] + [p.detach().float() for p in parts.values()])
        if sums is None:
            names = ["loss"] + list(parts)
            sums = torch.zeros(len(names), dtype=torch.float64, device=device)
        sums += values.double() * n
        correct += (outputs["logits"].argmax(1) == batch["label"]).sum()
        seen += n
        lines.count(n)
        if lines.due(step):
            lines.show(step, dict(zip(names, values.tolist())) | {"lr": current_lr(optimizer)})
        if "vad" in outputs:
            vad_stats = RegressionStats(3, VAD_NAMES, device) if vad_stats is None else vad_stats
            vad_stats.update(outputs["vad"].detach().float(), batch["vad"])
    elapsed = time.perf_counter() - start
    lr = current_lr(optimizer)  # the epoch's lr (before a per-epoch schedule moves it)
    if scheduler is not None and not per_iteration:
        scheduler.step()
    if sums is None:
        raise UserError(
            "the training loader gave no batch; the training set is smaller than --batch_size "
            "(batches are full-size only) or every image was skipped."
        )
    counts = torch.tensor([float(correct), seen, skipped], dtype=torch.float64, device=device)
    du.all_reduce_sum(sums)
    du.all_reduce_sum(counts)
    total = counts[1].item()
    result = {f"train_{name}": (s / total).item() for name, s in zip(names, sums)}
    result["train_acc"] = 100.0 * counts[0].item() / total
    result["lr"] = lr
    result["train_images_per_s"] = total / elapsed
    if counts[2].item():
        result["train_skipped_images"] = int(counts[2].item())
    if vad_stats is not None:
        result.update({f"train_{k}": v for k, v in reduce_vad(vad_stats, device).items()})
    return result


def reduce_vad(stats: RegressionStats, device: torch.device) -> dict:
    """Per-dimension VAD metrics (``valence_mse`` ... ``dominance_ccc``) from statistics summed over every rank."""
    flat = stats.as_tensor().to(device)
    du.all_reduce_sum(flat)
    return RegressionStats.from_tensor(flat.cpu(), 3, VAD_NAMES).as_dict()


@torch.no_grad()
def evaluate(
    model, predict_fn, loader, device: torch.device, classes: list, amp_dtype=None, channels_last: bool = False
) -> dict:
    """Evaluate ``predict_fn(model, batch) -> {"logits"[, "vad"]}`` over a sharded loader.

    Returns ``loss``, ``acc``, ``mean_class_acc`` (percent), ``confusion`` (C x C tensor, rows true)
    and ``report`` (per-class precision/recall/F1); with VAD predictions also per-dimension MSE,
    MAE, Pearson r and CCC.
    """
    model.eval()
    num_classes = len(classes)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
    vad_stats = None
    for batch in progress(loader, desc="eval"):
        loss_sum[1] += batch.pop("skipped", 0)
        if "image" not in batch:
            continue
        batch = to_device(batch, device, channels_last)
        with autocast(device, amp_dtype):
            out = predict_fn(model, batch)
        logits = out["logits"].float()
        labels = batch["label"]
        loss_sum[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        confusion += confusion_counts(labels, logits.argmax(1), num_classes).double()
        if "vad" in out:
            vad_stats = RegressionStats(3, VAD_NAMES, device) if vad_stats is None else vad_stats
            vad_stats.update(out["vad"].float(), batch["vad"])
    du.all_reduce_sum(confusion)
    du.all_reduce_sum(loss_sum)
    confusion = confusion.round().long().cpu()
    total = int(confusion.sum())
    if total == 0:
        raise UserError("the evaluation split gave no readable image.")
    summary = classification_summary(confusion.numpy(), classes)
    result = {
        "loss": loss_sum[0].item() / total,
        "acc": 100.0 * summary["accuracy"],
        "mean_class_acc": 100.0 * summary["mean_class_accuracy"],
        "macro_f1": 100.0 * summary["macro_f1"],
        "confusion": confusion,
        "report": summary["per_class"],
        "images": total,
    }
    if loss_sum[1].item():
        result["skipped_images"] = int(loss_sum[1].item())
    if vad_stats is not None:
        result.update(reduce_vad(vad_stats, device))
    return result


def scalars(prefix: str, result: dict) -> dict:
    """The loggable numbers of an evaluation result, prefixed (``eval_acc`` ...)."""
    return {f"{prefix}_{k}": v for k, v in result.items() if isinstance(v, (int, float))}


def metrics_path(output_dir: str, split: str) -> str:
    return os.path.join(output_dir, "metrics.json" if split == "eval" else f"metrics_{split}.json")


def write_eval_report(output_dir: str, split: str, result: dict, classes: list, extra: dict | None = None) -> None:
    """metrics.json + confusion_matrix.csv/.png for one evaluated split (rank 0 only)."""
    if not du.is_main_process():
        return
    os.makedirs(output_dir, exist_ok=True)
    metrics = {
        "split": split,
        **{k: v for k, v in result.items() if k not in ("confusion",)},
        "classes": list(classes),
        "confusion": result["confusion"].tolist(),
        **(extra or {}),
    }
    write_json(metrics_path(output_dir, split), metrics)
    suffix = "" if split == "eval" else f"_{split}"
    save_confusion_matrix(
        result["confusion"].numpy(),
        classes,
        os.path.join(output_dir, f"confusion_matrix{suffix}.csv"),
        os.path.join(output_dir, f"confusion_matrix{suffix}.png"),
    )


# --------------------------------------------------------------------------- model selection
def selection_summary(history: list, best: dict, splits) -> dict:
    """The chosen epoch and what it gives on every evaluated split, next to each split's own best epoch.

    ``best`` names the epoch chosen by ``best["metric"]`` (``val_acc``, else ``eval_acc``). For each split:
    ``acc_at_selected_epoch`` (the honest figure on a split that did not choose) and ``best_epoch`` /
    ``acc_at_best_epoch`` (the split's maximum over epochs: what a paper that picks its epoch on the test
    set reports; optimistic). The earliest epoch wins a tie.
    """
    chosen = next(r for r in history if r["epoch"] == best["epoch"])
    summary = {"selected_on": best["metric"].removesuffix("_acc"), **best, "splits": {}}
    for split in splits:
        key = f"{split}_acc"
        rows = [r for r in history if r.get(key) is not None]
        if not rows:
            continue
        top = max(rows, key=lambda r: r[key])
        summary["splits"][split] = {
            "acc_at_selected_epoch": chosen.get(key),
            "best_epoch": top["epoch"],
            "acc_at_best_epoch": top[key],
        }
    return summary


def selection_columns(summary: dict) -> dict:
    """Per-epoch log columns for the splits that did not choose: ``<split>_acc_at_selected_epoch`` and,
    labelled, ``<split>_acc_max_over_epochs`` (the best-test-epoch figure papers report)."""
    columns = {}
    for split, figures in summary["splits"].items():
        if split != summary["selected_on"]:
            columns[f"{split}_acc_at_selected_epoch"] = figures["acc_at_selected_epoch"]
            columns[f"{split}_acc_max_over_epochs"] = figures["acc_at_best_epoch"]
    return columns


def selection_line(summary: dict) -> str:
    """One sentence: the chosen epoch, the reported splits there and, labelled, at their own best epochs."""

    def number(value):
        return "n/a" if value is None else f"{value:.2f}"

    on = summary["selected_on"]
    text = f"best epoch {summary['epoch']} by {summary['metric']} {number(summary['value'])}"
    reported = {s: f for s, f in summary["splits"].items() if s != on}
    if reported:
        text += "; there " + ", ".join(f"{s}_acc {number(f['acc_at_selected_epoch'])}" for s, f in reported.items())
        text += "; best epoch of each split itself (what papers report, optimistic): " + ", ".join(
            f"{s}_acc {number(f['acc_at_best_epoch'])} at epoch {f['best_epoch']}" for s, f in reported.items()
        )
    if on == "eval" and not reported:  # with a --test_data_path the eval split is the validation split
        text += (
            " (chosen on the eval split itself, as published FER results are: optimistic; --val_split F "
            "chooses on held-out training images instead)"
        )
    return text


def update_selection(output_dir: str, splits, summary: dict) -> None:
    """Put ``summary`` into the metrics JSON of each split (written at the chosen epoch) (rank 0)."""
    for split in splits:
        path = metrics_path(output_dir, split)
        if os.path.isfile(path):
            with open(path) as handle:
                metrics = json.load(handle)
            metrics["selection"] = summary
            write_json(path, metrics)


# --------------------------------------------------------------------------- the stage
class Trainer:
    """What a training stage is made of, and its epoch loop.

    Built once per run by the stage script: ``model`` goes to ``args.device_obj`` (channels_last when
    asked) and is wrapped for DDP in a multi-process run; the optimiser (Adam, betas 0.5/0.999), the
    schedule (``--lr_schedule``) and the AMP settings follow ``args``. ``objective`` is the stage's loss
    (``objective(model, batch) -> (loss, parts, outputs)``, ``objective.predict(model, batch)``);
    ``meta`` holds the plain-typed metadata every checkpoint carries (classes, input size, mean, std,
    model kind, hashes ...). ``select_metric`` chooses the best epoch (default ``val_acc`` when there is a
    validation split, else ``eval_acc``); ``on_epoch_end(history, best)`` writes stage-specific records on
    rank 0.
    """

    def __init__(self, args, model: nn.Module, objective, meta: dict, select_metric=None, on_epoch_end=None):
        self.args = args
        self.device = args.device_obj
        model = model.to(self.device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ddp_model = du.wrap_ddp(model, self.device)
        self.objective = objective
        self.optimizer = build_optimizer(args, model.parameters())
        self.scheduler, self.per_iteration = build_scheduler(args, self.optimizer)
        self.amp_dtype, self.scaler = amp_setup(self.device, args.amp)
        self.meta = meta
        self.select_metric = select_metric
        self.on_epoch_end = on_epoch_end

    # ---------------------------------------------------------------- one epoch, one evaluation
    def train_epoch(self, loader, epoch: int) -> dict:
        """One epoch of the objective over ``loader`` (see :func:`train_one_epoch`)."""
        return train_one_epoch(
            self.ddp_model,
            self.objective,
            loader,
            self.optimizer,
            self.device,
            epoch,
            self.scheduler,
            self.per_iteration,
            self.scaler,
            self.amp_dtype,
            self.args.channels_last,
            getattr(self.args, "print_freq", 0),
        )

    def evaluate(self, loader, classes: list) -> dict:
        du.broadcast_buffers(self.model)  # every rank scores its shard with the network rank 0 saves
        return evaluate(
            self.model, self.objective.predict, loader, self.device, classes, self.amp_dtype, self.args.channels_last
        )

    # ---------------------------------------------------------------- checkpoints
    def state(self, epoch: int, best: dict, history: list, rng: list) -> dict:
        """The checkpoint: tensors and plain types only. ``rng`` holds every rank's RNG state."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch,
            "best": best,
            "history": history,
            "rng": rng,
            "args": plain_args(self.args),
            "meta": self.meta,
        }

    def restore(self, checkpoint: dict) -> tuple[int, dict | None, list]:
        """Load a training checkpoint; returns (start epoch, best so far, history)."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scheduler is not None and checkpoint.get("scheduler"):
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        states = checkpoint.get("rng") or []
        if len(states) == du.get_world_size():
            set_rng_state(states[du.get_rank()])
        elif states:
            print(
                f"note: the checkpoint was written by {len(states)} process(es) and this run has "
                f"{du.get_world_size()}; random streams restart from the seed."
            )
        return checkpoint["epoch"] + 1, checkpoint.get("best"), list(checkpoint.get("history") or [])

    # ---------------------------------------------------------------- the epoch loop
    def fit(self, train_loader, train_sampler, eval_loaders: dict, classes: list, epochs: int):
        """Train ``epochs`` epochs, evaluating every loader in ``eval_loaders`` ({"val", "eval", "test"}: loaders).

        ``val`` (else ``eval``) selects the best epoch (``select_metric``); the other splits are reported at
        that epoch and, labelled, at their own best epoch (:func:`selection_summary`: log columns, the
        ``selection`` of every metrics JSON, the closing line). A run continues from ``args.resume``
        (settled once by :func:`utils.cli.prepare_resume`; '' for a fresh start). Returns (best, history).
        """
        args = self.args
        output_dir = args.output_dir
        select = self.select_metric or ("val_acc" if "val" in eval_loaders else "eval_acc")
        started = time.perf_counter()
        start_epoch, best, history = 0, None, []
        if args.resume:
            checkpoint = load_checkpoint(args.resume)
            check_meta(checkpoint, self.meta, args.resume)
            start_epoch, best, history = self.restore(checkpoint)
            print(f"resumed from {args.resume} at epoch {start_epoch}")
        claim_output_dir(args)
        logger = RunLogger(output_dir, args.log_dir, start_epoch, history)
        last_path = os.path.join(output_dir, "checkpoint-last.pth")
        best_path = os.path.join(output_dir, "checkpoint-best.pth")
        try:
            for epoch in range(start_epoch, epochs):
                train_sampler.set_epoch(epoch)
                if hasattr(train_loader.dataset, "set_epoch"):
                    train_loader.dataset.set_epoch(epoch)
                start = time.perf_counter()
                record = {"epoch": epoch}
                record.update(self.train_epoch(train_loader, epoch))
                results = {}
                for split, loader in eval_loaders.items():
                    results[split] = self.evaluate(loader, classes)
                    record.update(scalars(split, results[split]))
                record["epoch_time"] = time.perf_counter() - start
                value = record.get(select)
                is_best = best is None or (value is not None and value > best["value"])
                if is_best:
                    best = {"epoch": epoch, "value": value, "metric": select}
                record["best_" + select] = best["value"]
                record["selected_epoch"] = best["epoch"]
                summary = selection_summary(history + [record], best, eval_loaders)
                record.update(selection_columns(summary))
                history.append(record)
                rng = du.all_gather_objects(rng_state())
                if du.is_main_process():
                    state = self.state(epoch, best, history, rng)
                    save_checkpoint(last_path, state)
                    if is_best:  # weights and metadata only: what --eval, stage 2/3 and predict.py read
                        save_checkpoint(best_path, {k: state[k] for k in ("model", "epoch", "best", "args", "meta")})
                        for split, result in results.items():
                            write_eval_report(output_dir, split, result, classes, {"epoch": epoch})
                    update_selection(output_dir, eval_loaders, summary)
                logger.log(record)
                if self.on_epoch_end is not None and du.is_main_process():
                    self.on_epoch_end(history, best)
                du.barrier()
            logger.summarise(plain_args(args), best, history, output_dir)  # TensorBoard: confusion, hparams
        finally:
            logger.close()
        if best is not None:
            summary = selection_summary(history, best, eval_loaders)
            print(
                f"summary: {len(history)} epochs ({time.perf_counter() - started:.0f} s in this run); "
                f"{selection_line(summary)}; checkpoints in {output_dir}",
                flush=True,
            )
        return best, history

    def evaluate_checkpoint(self, path: str, eval_loaders: dict, classes: list) -> dict:
        """``--eval``: load a checkpoint's weights, evaluate each split, print and write the report."""
        checkpoint = load_checkpoint(path)
        check_meta(checkpoint, self.meta, path)
        self.model.load_state_dict(checkpoint["model"])
        claim_output_dir(self.args)
        out = {}
        for split, loader in eval_loaders.items():
            result = self.evaluate(loader, classes)
            out[split] = result
            print(f"{split}: " + format_line({k: v for k, v in result.items() if isinstance(v, (int, float))}))
            write_eval_report(
                self.args.output_dir,
                split,
                result,
                classes,
                {"checkpoint": os.path.abspath(path), "epoch": checkpoint.get("epoch")},
            )
        return out


def claim_output_dir(args) -> None:
    """Hold ``args.output_dir`` for this run (:func:`utils.files.hold_folder`; rank 0, once per run, released
    when the process ends, also by a kill): call before the first file is written there."""
    if du.is_main_process() and getattr(args, "output_lock", None) is None:
        args.output_lock = hold_folder(args.output_dir)


def plain_args(args) -> dict:
    """The flags as plain types (what checkpoints and config.json record)."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None), list))}


def check_meta(
    checkpoint: dict, meta: dict, path: str, keys=("model", "backbone", "classifier_input", "classes", "input_size")
) -> None:
    """Refuse a checkpoint written for another model, class list or input size."""
    saved = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    if not saved:
        raise UserError(f"{path} is not a checkpoint written by this repository (no metadata).")
    for key in keys:
        if key in meta and saved.get(key) != meta[key]:
            raise UserError(
                f"{path} was written for {key} {saved.get(key)!r}, but this run has {meta[key]!r}; "
                f"point --resume at a checkpoint of the same kind of run."
            )
