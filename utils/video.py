"""Frames in and out: a video file or a camera through OpenCV (its bundled FFmpeg), and an annotated
video written atomically. Every failure a user can cause (a missing or corrupt file, a codec OpenCV
cannot decode, an absent camera, a container it cannot write) is one UserError sentence."""

import contextlib
import os
import time

import cv2
import numpy as np

from utils.checkpoint import atomic_path
from utils.errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
WRITE_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def is_video(path) -> bool:
    return str(path).lower().endswith(VIDEO_EXTENSIONS)


@contextlib.contextmanager
def quiet_opencv():
    """Silence OpenCV's own warnings (a camera it cannot open, a stream FFmpeg rejects) for the block:
    the caller reports the failure in one sentence."""
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


class FrameSource:
    """Frames of a video file or a camera, as (index, timestamp in seconds, RGB uint8 array).

    ``every``: keep every N-th frame (all frames are decoded, the others are yielded with ``keep`` False
    so that an annotated video can still hold every frame). ``max_frames``: stop after that many frames
    (0: the whole file; a camera runs until then or until Ctrl-C).
    """

    def __init__(self, source, every=1, max_frames=0):
        self.camera = isinstance(source, int)
        self.name = f"camera {source}" if self.camera else str(source)
        if not self.camera and not os.path.isfile(source):
            raise UserError(f"video {source} not found.")
        with quiet_opencv():
            self.capture = cv2.VideoCapture(source) if self.camera else cv2.VideoCapture(source, cv2.CAP_FFMPEG)
            opened = self.capture.isOpened()
            first = self.capture.read() if opened else (False, None)
        if not opened or not first[0]:
            self.capture.release()
            if self.camera:
                raise UserError(
                    f"camera {source} is not available (no such device, no permission, or in use); "
                    f"check --camera or connect one."
                )
            raise UserError(
                f"cannot read video {source}: the file is corrupt or its codec is not one OpenCV's FFmpeg "
                f"decodes; convert it, e.g. ffmpeg -i {os.path.basename(source)} -c:v libx264 out.mp4."
            )
        self._first = first[1]
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and 0 < fps < 1000 else 25.0
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not self.camera else 0
        self.total = min(count, max_frames) if max_frames and count > 0 else (count if count > 0 else max_frames)
        self.every, self.max_frames = max(1, every), max_frames
        self.size = (self._first.shape[1], self._first.shape[0])

    def __iter__(self):
        start = time.monotonic()
        index = 0
        frame = self._first
        try:
            while frame is not None:
                stamp = time.monotonic() - start if self.camera else index / self.fps
                yield index, stamp, index % self.every == 0, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                index += 1
                if self.max_frames and index >= self.max_frames:
                    break
                ok, frame = self.capture.read()
                if not ok:
                    frame = None
        finally:
            self.capture.release()


class VideoOut:
    """An annotated video written to a temporary file and renamed over ``path`` when closed without error.

    The container follows ``path``'s extension (``WRITE_FOURCC``: MPEG-4 Part 2 in .mp4/.mov/.m4v,
    Motion-JPEG in .avi/.mkv); one OpenCV cannot open is a UserError before any frame is written.
    """

    def __init__(self, path, fps, size):
        ext = os.path.splitext(path)[1].lower()
        if ext not in WRITE_FOURCC:
            raise UserError(f"cannot write video {path}: use one of {', '.join(WRITE_FOURCC)}.")
        self.path = path
        self._atomic = atomic_path(path)
        self._tmp = self._atomic.__enter__()
        self._work = self._tmp + ext  # FFmpeg picks the container from the extension
        with quiet_opencv():
            self.writer = cv2.VideoWriter(self._work, cv2.VideoWriter_fourcc(*WRITE_FOURCC[ext]), fps, size)
        if not self.writer.isOpened():
            self.close(failed=True)
            raise UserError(f"cannot write video {path}: OpenCV has no {WRITE_FOURCC[ext]} encoder here; try .avi.")
        self.frames = 0

    def write(self, rgb: np.ndarray):
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self, failed=False):
        """Finish the file: renamed over ``path`` unless ``failed`` (or nothing was written), removed otherwise."""
        self.writer.release()
        try:
            if not failed and os.path.exists(self._work):
                os.replace(self._work, self._tmp)
                self._atomic.__exit__(None, None, None)
            else:
                self._atomic.__exit__(RuntimeError, RuntimeError("video not written"), None)
        finally:
            if os.path.exists(self._work):
                os.remove(self._work)
