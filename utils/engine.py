"""The training and evaluation loops every stage reuses.

- :func:`train_one_epoch` runs one epoch of a stage's ``loss_fn`` (AMP, per-iteration or per-epoch
  schedule, exact epoch means across ranks, a clear stop on a non-finite loss).
- :func:`evaluate` gives accuracy, mean per-class accuracy, loss and the confusion matrix (and VAD
  regression statistics when the model predicts VAD), exact under DDP: each rank evaluates its
  shard, and counts and sums, never averages, are all-reduced.
- :func:`fit` is the epoch loop of a training stage: resume, train, evaluate, keep the best,
  write checkpoint-last / checkpoint-best atomically, log.
"""
import contextlib
import os
import time

import torch
import torch.nn.functional as F

from utils import distributed as du
from utils.checkpoint import (load_checkpoint, resolve_resume, rng_state, save_checkpoint, set_rng_state,
                              write_json)
from utils.errors import UserError
from utils.log import RunLogger, format_line, progress
from utils.metrics import RegressionStats, classification_summary, save_confusion_matrix

VAD_NAMES = ("valence", "arousal", "dominance")


# --------------------------------------------------------------------------- device helpers
def amp_setup(device, enabled):
    """(autocast dtype or None, GradScaler or None): bf16 where the GPU supports it, else fp16 + scaler."""
    if not enabled or device.type != "cuda":
        if enabled:
            print("--amp is ignored on CPU; training in fp32.")
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler(device.type)


def autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch, device, channels_last=False):
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


def build_optimizer(args, parameters):
    """Adam with the paper's betas (0.5, 0.999) over the trainable parameters."""
    trainable = [p for p in parameters if p.requires_grad]
    return torch.optim.Adam(trainable, lr=args.lr, betas=(0.5, 0.999), weight_decay=args.weight_decay)


def prepare_training(args, model):
    """Move ``model`` to the run's device (channels_last when asked), wrap it for DDP, and build the
    optimiser, schedule and AMP settings. Returns (model, ddp_model, optimizer, scheduler,
    per_iteration, amp_dtype, scaler)."""
    model = model.to(args.device_obj)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(args, model.parameters())
    scheduler, per_iteration = build_scheduler(args, optimizer)
    amp_dtype, scaler = amp_setup(args.device_obj, args.amp)
    return model, du.wrap_ddp(model, args.device_obj), optimizer, scheduler, per_iteration, amp_dtype, scaler


def build_scheduler(args, optimizer):
    """(scheduler, per_iteration): the reference's CosineAnnealingLR(T_max=5) stepped every iteration,
    so the lr swings between lr and 0 every 10 iterations, or an ordinary per-epoch cosine."""
    if args.lr_schedule == "reference":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5, eta_min=0), True
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs, eta_min=0), False


# --------------------------------------------------------------------------- one epoch
def optimizer_step(loss, optimizer, scaler=None):
    """Backward and one optimiser step (through the GradScaler under fp16 autocast)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def train_one_epoch(model, loss_fn, loader, optimizer, device, epoch, scheduler=None, per_iteration=True,
                    scaler=None, amp_dtype=None, channels_last=False):
    """Train one epoch. ``loss_fn(model, batch) -> (loss, parts, outputs)`` where ``parts`` maps names
    to detached scalar tensors (logged as ``train_<name>``) and ``outputs`` holds ``logits`` (train
    accuracy) and, for the multi-task model, ``vad`` (train VAD statistics).

    Returns epoch means over every sample of every rank, the lr, images/s and skipped images.
    """
    model.train()
    sums, names, vad_stats = None, None, None
    correct = seen = skipped = 0
    start = time.perf_counter()
    for step, batch in enumerate(progress(loader, desc=f"epoch {epoch}")):
        skipped += batch.pop("skipped", 0)
        if "image" not in batch:
            continue
        batch = to_device(batch, device, channels_last)
        with autocast(device, amp_dtype):
            loss, parts, outputs = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"the training loss became {loss.item()} at epoch {epoch}, step {step}; the run "
                                f"stops and checkpoint-last.pth is the last good state (lower --lr or check the data).")
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
        if "vad" in outputs:
            vad_stats = RegressionStats(3) if vad_stats is None else vad_stats
            vad_stats.update(outputs["vad"].detach().float(), batch["vad"])
    elapsed = time.perf_counter() - start
    lr = optimizer.param_groups[0]["lr"]  # the epoch's lr (before a per-epoch schedule moves it)
    if scheduler is not None and not per_iteration:
        scheduler.step()
    if sums is None:
        raise UserError("the training loader gave no batch; the training set is smaller than --batch_size "
                        "(batches are full-size only) or every image was skipped.")
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


def reduce_vad(stats, device):
    """Per-dimension VAD metrics from statistics summed over every rank."""
    flat = stats.as_tensor().to(device)
    du.all_reduce_sum(flat)
    out = {}
    for metric, values in RegressionStats.from_tensor(flat.cpu(), 3).compute().items():
        if metric == "n":  # the sample count, an int, not a per-dimension metric
            continue
        for name, value in zip(VAD_NAMES, values):
            out[f"{name}_{metric}"] = float(value)
    return out


@torch.no_grad()
def evaluate(model, predict_fn, loader, device, classes, amp_dtype=None, channels_last=False):
    """Evaluate ``predict_fn(model, batch) -> {"logits"[, "vad"]}`` over a sharded loader.

    Returns ``loss``, ``acc``, ``mean_class_acc`` (percent), ``confusion`` (C x C tensor, rows true)
    and ``report`` (per-class precision/recall/F1); with VAD predictions also per-dimension MSE,
    MAE, Pearson r and CCC.
    """
    model.eval()
    num_classes = len(classes)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=device)
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
        confusion += torch.bincount(labels * num_classes + logits.argmax(1), minlength=num_classes ** 2).double()
        if "vad" in out:
            vad_stats = RegressionStats(3) if vad_stats is None else vad_stats
            vad_stats.update(out["vad"].float(), batch["vad"])
    du.all_reduce_sum(confusion)
    du.all_reduce_sum(loss_sum)
    confusion = confusion.view(num_classes, num_classes).round().long().cpu()
    total = int(confusion.sum())
    if total == 0:
        raise UserError("the evaluation split gave no readable image.")
    summary = classification_summary(confusion.numpy(), classes)
    result = {"loss": loss_sum[0].item() / total, "acc": 100.0 * summary["accuracy"],
              "mean_class_acc": 100.0 * summary["mean_class_accuracy"], "macro_f1": 100.0 * summary["macro_f1"],
              "confusion": confusion, "report": summary["per_class"], "images": total}
    if loss_sum[1].item():
        result["skipped_images"] = int(loss_sum[1].item())
    if vad_stats is not None:
        result.update(reduce_vad(vad_stats, device))
    return result


def scalars(prefix, result):
    """The loggable numbers of an evaluation result, prefixed (``eval_acc`` ...)."""
    return {f"{prefix}_{k}": v for k, v in result.items() if isinstance(v, (int, float))}


def write_eval_report(output_dir, split, result, classes, extra=None):
    """metrics.json + confusion_matrix.csv/.png for one evaluated split (rank 0 only)."""
    if not du.is_main_process():
        return
    os.makedirs(output_dir, exist_ok=True)
    metrics = {"split": split, **{k: v for k, v in result.items() if k not in ("confusion",)},
               "classes": list(classes), "confusion": result["confusion"].tolist(), **(extra or {})}
    write_json(os.path.join(output_dir, "metrics.json" if split == "eval" else f"metrics_{split}.json"), metrics)
    suffix = "" if split == "eval" else f"_{split}"
    save_confusion_matrix(result["confusion"].numpy(), classes, os.path.join(output_dir, f"confusion_matrix{suffix}.csv"),
                          os.path.join(output_dir, f"confusion_matrix{suffix}.png"))


# --------------------------------------------------------------------------- the epoch loop
class Trainer:
    """Everything :func:`fit` needs about a stage, built by the stage script."""

    def __init__(self, args, model, ddp_model, loss_fn, predict_fn, optimizer, scheduler, per_iteration,
                 scaler, amp_dtype, meta, select_metric="eval_acc", on_epoch_end=None):
        self.args, self.model, self.ddp_model = args, model, ddp_model
        self.loss_fn, self.predict_fn = loss_fn, predict_fn
        self.optimizer, self.scheduler, self.per_iteration = optimizer, scheduler, per_iteration
        self.scaler, self.amp_dtype = scaler, amp_dtype
        self.meta = meta  # plain types: classes, input_size, mean, std, model kind, hashes ...
        self.select_metric = select_metric
        self.on_epoch_end = on_epoch_end  # callable(history, best) for stage-specific records (rank 0)

    def state(self, epoch, best, history, rng):
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
            "args": {k: v for k, v in vars(self.args).items() if isinstance(v, (str, int, float, bool, type(None), list))},
            "meta": self.meta,
        }

    def restore(self, checkpoint):
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
            print(f"note: the checkpoint was written by {len(states)} process(es) and this run has "
                  f"{du.get_world_size()}; random streams restart from the seed.")
        return checkpoint["epoch"] + 1, checkpoint.get("best"), list(checkpoint.get("history") or [])


def check_meta(checkpoint, meta, path, keys=("model", "classes", "input_size")):
    """Refuse a checkpoint written for another model, class list or input size."""
    saved = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    if not saved:
        raise UserError(f"{path} is not a checkpoint written by this repository (no metadata).")
    for key in keys:
        if key in meta and saved.get(key) != meta[key]:
            raise UserError(f"{path} was written for {key} {saved.get(key)!r}, but this run has {meta[key]!r}; "
                            f"point --resume at a checkpoint of the same kind of run.")


def fit(trainer, train_loader, train_sampler, eval_loaders, classes, epochs):
    """Train ``epochs`` epochs, evaluating every loader in ``eval_loaders`` ({"eval": ..., "test": ...}).

    ``eval`` selects the best epoch (``trainer.select_metric``); ``test`` is reported only.
    """
    args = trainer.args
    output_dir = args.output_dir
    start_epoch, best, history = 0, None, []
    resume = resolve_resume(args.resume, output_dir)
    if resume:
        checkpoint = load_checkpoint(resume)
        check_meta(checkpoint, trainer.meta, resume)
        start_epoch, best, history = trainer.restore(checkpoint)
        print(f"resumed from {resume} at epoch {start_epoch}")
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
            record.update(train_one_epoch(trainer.ddp_model, trainer.loss_fn, train_loader, trainer.optimizer,
                                          args.device_obj, epoch, trainer.scheduler, trainer.per_iteration,
                                          trainer.scaler, trainer.amp_dtype, args.channels_last))
            results = {}
            for split, loader in eval_loaders.items():
                results[split] = evaluate(trainer.model, trainer.predict_fn, loader, args.device_obj, classes,
                                          trainer.amp_dtype, args.channels_last)
                record.update(scalars(split, results[split]))
            record["epoch_time"] = time.perf_counter() - start
            value = record.get(trainer.select_metric)
            is_best = best is None or (value is not None and value > best["value"])
            if is_best:
                best = {"epoch": epoch, "value": value, "metric": trainer.select_metric}
            record["best_" + trainer.select_metric] = best["value"]
            history.append(record)
            rng = du.all_gather_objects(rng_state())
            if du.is_main_process():
                state = trainer.state(epoch, best, history, rng)
                save_checkpoint(last_path, state)
                if is_best:  # weights and metadata only: what --eval, stage 2/3 and predict.py read
                    save_checkpoint(best_path, {k: state[k] for k in ("model", "epoch", "best", "args", "meta")})
                    write_eval_report(output_dir, "eval", results["eval"], classes, {"epoch": epoch})
                    if "test" in results:
                        write_eval_report(output_dir, "test", results["test"], classes, {"epoch": epoch})
            logger.log(record)
            if trainer.on_epoch_end is not None and du.is_main_process():
                trainer.on_epoch_end(history, best)
            du.barrier()
    finally:
        logger.close()
    if best is not None:
        print(f"best {trainer.select_metric} {best['value']:.4f} at epoch {best['epoch']}; "
              f"checkpoints in {output_dir}")
    return best, history


def evaluate_checkpoint(trainer, path, eval_loaders, classes):
    """``--eval``: load a checkpoint's weights, evaluate each split, print and write the report."""
    checkpoint = load_checkpoint(path)
    check_meta(checkpoint, trainer.meta, path)
    trainer.model.load_state_dict(checkpoint["model"])
    out = {}
    for split, loader in eval_loaders.items():
        result = evaluate(trainer.model, trainer.predict_fn, loader, trainer.args.device_obj, classes,
                          trainer.amp_dtype, trainer.args.channels_last)
        out[split] = result
        print(f"{split}: " + format_line({k: v for k, v in result.items() if isinstance(v, (int, float))}))
        write_eval_report(trainer.args.output_dir, split, result, classes, {"checkpoint": os.path.abspath(path),
                                                                           "epoch": checkpoint.get("epoch")})
    return out
