"""Per-epoch records: one JSON line in log.jsonl, the same numbers in log.csv, TensorBoard scalars,
and one plain-text line on stdout that a ``nohup`` user can read. Only rank 0 writes.

Lines are appended and flushed to disk every epoch. When a run starts, the log is made to match
the checkpoint it starts from: a resumed run keeps the lines of the epochs before its start epoch
and adds those its checkpoint knows about but the log lacks (a kill between the checkpoint and the
log line), and drops any line of a later epoch and any duplicate; a fresh run starts an empty log.
So log.jsonl and log.csv hold one line per epoch of checkpoint-last, also after a kill or a
torchrun restart.
"""

import csv
import json
import math
import os
import sys
import time

import torch
from tqdm import tqdm

from utils import distributed as du
from utils.checkpoint import atomic_path, atomic_write_bytes, remove_stale_temporaries, write_csv
from utils.errors import UserError
from utils.labels import VAD_NAMES


def show_progress():
    """A tqdm bar only on rank 0, on a terminal, and not under CI."""
    return du.is_main_process() and sys.stderr.isatty() and not os.environ.get("CI")


def progress(iterable, desc, total=None):
    return tqdm(iterable, desc=desc, total=total, disable=not show_progress(), leave=False, dynamic_ncols=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class StepLines:
    """Progress for logs (nohup, SLURM): when stdout is not a terminal, one plain line every ``every``
    iterations on rank 0 (0: none); a terminal gets the tqdm bar of :func:`progress` instead::

        epoch 3 step 50/196 | loss 1.2345 | focal 0.8120 | lr 1.00e-04 | 412.3 img/s | eta 0:00:35 | max mem 3.21 GiB

    Per step, :meth:`count` the images of this process; when :meth:`due`, :meth:`show` the named values
    (so nothing is synchronised with the device between lines). Images/s counts every process's images
    (same per-process batch), the ETA is for the rest of the loop, the memory is the peak allocated on a
    CUDA device.
    """

    def __init__(self, desc: str, total: int, every: int, device=None, world_size: int = 1):
        self.desc, self.total, self.every = desc, total, every
        self.device, self.world_size = device, world_size
        self.enabled = every > 0 and du.is_main_process() and not sys.stdout.isatty()
        self.images = 0
        self.start = time.perf_counter()

    def count(self, images: int) -> None:
        self.images += images

    def due(self, step: int) -> bool:
        """Whether step ``step`` (0-based) prints a line."""
        return self.enabled and (step + 1) % self.every == 0

    def show(self, step: int, values: dict) -> None:
        elapsed = time.perf_counter() - self.start
        parts = [f"{self.desc} step {step + 1}/{self.total}"]
        parts += [f"{k} {v:.2e}" if k == "lr" else f"{k} {_format(v)}" for k, v in values.items()]
        parts.append(f"{self.images * self.world_size / max(elapsed, 1e-9):.1f} img/s")
        parts.append(f"eta {_duration(elapsed / (step + 1) * max(self.total - step - 1, 0))}")
        if self.device is not None and self.device.type == "cuda":
            parts.append(f"max mem {torch.cuda.max_memory_allocated(self.device) / 2**30:.2f} GiB")
        print(" | ".join(parts), flush=True)


def _format(value):
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def format_line(record, keys=None):
    """``epoch 3 | train_loss 0.1234 | eval_acc 81.2300 ...``"""
    keys = keys or list(record)
    return " | ".join(f"{k} {_format(record[k])}" for k in keys if k in record)


def clean_record(record):
    """The record as logged: non-finite floats become None (JSON null, an empty CSV cell)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def read_jsonl(path):
    """The records of a log.jsonl ([] when it does not exist); a line cut short by a kill is skipped."""
    if not os.path.isfile(path):
        return []
    records = []
    with open(path) as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def chosen_record(path, metric="eval_acc"):
    """(the record of the epoch ``metric`` chose, the first best one; all records) of the log.jsonl at
    ``path``: the other splits' figures are reported at the chosen epoch."""
    records = read_jsonl(path)
    scored = [r for r in records if metric in r]
    if not scored:
        raise UserError(f"{path} holds no epoch with {metric}; did the run finish an epoch?")
    return max(scored, key=lambda r: r[metric]), records


class RunLogger:
    """Writes log.jsonl, log.csv and TensorBoard scalars under a run's output folder (rank 0 only)."""

    def __init__(self, output_dir, log_dir=None, start_epoch=0, history=()):
        self.enabled = du.is_main_process()
        self.jsonl = os.path.join(output_dir, "log.jsonl")
        self.csv = os.path.join(output_dir, "log.csv")
        self.writer = None
        if not self.enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        remove_stale_temporaries(output_dir)
        records = {}
        for record in read_jsonl(self.jsonl):  # what the log says, up to the start epoch, once per epoch
            if isinstance(record.get("epoch"), int) and record["epoch"] < start_epoch:
                records.setdefault(record["epoch"], record)
        missing = [r for r in history if r["epoch"] < start_epoch and r["epoch"] not in records]
        records.update({r["epoch"]: clean_record(r) for r in missing})
        self._rewrite([records[epoch] for epoch in sorted(records)])
        from torch.utils.tensorboard import SummaryWriter  # tensorboard is slow to import; only rank 0 needs it

        self.writer = SummaryWriter(log_dir or os.path.join(output_dir, "tb"), purge_step=start_epoch)
        for record in missing:
            self._scalars(record)
        self.writer.flush()

    def _rewrite(self, records):
        """Replace log.jsonl and log.csv (atomically) by ``records``; no records, no files."""
        if not records:
            for path in (self.jsonl, self.csv):
                if os.path.isfile(path):
                    os.remove(path)
            return
        atomic_write_bytes(self.jsonl, "".join(json.dumps(r) + "\n" for r in records).encode())
        with atomic_path(self.csv) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0]), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(records)

    def _scalars(self, record):
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key.replace("_", "/", 1), value, record["epoch"])

    def log(self, record, echo=True):
        """Append one epoch's record (a flat dict of numbers with an ``epoch`` key)."""
        if not self.enabled:
            return
        clean = clean_record(record)
        with open(self.jsonl, "a") as handle:
            handle.write(json.dumps(clean) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        new_file = not os.path.isfile(self.csv)
        if new_file:
            fields = list(record)
        else:
            with open(self.csv, newline="") as handle:
                fields = next(csv.reader(handle))
        with open(self.csv, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(clean)
            handle.flush()
            os.fsync(handle.fileno())
        self._scalars(record)
        self.writer.flush()
        if echo:
            print(format_line(record), flush=True)

    def summarise(self, flags: dict, best: dict, history: list, output_dir: str) -> None:
        """End of a run, in TensorBoard: the confusion matrices the run wrote for its best epoch
        (metrics.json, metrics_test.json) as figures, and the run's flags with its final metrics
        (``add_hparams``: the best selection metric and the last epoch's numbers)."""
        if not self.enabled or best is None or not history:
            return
        from utils.metrics import confusion_figure

        for split, name in (("eval", "metrics.json"), ("test", "metrics_test.json")):
            path = os.path.join(output_dir, name)
            if os.path.isfile(path):
                with open(path) as handle:
                    report = json.load(handle)
                figure = confusion_figure(report["confusion"], report["classes"])
                self.writer.add_figure(f"{split}/confusion_matrix", figure, best["epoch"], close=False)
        hparams = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flags.items() if v is not None
        }
        final = {f"final/best_{best['metric']}": best["value"]}
        final.update({f"final/last_{k}": v for k, v in history[-1].items() if k != "epoch"})
        final = {k: v for k, v in final.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.writer.add_hparams(hparams, final, run_name=".", global_step=history[-1]["epoch"])
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


SELECTED_BY = {
    "val_acc": "best accuracy on the validation split",
    "eval_acc": "best PublicTest accuracy, the eval split",
}


def write_vad_records(output_dir: str, history: list, best: dict) -> None:
    """The multi-task records, rewritten atomically after every epoch from the run's history:
    AccProcess_classify.csv (train / public / private accuracy), AccProcess_regress{V,A,D}.csv (MSE and
    CCC per split) and summary.txt (the chosen epoch and its figures)."""
    import pandas as pd  # only the multi-task run needs it

    frame = pd.DataFrame(history)
    splits = {"train": "train", "public": "eval", "private": "test"}

    def column(split, key):
        name = f"{splits[split]}_{key}"
        return frame[name] if name in frame else float("nan")

    classify = pd.DataFrame({"epoch": frame["epoch"], **{f"{s}_acc": column(s, "acc") for s in splits}})
    write_csv(os.path.join(output_dir, "AccProcess_classify.csv"), classify)
    for letter, name in zip("VAD", VAD_NAMES):
        table = pd.DataFrame(
            {
                "epoch": frame["epoch"],
                **{f"{s}_loss": column(s, f"{name}_mse") for s in splits},
                **{f"{s}_ccc": column(s, f"{name}_ccc") for s in splits},
            }
        )
        write_csv(os.path.join(output_dir, f"AccProcess_regress{letter}.csv"), table)
    chosen = next(r for r in history if r["epoch"] == best["epoch"])
    lines = [
        f"chosen epoch: {best['epoch']} ({SELECTED_BY.get(best['metric'], 'best ' + best['metric'])})",
        f"category accuracy: train {chosen.get('train_acc', float('nan')):.2f} | public "
        f"{chosen.get('eval_acc', float('nan')):.2f} | private {chosen.get('test_acc', float('nan')):.2f}",
    ]
    for split, prefix in (("public", "eval"), ("private", "test")):
        for name in VAD_NAMES:
            keys = [f"{prefix}_{name}_{m}" for m in ("mse", "mae", "pearson", "ccc")]
            if keys[0] in chosen:
                lines.append(
                    f"{split} {name}: MSE {chosen[keys[0]]:.4f} MAE {chosen[keys[1]]:.4f} "
                    f"Pearson {chosen[keys[2]]:.4f} CCC {chosen[keys[3]]:.4f}"
                )
    atomic_write_bytes(os.path.join(output_dir, "summary.txt"), ("\n".join(lines) + "\n").encode())
