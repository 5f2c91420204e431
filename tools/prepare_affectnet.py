"""Convert AffectNet into the ImageFolder layout (7 or 8 classes).

Two real input forms; the one present under ``--root`` is detected (the first when both are there):

(a) the cropped-face release::

        ROOT/train_set/images/<id>.jpg     ROOT/train_set/annotations/<id>_exp.npy
        ROOT/val_set/images/<id>.jpg       ROOT/val_set/annotations/<id>_exp.npy

    each ``_exp.npy`` holds the expression code as a numpy string or integer scalar (the ``_val``,
    ``_aro`` and ``_lnd`` files beside it are ignored);

(b) the original release::

        ROOT/training.csv  ROOT/validation.csv
        ROOT/Manually_Annotated_Images/<subDirectory_filePath>

    CSV columns ``subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,
    valence,arousal`` (a file without that header line, as ``validation.csv`` is often shipped, is read
    with those names). With ``--crop`` each image is cropped to its face box.

Expression codes map through ``utils.labels.AFFECTNET_CODES`` (0 Neutral, 1 Happy, 2 Sad, 3 Surprise,
4 Fear, 5 Disgust, 6 Anger, 7 Contempt); codes 8 (none), 9 (uncertain) and 10 (no face) are dropped, and
contempt too with ``--classes 7``. Output (``--out``): ``OUT/train/<class>/`` and ``OUT/val/<class>/``
with the canonical class folders of ``utils.labels.CLASSES_8`` (or ``CLASSES_7``); files are copied,
or hard-linked (symlinked where that fails) with ``--link``. A listed image that is missing is an error
naming it (``--skip_missing`` skips and counts such images instead). The output is built in a temporary
sibling folder and renamed at the end: on any error nothing is left behind.

Usage: ``python tools/prepare_affectnet.py --root AffectNet --out data/AffectNet [--classes 8|7] [--link]``
"""

import os
import sys

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

if __package__ in (None, ""):  # run as `python tools/prepare_affectnet.py`: make `utils` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.convert_common import (
    add_flag,
    atomic_output_dir,
    converter_parser,
    make_class_dirs,  # noqa: E402
    place_file,
    print_counts,
    print_dropped,
)
from utils.errors import UserError, run_main  # noqa: E402
from utils.labels import AFFECTNET_CODES, classes_for  # noqa: E402

SPLITS = ("train", "val")
NPY_DIRS = {"train": "train_set", "val": "val_set"}
CSV_FILES = {"train": "training.csv", "val": "validation.csv"}
CSV_IMAGES = "Manually_Annotated_Images"
CSV_COLUMNS = [
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
]
DROPPED_CODES = {8: "none (8)", 9: "uncertain (9)", 10: "no face (10)"}


def detect_form(root):
    """'npy' or 'csv', whichever layout ``root`` holds."""
    if not os.path.isdir(root):
        raise UserError(f"AffectNet folder {root} does not exist; pass --root pointing at it.")
    if os.path.isdir(os.path.join(root, NPY_DIRS["train"])):
        return "npy"
    if os.path.isfile(os.path.join(root, CSV_FILES["train"])):
        return "csv"
    raise UserError(
        f"{root} holds neither train_set/ (images + annotations/*_exp.npy) nor training.csv "
        f"(+ Manually_Annotated_Images/); pass the AffectNet folder as --root."
    )


def parse_code(value, where):
    """The integer expression code of a CSV cell or npy scalar; anything else is a UserError."""
    try:
        number = float(str(value).strip())
    except ValueError:
        number = float("nan")
    if not number.is_integer() or not (int(number) in AFFECTNET_CODES or int(number) in DROPPED_CODES):
        raise UserError(f"{where} has expression {value!r}; AffectNet codes are integers 0..10.")
    return int(number)


def read_npy_split(root, split):
    """[(image path, code, output file name, where)] of one split of the cropped-face release."""
    base = os.path.join(root, NPY_DIRS[split])
    annotations, images = os.path.join(base, "annotations"), os.path.join(base, "images")
    if not os.path.isdir(annotations):
        raise UserError(
            f"annotation folder {annotations} not found; AffectNet's {NPY_DIRS[split]}/ needs annotations/ and images/."
        )
    items = []
    for name in sorted(os.listdir(annotations)):
        if not name.endswith("_exp.npy"):
            continue
        path = os.path.join(annotations, name)
        try:
            value = np.load(path, allow_pickle=False)
            value = value.item() if value.size == 1 else value
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path} ({exc}); it should hold the expression code as a scalar.") from None
        image_id = name[: -len("_exp.npy")]
        items.append((os.path.join(images, f"{image_id}.jpg"), parse_code(value, path), f"{image_id}.jpg", path))
    if not items:
        raise UserError(f"{annotations} holds no *_exp.npy files; check --root.")
    return items


def read_csv_split(root, split):
    """[(image path, code, output file name, where, face box)] of one split of the original release."""
    path = os.path.join(root, CSV_FILES[split])
    if not os.path.isfile(path):
        raise UserError(f"{path} not found; the CSV form of AffectNet needs training.csv and validation.csv.")
    header = 1  # lines before the first data row
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "subDirectory_filePath" not in frame.columns and len(frame.columns) == len(CSV_COLUMNS):
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, header=None, names=CSV_COLUMNS)
            header = 0
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a readable CSV ({exc}).") from None
    missing = [c for c in ("subDirectory_filePath", "expression") if c not in frame.columns]
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)}; expected {','.join(CSV_COLUMNS)}.")
    items = []
    for i, row in enumerate(frame.itertuples(index=False)):
        where = f"{path} line {i + 1 + header}"
        rel = row.subDirectory_filePath.strip()
        box = tuple(getattr(row, c, "") for c in ("face_x", "face_y", "face_width", "face_height"))
        items.append(
            (
                os.path.join(root, CSV_IMAGES, rel),
                parse_code(row.expression, where),
                rel.replace("/", "_").replace("\\", "_"),
                where,
                box,
            )
        )
    return items


def crop_to_box(src, dst, box, where):
    """Save ``src`` cropped to the face box (x, y, width, height), clamped to the image."""
    try:
        x, y, w, h = (int(float(v)) for v in box)
    except ValueError:
        raise UserError(f"{where} has no valid face_x/face_y/face_width/face_height for --crop.") from None
    if w <= 0 or h <= 0:
        raise UserError(f"{where} has an empty face box ({w}x{h}); fix it or convert without --crop.")
    try:
        with Image.open(src) as image:
            image = image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise UserError(f"cannot read image {src} ({exc}); fix or remove it.") from None
    left, top = max(0, x), max(0, y)
    right, bottom = min(image.width, x + w), min(image.height, y + h)
    if right <= left or bottom <= top:
        raise UserError(f"{where}: the face box lies outside the {image.width}x{image.height} image {src}.")
    fmt = "PNG" if dst.lower().endswith(".png") else "JPEG"
    image.crop((left, top, right, bottom)).save(dst, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def convert(root, out, num_classes=8, link=False, crop=False, skip_missing=False, overwrite=False):
    """Write ``out/{train,val}/<class>/``; returns (form, classes, kept counts, dropped counts)."""
    if link and crop:
        raise UserError("--link and --crop cannot be combined: a cropped image is a new file; drop one of them.")
    form = detect_form(root)
    if crop and form == "npy":
        print("note: --crop applies to the CSV form only; the train_set/val_set images are already cropped.")
        crop = False
    classes = classes_for(num_classes)
    code_to_class = {code: name for code, name in AFFECTNET_CODES.items() if name in classes}
    reader = read_npy_split if form == "npy" else read_csv_split
    plan, dropped = [], {}
    for split in SPLITS:
        for item in reader(root, split):
            src, code, filename, where = item[:4]
            reason = DROPPED_CODES.get(code) or (None if code in code_to_class else AFFECTNET_CODES[code])
            if reason is None and not os.path.isfile(src):
                if not skip_missing:
                    raise UserError(
                        f"image {src} (from {where}) not found; restore it or pass --skip_missing to "
                        f"skip missing images."
                    )
                reason = "missing image"
            if reason is not None:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            plan.append((split, src, code_to_class[code], filename, where, item[4] if len(item) > 4 else None))
    kept = {}
    with atomic_output_dir(out, overwrite) as tmp:
        make_class_dirs(tmp, SPLITS, classes)
        for split, src, name, filename, where, box in plan:
            dst = os.path.join(tmp, split, name, filename)
            if crop:
                crop_to_box(src, dst, box, where)
            else:
                place_file(src, dst, link)
            kept[(split, name)] = kept.get((split, name), 0) + 1
    return form, classes, kept, dropped


def parse_args(argv=None):
    parser = converter_parser(__doc__)
    parser.add_argument("--root", required=True, help="the AffectNet folder (train_set/+val_set/, or the CSVs)")
    parser.add_argument("--out", required=True, help="output folder")
    add_flag(parser, "--classes")
    add_flag(parser, "--link")
    parser.add_argument("--crop", action="store_true", help="CSV form: crop each image to its face box")
    parser.add_argument("--skip_missing", action="store_true", help="skip listed images that are missing")
    add_flag(parser, "--overwrite")
    return parser.parse_args(argv)


@run_main
def main(argv=None):
    args = parse_args(argv)
    form, classes, kept, dropped = convert(
        args.root, args.out, args.classes, args.link, args.crop, args.skip_missing, args.overwrite
    )
    print_counts(
        f"wrote {os.path.abspath(args.out)} from the {form} form (kept {sum(kept.values())} images)",
        kept,
        SPLITS,
        classes,
    )
    print_dropped(dropped)


if __name__ == "__main__":
    main()
