"""Convert FERPlus (FER2013 images + FERPlus crowd votes) into the ImageFolder layout.

Input, the two real files, whose data rows are aligned one to one:

- ``fer2013.csv`` (``--fer2013``): columns ``emotion,pixels,Usage``; ``pixels`` holds 48x48 = 2304
  space-separated grey values 0..255.
- ``fer2013new.csv`` (``--ferplus``): columns ``Usage,Image name,neutral,happiness,surprise,sadness,
  anger,disgust,fear,contempt,unknown,NF``; the last ten are vote counts from ten annotators.

Labelling: rows with an empty ``Image name`` are dropped (FERPlus marks non-faces that way); the label is
the majority vote over the ten vote columns; a row is dropped when the maximum is tied, or when it is
``unknown`` or ``NF`` (not a face); with ``--classes 7`` rows whose majority is ``contempt`` are dropped.
Vote columns map to class names through ``utils.labels.FERPLUS_COLUMNS``.

Output (``--out``): ``OUT/{train,val,test}/<class>/<Image name>`` as 48x48 grey PNG, by ``Usage``
(Training -> train, PublicTest -> val, PrivateTest -> test), with the canonical class folders of
``utils.labels.CLASSES_8`` (or ``CLASSES_7``). Counts kept per split and class and dropped per reason are
printed. The output is built in a temporary sibling folder and renamed at the end: on any error nothing
is left behind.

Usage: ``python tools/prepare_ferplus.py --fer2013 fer2013.csv --ferplus fer2013new.csv --out data/FERPlus``
"""

import os
import sys

import numpy as np
import pandas as pd
from PIL import Image

if __package__ in (None, ""):  # run as `python tools/prepare_ferplus.py`: make `utils` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.convert_common import (
    add_flag,
    atomic_output_dir,
    converter_parser,
    make_class_dirs,  # noqa: E402
    print_counts,
    print_dropped,
)
from utils.errors import UserError, run_main  # noqa: E402
from utils.labels import FERPLUS_COLUMNS, FERPLUS_DROPPED_COLUMNS, classes_for  # noqa: E402

USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SPLITS = ("train", "val", "test")
VOTE_COLUMNS = list(FERPLUS_COLUMNS) + list(FERPLUS_DROPPED_COLUMNS)


def read_csv(path, flag, required):
    """Read a CSV with pandas; a missing file or column is a UserError naming it."""
    if not os.path.isfile(path):
        raise UserError(f"{flag} file {path} not found; pass the path of the real file.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{flag} file {path} is not a readable CSV ({exc}).") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise UserError(f"{flag} file {path} lacks the column(s) {', '.join(missing)}; expected {','.join(required)}.")
    return frame


def majority_label(votes, classes):
    """(class name, None) for a row of ten vote counts, or (None, reason) when the row is dropped."""
    votes = np.asarray(votes)
    top = votes.max()
    winners = np.flatnonzero(votes == top)
    if len(winners) > 1:
        return None, "tie"
    column = VOTE_COLUMNS[winners[0]]
    if column in FERPLUS_DROPPED_COLUMNS:
        return None, column
    name = FERPLUS_COLUMNS[column]
    if name not in classes:
        return None, name
    return name, None


def decode_pixels(text, where):
    """A 48x48 uint8 array from FER2013's space-separated pixel string."""
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError:
        raise UserError(f"{where} has non-integer pixels; fix or remove that row.") from None
    if values.size != 48 * 48 or values.min() < 0 or values.max() > 255:
        raise UserError(f"{where} has {values.size} pixel values (needs 2304 in 0..255); fix or remove that row.")
    return values.reshape(48, 48).astype(np.uint8)


def read_ferplus(fer2013_path, ferplus_path, num_classes):
    """Labelled rows: list of (split, file name, class, pixels string, fer2013 line), and drop counts."""
    classes = classes_for(num_classes)
    images = read_csv(fer2013_path, "--fer2013", ["pixels"])
    votes = read_csv(ferplus_path, "--ferplus", ["Usage", "Image name"] + VOTE_COLUMNS)
    if len(images) != len(votes):
        raise UserError(
            f"--fer2013 {fer2013_path} has {len(images)} rows but --ferplus {ferplus_path} has "
            f"{len(votes)}; FERPlus rows must align one to one with FER2013 rows (use the original files)."
        )
    counts = votes[VOTE_COLUMNS].apply(pd.to_numeric, errors="coerce")
    holes = counts.isna().any(axis=1).to_numpy()
    if holes.any():
        line = int(np.flatnonzero(holes)[0]) + 2
        raise UserError(f"--ferplus {ferplus_path} line {line} has a vote that is not a number; fix that row.")
    if "Usage" in images.columns:
        mismatched = int((images["Usage"].str.strip() != votes["Usage"].str.strip()).sum())
        if mismatched:
            print(f"warning: {mismatched} rows have a different Usage in the two files; using FERPlus's.")
    rows, dropped = [], {}
    vote_values = counts.to_numpy()
    for i, (usage, name) in enumerate(zip(votes["Usage"].str.strip(), votes["Image name"].str.strip())):
        line = i + 2
        if not name:
            dropped["no image name"] = dropped.get("no image name", 0) + 1
            continue
        if usage not in USAGE_TO_SPLIT:
            raise UserError(
                f"--ferplus {ferplus_path} line {line} has Usage {usage!r}; expected Training, "
                f"PublicTest or PrivateTest."
            )
        label, reason = majority_label(vote_values[i], classes)
        if label is None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        filename = os.path.basename(name)
        if not filename.lower().endswith(".png"):
            filename += ".png"
        rows.append((USAGE_TO_SPLIT[usage], filename, label, images["pixels"].iat[i], line))
    return classes, rows, dropped


def convert(fer2013_path, ferplus_path, out, num_classes=8, overwrite=False):
    """Write ``out/{train,val,test}/<class>/``; returns (classes, kept counts, dropped counts)."""
    classes, rows, dropped = read_ferplus(fer2013_path, ferplus_path, num_classes)
    kept = {}
    with atomic_output_dir(out, overwrite) as tmp:
        make_class_dirs(tmp, SPLITS, classes)
        for split, filename, label, pixels, line in rows:
            array = decode_pixels(pixels, f"--fer2013 {fer2013_path} line {line}")
            Image.fromarray(array).save(os.path.join(tmp, split, label, filename), format="PNG")
            kept[(split, label)] = kept.get((split, label), 0) + 1
    return classes, kept, dropped


def parse_args(argv=None):
    parser = converter_parser(__doc__)
    parser.add_argument("--fer2013", required=True, help="fer2013.csv (emotion,pixels,Usage)")
    parser.add_argument("--ferplus", required=True, help="fer2013new.csv (FERPlus votes)")
    parser.add_argument("--out", required=True, help="output folder")
    add_flag(parser, "--classes")
    add_flag(parser, "--overwrite")
    return parser.parse_args(argv)


@run_main
def main(argv=None):
    args = parse_args(argv)
    classes, kept, dropped = convert(args.fer2013, args.ferplus, args.out, args.classes, args.overwrite)
    print_counts(f"wrote {os.path.abspath(args.out)} (kept {sum(kept.values())} images)", kept, SPLITS, classes)
    print_dropped(dropped, " rows")


if __name__ == "__main__":
    main()
