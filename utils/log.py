"""Per-epoch records: one JSON line in log.jsonl, the same numbers in log.csv, TensorBoard scalars,
and one plain-text line on stdout that a ``nohup`` user can read. Only rank 0 writes.

Lines are appended and flushed to disk every epoch, never rewritten. A resumed run appends the
epochs its checkpoint knows about but the log lacks (a kill between the checkpoint and the log
line), so the log always matches checkpoint-last.
"""
import csv
import json
import math
import os
import sys

from tqdm import tqdm

from utils import distributed as du


def show_progress():
    """A tqdm bar only on rank 0, on a terminal, and not under CI."""
    return du.is_main_process() and sys.stderr.isatty() and not os.environ.get("CI")


def progress(iterable, desc, total=None):
    return tqdm(iterable, desc=desc, total=total, disable=not show_progress(), leave=False, dynamic_ncols=True)


def _format(value):
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def format_line(record, keys=None):
    """``epoch 3 | train_loss 0.1234 | eval_acc 81.2300 ...``"""
    keys = keys or list(record)
    return " | ".join(f"{k} {_format(record[k])}" for k in keys if k in record)


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
        logged = set()
        if os.path.isfile(self.jsonl):
            with open(self.jsonl) as handle:
                logged = {json.loads(line)["epoch"] for line in handle if line.strip()}
        from torch.utils.tensorboard import SummaryWriter  # tensorboard is slow to import; only rank 0 needs it
        self.writer = SummaryWriter(log_dir or os.path.join(output_dir, "tb"), purge_step=start_epoch or None)
        for record in history:
            if record["epoch"] not in logged and record["epoch"] < start_epoch:
                self.log(record, echo=False)

    def log(self, record, echo=True):
        """Append one epoch's record (a flat dict of numbers with an ``epoch`` key)."""
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
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
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key.replace("_", "/", 1), value, record["epoch"])
        self.writer.flush()
        if echo:
            print(format_line(record), flush=True)

    def close(self):
        if self.writer is not None:
            self.writer.close()
