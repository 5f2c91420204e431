"""File helpers that need no torch (so that tools can check caches without importing it), and the lock
that keeps two runs out of one output folder."""

import datetime
import fcntl
import hashlib
import os
import socket

from utils.errors import UserError

LOCK_NAME = ".run.lock"
_held = {}  # folder (real path) -> the lock file this process holds on it (see release_folders)


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _refuse(folder, handle, flag="--output_dir"):
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    handle.close()
    raise UserError(
        f"output folder {folder} is in use by a run that is still going ({holder}); wait for it to end or "
        f"pass another {flag}."
    )


def hold_folder(folder, flag="--output_dir"):
    """Hold ``folder`` for this process: an exclusive ``flock`` on FOLDER/.run.lock, which the kernel
    releases when the process ends, however it ends (a killed run never leaves the folder locked).
    Returns the open lock file (the same one again when this process holds the folder already). A folder
    that another live process holds is a UserError. The file records who holds it (pid, host, start time)
    for that message, which names ``flag`` as the way to another folder."""
    os.makedirs(folder, exist_ok=True)
    key = os.path.realpath(folder)
    if key in _held:  # this process holds it already (a second run in the same process)
        return _held[key]
    handle = open(os.path.join(folder, LOCK_NAME), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _refuse(folder, handle, flag)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
    handle.flush()
    _held[key] = handle
    return handle


def release_folders():
    """Release every folder this process holds (an entry point returning; see utils.errors.run_main)."""
    while _held:
        _held.popitem()[1].close()


def check_folder_free(folder):
    """Refuse early (a UserError) when a live process holds ``folder`` (:func:`hold_folder`); creates nothing."""
    path = os.path.join(folder, LOCK_NAME)
    if not os.path.isfile(path) or os.path.realpath(folder) in _held:
        return
    handle = open(path)
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        _refuse(folder, handle)
    handle.close()
