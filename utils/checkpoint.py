"""Atomic writes, safe checkpoint loading and the RNG state a resume needs.

Every file a run writes goes to a temporary file in the same folder, is flushed to disk and then
renamed over the target, so a kill during a save leaves the previous file intact. Checkpoints
hold tensors and plain Python types only and are read with ``weights_only=True``: a checkpoint
that asks to run code is refused.
"""

import contextlib
import errno
import io
import json
import os
import pickle
import pickletools
import random
import tempfile
import warnings
import zipfile

import numpy as np
import torch

from utils.errors import UserError, first_line


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it goes.

    A full disk (or quota) while writing is a UserError saying that the previous file is left intact."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600); give it a normal file's mode
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        kept = (
            f"the previous {os.path.basename(path)} is intact and readable"
            if os.path.isfile(path)
            else "nothing was written in its place"
        )
        raise UserError(
            f"could not write {path} ({os.strerror(exc.errno)}); {kept}: free some space and continue with "
            f"--resume auto."
        ) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path, data):
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_csv(path, frame):
    """Write a pandas DataFrame as CSV, atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def save_checkpoint(path, state):
    """torch.save ``state`` (tensors and plain types) atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def elastic_restart():
    """(restart count, run id) that torchrun gives its workers (``TORCHELASTIC_RESTART_COUNT``,
    ``TORCHELASTIC_RUN_ID``); (0, None) outside torchrun. The count grows each time torchrun
    (``--max-restarts``) restarts the worker group after a failure."""
    count = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return (int(count) if count.isdigit() else 0), os.environ.get("TORCHELASTIC_RUN_ID")


def written_by_run(path, run_id):
    """Whether the training checkpoint ``path`` was written under the torchrun job ``run_id``."""
    if run_id is None:
        return False
    checkpoint = load_checkpoint(path, mmap=True)
    saved = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    return isinstance(saved, dict) and saved.get("elastic_run_id") == run_id


def resolve_resume(resume, output_dir, restarted_run=None):
    """The checkpoint a training run continues from, or '' for a fresh start.

    ``auto`` means OUTPUT/checkpoint-last.pth when it exists. ``restarted_run`` is the torchrun job id
    of a worker group that torchrun restarted: it continues from OUTPUT/checkpoint-last.pth whenever
    that job wrote it, whatever ``resume`` says (the failed attempt's epochs are there; starting again
    from ``resume`` would repeat them), but never from a checkpoint-last.pth left by another run.
    """
    last = os.path.join(output_dir, "checkpoint-last.pth")
    if os.path.isfile(last) and (resume == "auto" or written_by_run(last, restarted_run)):
        return last
    return "" if resume == "auto" else (resume or "")


def remove_stale_temporaries(folder):
    """Delete the temporary files of :func:`atomic_path` that a killed process left in ``folder``
    (``.NAME.XXXX.tmp``; the files they were meant to replace are intact). Call it only from the one
    process that writes there, before it writes. Returns the names removed."""
    removed = []
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        path = os.path.join(folder, name)
        if name.startswith(".") and name.endswith(".tmp") and os.path.isfile(path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(name)
    return removed


def damage(path) -> str | None:
    """Why the file at ``path`` cannot be an intact checkpoint (its zip container or pickle stream is
    broken), or None when it is intact, whatever it holds. Reads the file; runs nothing from it."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            return f"{bad} fails its checksum" if bad else None
        with open(path, "rb") as handle:
            for _ in pickletools.genops(handle):
                pass
    except Exception as exc:  # noqa: BLE001 -- any failure to parse is damage
        return first_line(exc)
    return None


def unpickler_reason(exc) -> str:
    """The reason in torch's weights_only error, without its advice to turn the safe loader off."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "unsafe content"


def load_checkpoint(path, what="checkpoint", mmap=False):
    """Load a checkpoint with ``weights_only=True``; a missing, corrupt or unsafe file is a UserError.

    A file whose container or pickle stream is broken is called corrupt; an intact one that asks for
    anything but tensors and plain types is refused. ``mmap=True`` maps the tensors instead of reading
    them (for a look at the metadata); it applies to the zip format ``torch.save`` writes, other files
    are read normally.
    """
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} not found; pass the right path (a stage writes OUTPUT/checkpoint-best.pth).")
    corrupt = (
        f"{what} {path} is corrupt or truncated ({{}}); use another copy (checkpoint-last.pth and "
        f"checkpoint-best.pth are written atomically)."
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on unusual pickle protocols
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        broken = damage(path)
        if broken:
            raise UserError(corrupt.format(broken)) from None
        raise UserError(
            f"{what} {path} is refused: it is not a plain tensor checkpoint ({unpickler_reason(exc)}); only "
            f"files that load with weights_only=True are accepted."
        ) from None
    except Exception as exc:  # noqa: BLE001 -- torch.load fails on a damaged file in many ways (struct, zip, EOF ...)
        raise UserError(corrupt.format(first_line(exc))) from None


# --------------------------------------------------------------------------- RNG state
def rng_state():
    """Python, numpy and torch (CPU and CUDA) RNG states as tensors and plain types."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
