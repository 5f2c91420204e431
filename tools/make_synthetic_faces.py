"""The embedded demo/test dataset: procedurally drawn faces whose EXPRESSION decides the label.

Every face is drawn with PIL from a handful of numbers, no downloads. Two groups of numbers:

- **expression** (decides the label, one of ``utils.labels.CLASSES_7``): mouth curvature, opening, width
  and teeth, an asymmetric upper-lip raise, brow height and angle, eye opening, nose wrinkles, forehead
  and frown lines, cheek folds. Each class has a full-strength setting (``EXPRESSIONS``); a sample
  shows ``intensity`` times it, intensity drawn from 0.15 + 0.85 * Beta(1.6, 1). Weak samples are close
  to neutral on purpose: they are the ambiguous ones a confidence model should score low. For
  ``neutral`` the intensity damps the person's resting expression instead (low = less clearly neutral).
- **identity and nuisance** (independent of the label): face shape and size, jaw, skin tone, hair tone
  and style, beard, eye spacing/size/colour, brow shape, nose, mouth size, a resting expression, glasses
  (per identity), hat, clothing, background (flat, gradient, texture, stripes), lighting, rotation,
  scale, translation, blur and Gaussian noise (per sample). Identities come from a pool per split
  (about four samples each, disjoint between splits) and are drawn independently of the label.

Output of ``--out OUT`` (every part deterministic for a ``--seed``: reruns give the same bytes)::

    OUT/train/<class>/<class>_00000.png       RGB, --size px (ImageFolder layout, always written)
    OUT/test/<class>/<class>_00000.png
    OUT/metadata.csv                          split, path, class, label, intensity, identity per sample
    OUT/SYNTHETIC_FACES.txt                   what this folder is and the command that made it
    with --rafdb (in addition; the same train/test faces as JPEG):
    OUT/rafdb/EmoLabel/list_patition_label.txt        "train_00001.jpg 5" (RAF-DB codes 1..7)
    OUT/rafdb/Image/aligned/train_00001_aligned.jpg   (test: test_0001_aligned.jpg)
    with --fer2013 (in addition; other faces, 48x48 grey):
    OUT/fer2013/fer2013_vad.csv               emotion,pixels,Usage,Valence,Arousal,Dominance
    OUT/fer2013/split/{train,public_test,private_test}.csv
                                              emotion,pixels,Valence,Arousal,Dominance,label_name

FER2013 ``emotion`` uses FER2013's own codes (0 Angry ... 6 Neutral, ``utils.labels.FER2013_CODES``);
Valence/Arousal/Dominance are integers in -2..2 whose signs follow the class (``VAD``) and whose size
grows with the intensity, plus a little noise. The output is built in a temporary sibling folder and
renamed at the end; an existing OUT is replaced only when it is an earlier output of this tool.

Usage: ``python tools/make_synthetic_faces.py --out demo/faces [--rafdb] [--fer2013] [--report_logreg]``
"""

import argparse
import math
import os
import sys

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

if __package__ in (None, ""):  # run as `python tools/make_synthetic_faces.py`: make `utils` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.convert_common import atomic_output_dir  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.labels import CLASSES_7, FER2013_CODES, RAFDB_CODES  # noqa: E402

MARKER = "SYNTHETIC_FACES.txt"
SUPERSAMPLE = 4  # faces are drawn at 4x the output size and reduced with a Lanczos filter
FER_SIZE = 48

# Full-strength expression settings; 0 everywhere is neutral. curve: + mouth corners up; open: mouth
# opening 0..1; width: + wider mouth; teeth: 0 none, 1 upper teeth, 2 clenched teeth; lip_raise: one-sided
# upper-lip raise; brow_raise: + up; brow_angle: + inner ends down (frown), - inner ends up (worry);
# eye_open: + wide, - squint; wrinkle: nose wrinkles.
ACTIONS = ("curve", "open", "width", "lip_raise", "brow_raise", "brow_angle", "eye_open", "wrinkle")
EXPRESSIONS = {
    "anger": dict(
        curve=-0.25,
        open=0.45,
        width=-0.05,
        lip_raise=0.0,
        brow_raise=-0.70,
        brow_angle=1.00,
        eye_open=0.35,
        wrinkle=0.0,
        teeth=2,
    ),
    "disgust": dict(
        curve=-0.55,
        open=0.12,
        width=-0.05,
        lip_raise=1.00,
        brow_raise=-0.40,
        brow_angle=0.35,
        eye_open=-0.50,
        wrinkle=1.00,
        teeth=1,
    ),
    "fear": dict(
        curve=-0.30,
        open=0.55,
        width=0.40,
        lip_raise=0.0,
        brow_raise=0.70,
        brow_angle=-0.80,
        eye_open=0.90,
        wrinkle=0.0,
        teeth=1,
    ),
    "happy": dict(
        curve=1.00,
        open=0.40,
        width=0.35,
        lip_raise=0.0,
        brow_raise=0.10,
        brow_angle=0.0,
        eye_open=-0.40,
        wrinkle=0.0,
        teeth=1,
    ),
    "neutral": dict(
        curve=0.0,
        open=0.0,
        width=0.0,
        lip_raise=0.0,
        brow_raise=0.0,
        brow_angle=0.0,
        eye_open=0.0,
        wrinkle=0.0,
        teeth=0,
    ),
    "sad": dict(
        curve=-0.90,
        open=0.0,
        width=-0.10,
        lip_raise=0.0,
        brow_raise=0.15,
        brow_angle=-0.90,
        eye_open=-0.40,
        wrinkle=0.0,
        teeth=0,
    ),
    "surprise": dict(
        curve=0.0,
        open=1.00,
        width=-0.45,
        lip_raise=0.0,
        brow_raise=1.00,
        brow_angle=-0.10,
        eye_open=1.00,
        wrinkle=0.0,
        teeth=0,
    ),
}
# Valence, Arousal, Dominance of each class at full intensity, in -1..1; the file holds
# round(2 * intensity * value + noise) clipped to -2..2.
VAD = {
    "anger": (-0.8, 0.9, 0.6),
    "disgust": (-0.8, 0.5, 0.5),
    "fear": (-0.9, 0.8, -0.8),
    "happy": (1.0, 0.6, 0.6),
    "neutral": (0.0, 0.0, 0.0),
    "sad": (-0.9, -0.6, -0.7),
    "surprise": (0.1, 1.0, -0.5),
}
VAD_NOISE = 0.3

SKIN = [(255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 96), (161, 102, 66), (112, 70, 45), (86, 54, 38)]
HAIR = [
    (20, 16, 14),
    (60, 40, 25),
    (110, 72, 40),
    (170, 120, 60),
    (220, 190, 130),
    (150, 60, 30),
    (140, 140, 140),
    (235, 235, 230),
]
IRIS = [(70, 45, 25), (40, 30, 20), (60, 100, 150), (70, 110, 70), (110, 90, 60)]
SPLIT_CODES = {"train": 0, "test": 1, "fer_train": 2, "fer_public": 3, "fer_private": 4}
FER_USAGE = {"fer_train": "Training", "fer_public": "PublicTest", "fer_private": "PrivateTest"}
FER_SPLIT_FILES = {"fer_train": "train.csv", "fer_public": "public_test.csv", "fer_private": "private_test.csv"}


# --------------------------------------------------------------------------- parameters
def _jitter(rng, colour, amount):
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in colour)


def sample_identity(rng):
    """The person: everything about a face that does not depend on the expression."""
    skin = _jitter(rng, SKIN[rng.integers(len(SKIN))], 10)
    hair = _jitter(rng, HAIR[rng.integers(len(HAIR))], 12)
    return {
        "face_w": rng.uniform(0.29, 0.35),
        "face_h": rng.uniform(0.36, 0.42),
        "jaw": rng.uniform(0.0, 1.0),
        "skin": skin,
        "hair": hair,
        "hair_style": int(rng.integers(5)),
        "beard": bool(rng.random() < 0.12),
        "eye_dx": rng.uniform(0.36, 0.46),
        "eye_y": rng.uniform(-0.22, -0.08),
        "eye_w": rng.uniform(0.16, 0.21),
        "eye_h": rng.uniform(0.45, 0.62),
        "iris": _jitter(rng, IRIS[rng.integers(len(IRIS))], 10),
        "brow_gap": rng.uniform(0.10, 0.22),
        "brow_len": rng.uniform(0.36, 0.50),
        "brow_w": rng.uniform(0.04, 0.065),
        "brow_arch": rng.uniform(0.0, 0.05),
        "nose_len": rng.uniform(0.24, 0.36),
        "nose_w": rng.uniform(0.09, 0.15),
        "mouth_y": rng.uniform(0.46, 0.58),
        "mouth_w": rng.uniform(0.36, 0.48),
        "lip_w": rng.uniform(0.022, 0.035),
        "lip": _jitter(rng, tuple(0.6 * c * 0.62 + 0.4 * r for c, r in zip(skin, (160, 50, 60))), 12),
        "glasses": int(rng.choice(3, p=[0.72, 0.18, 0.10])),
        "glasses_colour": _jitter(rng, (40, 40, 40), 50),
        "ears": bool(rng.random() < 0.8),
        "blush": rng.uniform(0.0, 0.35),
        # resting expression: some people look a little sad, angry or amused when relaxed
        "rest": {
            "curve": rng.normal(0, 0.12),
            "open": abs(rng.normal(0, 0.04)),
            "width": rng.normal(0, 0.1),
            "lip_raise": 0.0,
            "brow_raise": rng.normal(0, 0.15),
            "brow_angle": rng.normal(0, 0.12),
            "eye_open": rng.normal(0, 0.15),
            "wrinkle": 0.0,
        },
    }


def sample_intensity(rng):
    """How strongly a sample shows its class, in [0.15, 1]."""
    return 0.15 + 0.85 * rng.beta(1.6, 1.0)


def expression_params(label, intensity, identity, rng):
    """The action values of one sample: resting expression + intensity x class setting + small noise."""
    target = EXPRESSIONS[label]
    rest = identity["rest"]
    scale = (1.15 - intensity) if label == "neutral" else 1.0  # a clear neutral damps the resting face
    params = {k: scale * rest[k] + intensity * target[k] + rng.normal(0, 0.05) for k in ACTIONS}
    params["open"] = max(0.0, params["open"])
    params["lip_raise"] = max(0.0, params["lip_raise"])
    params["wrinkle"] = max(0.0, params["wrinkle"])
    params["teeth"] = target["teeth"]
    params["side"] = 1.0 if rng.random() < 0.5 else -1.0  # which side a one-sided lip raise lifts
    return params


def sample_vad(label, intensity, rng):
    """Integer Valence, Arousal, Dominance in -2..2 for one sample."""
    values = 2.0 * intensity * np.array(VAD[label]) + rng.normal(0, VAD_NOISE, 3)
    return [int(v) for v in np.clip(np.rint(values), -2, 2)]


# --------------------------------------------------------------------------- drawing
def _background(rng, side):
    kind = rng.integers(4)
    base = rng.uniform(0, 255, 3)
    if kind == 0:  # flat
        img = np.ones((side, side, 3)) * base
    elif kind == 1:  # linear gradient in a random direction
        other = rng.uniform(0, 255, 3)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:side, 0:side] / side - 0.5
        t = np.clip(0.5 + xx * np.cos(angle) + yy * np.sin(angle), 0, 1)[..., None]
        img = base * (1 - t) + other * t
    elif kind == 2:  # smooth blotchy texture
        grid = rng.uniform(-60, 60, (int(rng.integers(3, 8)),) * 2 + (3,)) + base
        img = np.asarray(
            Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8)).resize((side, side), Image.BICUBIC), float
        )
    else:  # low-contrast stripes
        period = rng.uniform(0.05, 0.25) * side
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:side, 0:side]
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)[..., None]
        img = base + wave * rng.uniform(10, 40)
    return np.clip(img, 0, 255)


def _darker(colour, factor):
    return tuple(int(c * factor) for c in colour)


def _thick_polyline(draw, points, width, fill):
    draw.line(points, fill=fill, width=max(1, int(round(width))), joint="curve")
    r = width / 2
    for x, y in (points[0], points[-1]):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _draw_face_layer(identity, params, hat, clothes, side):
    """Draw the head, centred, on a transparent RGBA layer of side x side pixels."""
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    s = float(side)
    cx, cy = 0.5 * s, 0.47 * s
    fw, fh = identity["face_w"] * s, identity["face_h"] * s
    skin, hair = identity["skin"] + (255,), identity["hair"] + (255,)
    shade = _darker(identity["skin"], 0.72) + (255,)
    style = identity["hair_style"]

    # long hair behind the head, neck and shoulders
    if style == 2:
        d.rounded_rectangle([cx - 1.2 * fw, cy - 1.1 * fh, cx + 1.2 * fw, cy + 1.25 * fh], radius=0.9 * fw, fill=hair)
    d.rectangle([cx - 0.42 * fw, cy + 0.6 * fh, cx + 0.42 * fw, cy + 1.5 * fh], fill=_darker(identity["skin"], 0.88))
    d.ellipse([cx - 2.0 * fw, cy + 1.25 * fh, cx + 2.0 * fw, cy + 2.9 * fh], fill=clothes + (255,))
    if identity["ears"]:
        for sgn in (-1, 1):
            ex = cx + sgn * fw
            d.ellipse([ex - 0.16 * fw, cy - 0.2 * fh, ex + 0.16 * fw, cy + 0.15 * fh], fill=shade)

    # face outline: an ellipse whose lower half narrows towards the chin by `jaw`
    theta = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    ys = np.sin(theta)
    xs = np.cos(theta) * (1 - identity["jaw"] * 0.28 * np.clip(ys, 0, 1) ** 2)
    d.polygon([(cx + fw * x, cy + fh * y) for x, y in zip(xs, ys)], fill=skin)

    # hair on top
    if style in (1, 2, 3):
        top = cy - 1.12 * fh
        d.chord([cx - 1.06 * fw, top, cx + 1.06 * fw, cy + 0.2 * fh], 180, 360, fill=hair)
        if style == 3:  # fringe down the forehead, ending above the brows
            d.chord([cx - 0.95 * fw, cy - 0.95 * fh, cx + 0.95 * fw, cy - 0.35 * fh], 0, 180, fill=hair)
    elif style == 4:  # curls
        for k in range(9):
            a = np.pi + np.pi * k / 8
            r = 0.28 * fw
            x, y = cx + 0.98 * fw * np.cos(a), cy - 0.05 * fh + 1.0 * fh * np.sin(a)
            d.ellipse([x - r, y - r, x + r, y + r], fill=hair)

    if identity["blush"] > 0.05:
        blush = (210, 90, 90, int(120 * identity["blush"]))
        blush_layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        bd = ImageDraw.Draw(blush_layer)
        for sgn in (-1, 1):
            x, y = cx + sgn * 0.55 * fw, cy + 0.25 * fh
            bd.ellipse([x - 0.17 * fw, y - 0.1 * fh, x + 0.17 * fw, y + 0.1 * fh], fill=blush)
        layer.alpha_composite(blush_layer)

    # eyes
    eye_y = cy + identity["eye_y"] * fh
    ew = identity["eye_w"] * fw
    eh_rest = identity["eye_h"] * ew
    eh = max(0.12 * ew, eh_rest * (1 + 1.0 * params["eye_open"]))
    line = _darker(identity["skin"], 0.45) + (255,)
    for sgn in (-1, 1):
        ex = cx + sgn * identity["eye_dx"] * fw
        d.ellipse([ex - ew, eye_y - eh, ex + ew, eye_y + eh], fill=(245, 245, 240, 255))
        ir = min(0.55 * ew, 0.95 * eh)
        d.ellipse([ex - ir, eye_y - ir, ex + ir, eye_y + ir], fill=identity["iris"] + (255,))
        pr = 0.45 * ir
        d.ellipse([ex - pr, eye_y - pr, ex + pr, eye_y + pr], fill=(10, 10, 10, 255))
        d.arc([ex - ew, eye_y - eh, ex + ew, eye_y + eh], 180, 360, fill=line, width=max(1, int(0.05 * fw)))
        if params["eye_open"] < -0.2:  # squint: lower lid pushed up (cheek raise)
            d.arc([ex - ew, eye_y - 0.6 * eh, ex + ew, eye_y + eh], 20, 160, fill=shade, width=max(1, int(0.04 * fw)))

    # brows: raise moves them up, angle tilts the inner ends down (+) or up (-)
    brow_y = eye_y - eh_rest - (0.16 + 0.14 * params["brow_raise"]) * fh
    brow_colour = _darker(identity["hair"], 0.8) + (255,)
    for sgn in (-1, 1):
        inner = cx + sgn * identity["brow_gap"] * fw
        outer = cx + sgn * (identity["brow_gap"] + identity["brow_len"]) * fw
        iy = brow_y + 0.15 * params["brow_angle"] * fh
        oy = brow_y - 0.04 * params["brow_angle"] * fh
        my = (iy + oy) / 2 - identity["brow_arch"] * fh
        _thick_polyline(d, [(inner, iy), ((inner + outer) / 2, my), (outer, oy)], identity["brow_w"] * fh, brow_colour)
    if params["brow_raise"] > 0.25:  # forehead lines
        strength = min(1.0, (params["brow_raise"] - 0.25) / 0.6)
        for k in range(3):
            y = brow_y - (0.12 + 0.07 * k) * fh
            d.arc(
                [cx - 0.45 * fw, y - 0.04 * fh, cx + 0.45 * fw, y + 0.06 * fh],
                200,
                340,
                fill=_darker(identity["skin"], 1 - 0.3 * strength) + (255,),
                width=max(1, int(0.025 * fw)),
            )
    if params["brow_angle"] > 0.3:  # vertical frown lines between the brows
        strength = min(1.0, (params["brow_angle"] - 0.3) / 0.5)
        for sgn in (-1, 1):
            x = cx + sgn * 0.05 * fw
            d.line(
                [(x, brow_y - 0.02 * fh), (x, brow_y + 0.12 * fh)],
                fill=_darker(identity["skin"], 1 - 0.35 * strength) + (255,),
                width=max(1, int(0.03 * fw)),
            )

    # nose, with wrinkles across the bridge
    nose_tip = eye_y + identity["nose_len"] * fh
    nw = identity["nose_w"] * fw * (1 + 0.35 * params["wrinkle"])
    d.line([(cx, eye_y + 0.02 * fh), (cx - 0.3 * nw, nose_tip)], fill=shade, width=max(1, int(0.04 * fw)))
    for sgn in (-1, 1):
        d.arc(
            [cx + sgn * nw - 0.5 * nw, nose_tip - 0.4 * nw, cx + sgn * nw + 0.5 * nw, nose_tip + 0.4 * nw],
            0,
            180,
            fill=shade,
            width=max(1, int(0.04 * fw)),
        )
    if params["wrinkle"] > 0.2:
        strength = min(1.0, params["wrinkle"])
        for k in range(3):
            y = eye_y + (0.04 + 0.05 * k) * fh
            d.arc(
                [cx - 0.2 * fw, y - 0.03 * fh, cx + 0.2 * fw, y + 0.04 * fh],
                200,
                340,
                fill=_darker(identity["skin"], 1 - 0.4 * strength) + (255,),
                width=max(1, int(0.03 * fw)),
            )

    # cheek folds of a smile / sneer
    fold = max(params["curve"], 0.0) + 0.6 * params["lip_raise"]
    mouth_y = cy + identity["mouth_y"] * fh
    mw = identity["mouth_w"] * fw * (1 + 0.3 * params["width"])
    if fold > 0.3:
        strength = min(1.0, (fold - 0.3) / 0.5)
        for sgn in (-1, 1):
            d.arc(
                [
                    cx + sgn * (mw + 0.05 * fw) - 0.12 * fw,
                    nose_tip,
                    cx + sgn * (mw + 0.05 * fw) + 0.12 * fw,
                    mouth_y + 0.1 * fh,
                ],
                90 - sgn * 80 - 40,
                90 - sgn * 80 + 40,
                fill=_darker(identity["skin"], 1 - 0.3 * strength) + (255,),
                width=max(1, int(0.03 * fw)),
            )

    if identity["beard"]:
        d.chord([cx - 0.9 * fw, mouth_y - 0.35 * fh, cx + 0.9 * fw, cy + 1.05 * fh], 0, 180, fill=hair)

    # mouth: centre line bent by `curve`, one side lifted by `lip_raise`, lips parted by `open`
    t = np.linspace(-1, 1, 25)
    centre = (
        mouth_y
        - params["curve"] * 0.18 * fh * t**2
        - params["lip_raise"] * 0.10 * fh * np.clip(params["side"] * t, 0, None)
        + params["curve"] * 0.04 * fh
    )
    gap = params["open"] * 0.30 * fh * (1 - t**2) ** 0.8
    upper, lower = centre - 0.35 * gap, centre + 0.65 * gap
    xs = cx + mw * t
    lip = identity["lip"] + (255,)
    lip_w = identity["lip_w"] * fh * 3
    if params["open"] < 0.06:
        _thick_polyline(d, list(zip(xs, centre)), lip_w, lip)
    else:
        d.polygon(list(zip(xs, upper)) + list(zip(xs[::-1], lower[::-1])), fill=(70, 20, 25, 255))
        if params["teeth"]:
            depth = 0.45 if params["teeth"] == 1 else 1.0
            teeth_low = upper + depth * (lower - upper)
            d.polygon(list(zip(xs, upper)) + list(zip(xs[::-1], teeth_low[::-1])), fill=(240, 240, 232, 255))
            if params["teeth"] == 2:
                d.line(list(zip(xs, (upper + lower) / 2)), fill=(150, 150, 150, 255), width=max(1, int(0.02 * fw)))
        _thick_polyline(d, list(zip(xs, upper)), lip_w * 0.8, lip)
        _thick_polyline(d, list(zip(xs, lower)), lip_w, lip)

    # glasses (1 = round, 2 = square frames)
    if identity["glasses"]:
        colour = identity["glasses_colour"] + (255,)
        r = 1.45 * ew
        width = max(1, int(0.04 * fw))
        for sgn in (-1, 1):
            ex = cx + sgn * identity["eye_dx"] * fw
            box = [ex - r, eye_y - 0.8 * r, ex + r, eye_y + 0.8 * r]
            if identity["glasses"] == 1:
                d.ellipse(box, outline=colour, width=width)
            else:
                d.rounded_rectangle(box, radius=0.2 * r, outline=colour, width=width)
        gx = identity["eye_dx"] * fw - r
        d.line([(cx - gx, eye_y - 0.1 * r), (cx + gx, eye_y - 0.1 * r)], fill=colour, width=width)

    if hat is not None:
        kind, colour = hat
        top = cy - 1.0 * fh
        if kind == 0:  # cap with a brim
            d.chord([cx - 1.08 * fw, top - 0.35 * fh, cx + 1.08 * fw, top + 0.75 * fh], 180, 360, fill=colour)
            d.rectangle([cx - 1.3 * fw, top + 0.15 * fh, cx + 1.1 * fw, top + 0.24 * fh], fill=_darker(colour, 0.8))
        else:  # top hat / beanie block
            d.rectangle([cx - 0.85 * fw, top - 0.55 * fh, cx + 0.85 * fw, top + 0.2 * fh], fill=colour)
            d.rectangle([cx - 1.25 * fw, top + 0.12 * fh, cx + 1.25 * fw, top + 0.22 * fh], fill=_darker(colour, 0.7))
    return layer


def render_face(label, intensity, identity, rng, size=64, grey=False):
    """Render one face as a uint8 array (size x size x 3, or size x size when ``grey``).

    ``label`` is a class name of ``CLASSES_7`` or an index into it; ``identity`` comes from
    :func:`sample_identity`; ``rng`` (a numpy Generator) draws the per-sample nuisance.
    """
    if not isinstance(label, str):
        label = CLASSES_7[int(label)]
    side = size * SUPERSAMPLE
    params = expression_params(label, intensity, identity, rng)
    hat = (int(rng.integers(2)), tuple(int(c) for c in rng.integers(0, 255, 3))) if rng.random() < 0.15 else None
    clothes = tuple(int(c) for c in rng.integers(0, 255, 3))
    layer = _draw_face_layer(identity, params, hat, clothes, side)

    # pose jitter: rotation about the face, scale, translation
    angle = math.radians(rng.uniform(-10, 10))
    scale = rng.uniform(0.92, 1.08)
    tx, ty = rng.uniform(-0.04, 0.04, 2) * side
    c = side / 2
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    # inverse map, output pixel -> input pixel
    coeffs = (cos, sin, c - cos * (c + tx) - sin * (c + ty), -sin, cos, c + sin * (c + tx) - cos * (c + ty))
    layer = layer.transform((side, side), Image.AFFINE, coeffs, resample=Image.BILINEAR)

    background = Image.fromarray(_background(rng, side).astype(np.uint8)).convert("RGBA")
    background.alpha_composite(layer)
    image = background.convert("RGB").resize((size, size), Image.LANCZOS)
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.9) * size / 64))
    pixels = np.asarray(image, np.float64)
    # lighting: a brightness ramp across the image, then global gain/offset
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    ramp = 1 + rng.uniform(0, 0.35) * (xx * np.cos(angle) + yy * np.sin(angle))
    pixels = pixels * ramp[..., None] * rng.uniform(0.8, 1.15) + rng.uniform(-20, 20)
    pixels = pixels + rng.normal(0, rng.uniform(0, 8), pixels.shape)
    pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    if grey:
        return np.asarray(Image.fromarray(pixels).convert("L"))
    return pixels


# --------------------------------------------------------------------------- dataset
def generate_split(seed, split, per_class, size, grey=False):
    """Render ``per_class`` faces of each class for ``split``.

    Returns a list of dicts (class, label, index, intensity, identity, image), class-major. Every sample
    has its own random stream keyed by (seed, split, class, index), so the result is deterministic.
    """
    code = SPLIT_CODES[split]
    pool_size = max(1, math.ceil(per_class * len(CLASSES_7) / 4))
    pool_rng = np.random.default_rng([seed, code, 999])
    pool = [sample_identity(pool_rng) for _ in range(pool_size)]
    samples = []
    for label, name in enumerate(CLASSES_7):
        for i in range(per_class):
            rng = np.random.default_rng([seed, code, label, i])
            identity = int(rng.integers(pool_size))
            intensity = float(sample_intensity(rng))
            vad = sample_vad(name, intensity, rng)
            image = render_face(name, intensity, pool[identity], rng, size=size, grey=grey)
            samples.append(
                {
                    "class": name,
                    "label": label,
                    "index": i,
                    "intensity": intensity,
                    "identity": f"{split}-{identity:04d}",
                    "vad": vad,
                    "image": image,
                }
            )
    return samples


def _write_png(array, path):
    Image.fromarray(array).save(path, format="PNG")


def _write_imagefolder(root, split, samples, meta):
    for name in CLASSES_7:
        os.makedirs(os.path.join(root, split, name), exist_ok=True)
    for s in samples:
        rel = f"{split}/{s['class']}/{s['class']}_{s['index']:05d}.png"
        _write_png(s["image"], os.path.join(root, rel))
        s["path"] = rel
        meta.append((split, rel, s["class"], s["label"], round(s["intensity"], 4), s["identity"]))


def _write_rafdb(root, splits, seed):
    """RAF-DB basic layout of the same faces; names are numbered in a shuffled order, as in the real list."""
    to_code = {name: code for code, name in RAFDB_CODES.items()}
    lines = []
    image_dir = os.path.join(root, "rafdb", "Image", "aligned")
    os.makedirs(image_dir)
    os.makedirs(os.path.join(root, "rafdb", "EmoLabel"))
    for split, samples in splits.items():
        order = np.random.default_rng([seed, SPLIT_CODES[split], 555]).permutation(len(samples))
        digits = max(5 if split == "train" else 4, len(str(len(samples))))
        for number, k in enumerate(order, 1):
            s = samples[k]
            stem = f"{split}_{number:0{digits}d}"
            Image.fromarray(s["image"]).save(os.path.join(image_dir, f"{stem}_aligned.jpg"), format="JPEG", quality=95)
            lines.append(f"{stem}.jpg {to_code[s['class']]}")
    with open(os.path.join(root, "rafdb", "EmoLabel", "list_patition_label.txt"), "w") as handle:
        handle.write("\n".join(lines) + "\n")


def _write_fer2013(root, seed, per_train, per_test, meta):
    to_code = {name: code for code, name in FER2013_CODES.items()}
    folder = os.path.join(root, "fer2013")
    os.makedirs(os.path.join(folder, "split"))
    frames = []
    for split, per_class in (("fer_train", per_train), ("fer_public", per_test), ("fer_private", per_test)):
        samples = generate_split(seed, split, per_class, FER_SIZE, grey=True)
        order = np.random.default_rng([seed, SPLIT_CODES[split], 555]).permutation(len(samples))
        rows = [
            {
                "emotion": to_code[samples[k]["class"]],
                "pixels": " ".join(str(int(v)) for v in samples[k]["image"].ravel()),
                "Usage": FER_USAGE[split],
                "Valence": samples[k]["vad"][0],
                "Arousal": samples[k]["vad"][1],
                "Dominance": samples[k]["vad"][2],
                "label_name": samples[k]["class"],
            }
            for k in order
        ]
        frame = pd.DataFrame(rows)
        frame.drop(columns=["Usage"]).to_csv(os.path.join(folder, "split", FER_SPLIT_FILES[split]), index=False)
        frames.append(frame)
        offset = sum(len(f) for f in frames[:-1])
        for line, k in enumerate(order, offset + 2):
            s = samples[k]
            meta.append(
                (
                    split,
                    f"fer2013/fer2013_vad.csv:{line}",
                    s["class"],
                    s["label"],
                    round(s["intensity"], 4),
                    s["identity"],
                )
            )
    full = pd.concat(frames, ignore_index=True)
    full[["emotion", "pixels", "Usage", "Valence", "Arousal", "Dominance"]].to_csv(
        os.path.join(folder, "fer2013_vad.csv"), index=False
    )


def logreg_accuracy(train, test, side=32):
    """Test accuracy of logistic regression on raw grey pixels (side x side), best over a few C values.

    A yardstick for how far from linearly separable the data is; returns {C: accuracy}.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def features(samples):
        x = np.stack(
            [
                np.asarray(
                    Image.fromarray(s["image"]).convert("L").resize((side, side), Image.BILINEAR), np.float32
                ).ravel()
                / 255
                for s in samples
            ]
        )
        return x, np.array([s["label"] for s in samples])

    x_train, y_train = features(train)
    x_test, y_test = features(test)
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    results = {}
    for c in (0.001, 0.01, 0.1, 1.0):
        model = LogisticRegression(C=c, max_iter=3000).fit(x_train, y_train)
        results[c] = float((model.predict(x_test) == y_test).mean())
    return results


def make_dataset(
    out,
    seed=0,
    size=64,
    train_per_class=120,
    test_per_class=40,
    rafdb=False,
    fer2013=False,
    fer_train_per_class=120,
    fer_test_per_class=30,
    report_logreg=False,
):
    """Write the synthetic dataset under ``out`` (see the module docstring); returns a summary dict.

    The summary holds ``out``, ``counts`` {split: images}, and ``logreg`` {C: test accuracy} when
    ``report_logreg``. An existing ``out`` is replaced only when it is an earlier output of this tool.
    """
    if size < 32:
        raise UserError(f"--size {size} is too small to draw a face; use 32 or more.")
    for flag, value in (
        ("--train_per_class", train_per_class),
        ("--test_per_class", test_per_class),
        ("--fer_train_per_class", fer_train_per_class),
        ("--fer_test_per_class", fer_test_per_class),
    ):
        if value < 1:
            raise UserError(f"{flag} {value} must be at least 1.")
    ours = os.path.isfile(os.path.join(out, MARKER))
    splits = {
        "train": generate_split(seed, "train", train_per_class, size),
        "test": generate_split(seed, "test", test_per_class, size),
    }
    summary = {"out": os.path.abspath(out), "counts": {k: len(v) for k, v in splits.items()}}
    with atomic_output_dir(out, overwrite=ours) as tmp:
        meta = []
        for split, samples in splits.items():
            _write_imagefolder(tmp, split, samples, meta)
        if rafdb:
            _write_rafdb(tmp, splits, seed)
        if fer2013:
            _write_fer2013(tmp, seed, fer_train_per_class, fer_test_per_class, meta)
            summary["counts"].update(
                fer_training=7 * fer_train_per_class,
                fer_publictest=7 * fer_test_per_class,
                fer_privatetest=7 * fer_test_per_class,
            )
        pd.DataFrame(meta, columns=["split", "path", "class", "label", "intensity", "identity"]).to_csv(
            os.path.join(tmp, "metadata.csv"), index=False
        )
        command = (
            f"make_dataset(seed={seed}, size={size}, train_per_class={train_per_class}, "
            f"test_per_class={test_per_class}, rafdb={rafdb}, fer2013={fer2013}, "
            f"fer_train_per_class={fer_train_per_class}, fer_test_per_class={fer_test_per_class})"
        )
        with open(os.path.join(tmp, MARKER), "w") as handle:
            handle.write(
                "Synthetic faces made by tools/make_synthetic_faces.py (procedurally drawn, no real "
                "people).\nThe expression decides the class; identity, pose, background and noise are "
                f"independent of it.\nParameters: {command}\n"
                "This tool replaces this folder when rerun with the same --out.\n"
            )
    if report_logreg:
        summary["logreg"] = logreg_accuracy(splits["train"], splits["test"])
    return summary


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--train_per_class", type=int, default=120, help="training images per class")
    parser.add_argument("--test_per_class", type=int, default=40, help="test images per class")
    parser.add_argument("--rafdb", action="store_true", help="also write the RAF-DB basic layout under OUT/rafdb/")
    parser.add_argument("--fer2013", action="store_true", help="also write FER2013-format CSVs under OUT/fer2013/")
    parser.add_argument("--fer_train_per_class", type=int, default=120, help="FER2013 Training rows per class")
    parser.add_argument(
        "--fer_test_per_class",
        type=int,
        default=30,
        help="FER2013 rows per class in each of PublicTest and PrivateTest",
    )
    parser.add_argument(
        "--report_logreg",
        action="store_true",
        help="print the test accuracy of logistic regression on raw grey 32x32 pixels",
    )
    return parser.parse_args(argv)


@run_main
def main(argv=None):
    args = parse_args(argv)
    summary = make_dataset(
        args.out,
        seed=args.seed,
        size=args.size,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        rafdb=args.rafdb,
        fer2013=args.fer2013,
        fer_train_per_class=args.fer_train_per_class,
        fer_test_per_class=args.fer_test_per_class,
        report_logreg=args.report_logreg,
    )
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    print(f"wrote {summary['out']}: {counts} images")
    if "logreg" in summary:
        scores = ", ".join(f"C={c:g}: {acc:.1%}" for c, acc in summary["logreg"].items())
        print(
            f"logistic regression on raw grey 32x32 pixels, test accuracy: {scores}; "
            f"best {max(summary['logreg'].values()):.1%} (chance {1 / len(CLASSES_7):.1%})"
        )


if __name__ == "__main__":
    main()
