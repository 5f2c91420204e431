"""Atomic writes, safe checkpoint loading and the RNG state a resume needs.

Every file a run writes goes to a temporary file in the same folder, is flushed to disk and then
renamed over the target, so a kill during a save leaves the previous file intact. Checkpoints
hold tensors and plain Python types only and are read with ``weights_only=True``: a checkpoint
that asks to run code is refused.
"""
import contextlib
import hashlib
import io
import json
import os
import pickle
import random
import tempfile

import numpy as np
import torch

from utils.errors import UserError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it goes."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
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


def save_figure(fig, path, dpi=100):
    """Save a matplotlib figure as PNG, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


def save_checkpoint(path, state):
    """torch.save ``state`` (tensors and plain types) atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_resume(resume, output_dir):
    """``auto`` means OUTPUT/checkpoint-last.pth when it exists; '' means a fresh start."""
    if resume == "auto":
        path = os.path.join(output_dir, "checkpoint-last.pth")
        return path if os.path.isfile(path) else ""
    return resume or ""


def load_checkpoint(path, what="checkpoint"):
    """Load a checkpoint with ``weights_only=True``; a missing, corrupt or unsafe file is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} not found; pass the right path (a stage writes OUTPUT/checkpoint-best.pth).")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise UserError(f"{what} {path} is refused: it is not a plain tensor checkpoint ({first}); only files "
                        f"that load with weights_only=True are accepted.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{what} {path} is corrupt or truncated ({str(exc).splitlines()[0]}); use another copy "
                        f"(checkpoint-last.pth and checkpoint-best.pth are written atomically).") from None


# --------------------------------------------------------------------------- RNG state
def rng_state():
    """Python, numpy and torch (CPU and CUDA) RNG states as tensors and plain types."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
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
