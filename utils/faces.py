"""Faces in ordinary pictures: detection, the crop a training image would be, boxes drawn, faces tracked.

Detection uses OpenCV's frontal-face Haar cascade (``haarcascade_frontalface_alt2.xml``), which ships
inside the opencv-python-headless wheel (``cv2.data.haarcascades``; OpenCV 5 dropped it, hence ``<5``):
nothing is downloaded. It finds upright, roughly frontal faces at least ``min_face`` pixels tall on
the working scale and gives no landmarks, so crops are not aligned (rotation stays as in the picture).
Its score is the cascade's last-stage level weight (larger is surer; not a probability).

A crop is a square centred on the box, ``1 + 2 * margin`` times the box's side, the parts outside
the picture filled by repeating its edge: with the default margin a detected synthetic demo face is
cropped about as its training image was framed (the cascade's box covers about three quarters of
it).
"""

import os
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from utils.errors import UserError

CASCADE = "haarcascade_frontalface_alt2.xml"
DEFAULT_MARGIN = 0.17
DEFAULT_DETECT_SIDE = 240
DEFAULT_MIN_FACE = 24
PAD = 0.2  # border added around the picture before detection, so that faces that fill it are found


@dataclass
class Face:
    """A detected face: box (x, y, width, height) in the picture's pixels, and the detector's score."""

    x: int
    y: int
    w: int
    h: int
    score: float | None = None

    @property
    def box(self):
        return self.x, self.y, self.w, self.h


class FaceDetector:
    """``detector(rgb)`` -> faces of an H x W x 3 uint8 RGB array, left to right.

    The picture is scaled so that its short side is ``detect_side`` pixels (small crops are enlarged,
    large photos reduced) and padded by ``PAD`` of that side; faces smaller than ``min_face`` pixels
    at that scale are not searched for.
    """

    def __init__(self, detect_side=DEFAULT_DETECT_SIDE, min_face=DEFAULT_MIN_FACE, neighbours=4):
        if detect_side < 48 or min_face < 20:
            raise UserError(
                f"--detect_side must be at least 48 and --min_face at least 20, got {detect_side}, {min_face}."
            )
        self.cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, CASCADE))
        if self.cascade.empty():
            raise UserError(f"OpenCV's {CASCADE} could not be loaded; reinstall opencv-python-headless (<5).")
        self.detect_side, self.min_face, self.neighbours = detect_side, min_face, neighbours

    def __call__(self, rgb: np.ndarray) -> list[Face]:
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        height, width = grey.shape
        scale = self.detect_side / min(height, width)
        grey = cv2.resize(
            grey,
            (max(1, round(width * scale)), max(1, round(height * scale))),
            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
        )
        pad = int(PAD * self.detect_side)
        grey = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        boxes, _, weights = self.cascade.detectMultiScale3(
            grey,
            scaleFactor=1.1,
            minNeighbors=self.neighbours,
            minSize=(self.min_face, self.min_face),
            outputRejectLevels=True,
        )
        faces = []
        for (x, y, w, h), weight in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(weights).reshape(-1)):
            faces.append(
                Face(
                    round((x - pad) / scale),
                    round((y - pad) / scale),
                    round(w / scale),
                    round(h / scale),
                    float(weight),
                )
            )
        return sorted(faces, key=lambda f: (f.x, f.y))


def crop_face(rgb: np.ndarray, face: Face, margin: float = DEFAULT_MARGIN) -> Image.Image:
    """The square crop around ``face`` (side ``(1 + 2 margin) * max(w, h)``), edge-filled outside the picture."""
    side = max(1, round(max(face.w, face.h) * (1 + 2 * margin)))
    x0 = round(face.x + face.w / 2 - side / 2)
    y0 = round(face.y + face.h / 2 - side / 2)
    height, width = rgb.shape[:2]
    before_y, before_x = max(0, -y0), max(0, -x0)
    after_y, after_x = max(0, y0 + side - height), max(0, x0 + side - width)
    if before_y or before_x or after_y or after_x:
        rgb = np.pad(rgb, ((before_y, after_y), (before_x, after_x), (0, 0)), mode="edge")
        x0, y0 = x0 + before_x, y0 + before_y
    return Image.fromarray(np.ascontiguousarray(rgb[y0 : y0 + side, x0 : x0 + side]))


def annotate(rgb: np.ndarray, faces: list[Face], labels: list[str]) -> np.ndarray:
    """A copy of ``rgb`` with each face's box and label drawn (line width and text scale follow the picture)."""
    out = np.ascontiguousarray(rgb).copy()
    thick = max(1, round(min(out.shape[:2]) / 240))
    font = max(0.35, min(out.shape[:2]) / 600)
    for face, label in zip(faces, labels):
        colour = (255, 140, 0)
        cv2.rectangle(out, (face.x, face.y), (face.x + face.w, face.y + face.h), colour, thick)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, thick)
        top = face.y - th - base - 2 if face.y - th - base - 2 >= 0 else face.y + face.h
        cv2.rectangle(out, (face.x, top), (face.x + tw + 2, top + th + base + 2), colour, -1)
        cv2.putText(out, label, (face.x + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), thick)
    return out


def iou(a: Face, b: Face) -> float:
    ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


class FaceTracker:
    """Faces followed from frame to frame by box overlap, each with an exponential moving average of its
    probabilities: ``smoothed = alpha * new + (1 - alpha) * previous``; ``alpha = 1`` is no smoothing.

    ``update(faces, probs)`` matches the faces greedily to the live tracks (largest IoU first, at least
    ``min_iou``), starts a new track for each unmatched face, forgets tracks unseen for ``max_missed``
    updates, and returns (track ids, smoothed probabilities), in the order of ``faces``.
    """

    def __init__(self, alpha=1.0, min_iou=0.3, max_missed=5):
        if not 0 < alpha <= 1:
            raise UserError(f"--smooth must be in (0, 1], got {alpha} (1 = no smoothing).")
        self.alpha, self.min_iou, self.max_missed = alpha, min_iou, max_missed
        self.tracks = {}  # id -> [face, probs, missed]
        self.next_id = 0

    def update(self, faces: list[Face], probs: np.ndarray):
        pairs = sorted(
            ((iou(face, track[0]), i, tid) for i, face in enumerate(faces) for tid, track in self.tracks.items()),
            reverse=True,
        )
        assigned, used = {}, set()
        for overlap, i, tid in pairs:
            if overlap < self.min_iou:
                break
            if i not in assigned and tid not in used:
                assigned[i] = tid
                used.add(tid)
        ids, smoothed = [], []
        for i, face in enumerate(faces):
            tid = assigned.get(i)
            if tid is None:
                tid, self.next_id = self.next_id, self.next_id + 1
                value = probs[i]
            else:
                value = self.alpha * probs[i] + (1 - self.alpha) * self.tracks[tid][1]
            self.tracks[tid] = [face, value, -1]
            ids.append(tid)
            smoothed.append(value)
        for tid in list(self.tracks):
            self.tracks[tid][2] += 1
            if self.tracks[tid][2] > self.max_missed:
                del self.tracks[tid]
        return ids, np.array(smoothed).reshape(len(faces), -1)
