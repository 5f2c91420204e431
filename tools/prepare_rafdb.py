"""Convert RAF-DB (basic) into the ImageFolder layout the stages read by default.

Input (the official RAF-DB "basic" download, ROOT = ``RAF-DB/basic``)::

    ROOT/EmoLabel/list_patition_label.txt     lines "train_00001.jpg 5" / "test_0001.jpg 1"
    ROOT/Image/aligned/train_00001_aligned.jpg
    ROOT/Image/aligned/test_0001_aligned.jpg

(the list file's name really is misspelled ``patition``). Official labels 1..7 = Surprise, Fear,
Disgust, Happiness, Sadness, Anger, Neutral are mapped with ``utils.labels.RAFDB_CODES``.

Output (``--out``, default ``data/RAF-DB``, the default ``--data_path`` of the stages)::

    OUT/train/<class>/train_00001_aligned.jpg
    OUT/test/<class>/test_0001_aligned.jpg

with the seven canonical class folders ``anger disgust fear happy neutral sad surprise``
(``utils.labels.CLASSES_7``), so labels are indices into the sorted folder names. Files are copied,
or hard-linked (symbolic link where a hard link is impossible) with ``--link``. The output is built
in a temporary sibling folder and renamed at the end: on any error nothing is left behind.

This module also holds the small output helpers the other converters share
(:func:`atomic_output_dir`, :func:`place_file`, :func:`make_class_dirs`).

Usage: ``python tools/prepare_rafdb.py --root RAF-DB/basic --out data/RAF-DB [--link]``
"""
import argparse
import contextlib
import os
import shutil
import sys

if __package__ in (None, ""):  # run as `python tools/prepare_rafdb.py`: make `utils` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.errors import UserError, run_main  # noqa: E402
from utils.labels import CLASSES_7, RAFDB_CODES  # noqa: E402

LIST_FILE = os.path.join("EmoLabel", "list_patition_label.txt")
IMAGE_DIR = os.path.join("Image", "aligned")
SPLITS = ("train", "test")


# --------------------------------------------------------------------------- shared output helpers
@contextlib.contextmanager
def atomic_output_dir(out, overwrite=False, flag="--out"):
    """Yield a temporary folder next to ``out``; on success it becomes ``out``, on any error it goes.

    An existing non-empty ``out`` is refused unless ``overwrite`` (then it is replaced only after the
    new content is complete). Parent folders created here are removed again on failure.
    """
    out = os.path.abspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"{flag} {out} exists and is not a folder; choose another {flag}.")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise UserError(f"output folder {out} already exists and is not empty; remove it, choose another "
                        f"{flag}, or pass --overwrite.")
    created = []
    parent = os.path.dirname(out)
    missing = parent
    while missing and not os.path.exists(missing):
        created.append(missing)
        missing = os.path.dirname(missing)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the folder {parent} for {flag} ({exc.strerror}); choose another {flag}.") \
            from None
    tmp = os.path.join(parent, f".{os.path.basename(out)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp)
    try:
        yield tmp
        if os.path.isdir(out):
            old = os.path.join(parent, f".{os.path.basename(out)}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise


def place_file(src, dst, link=False):
    """Copy ``src`` to ``dst``; with ``link`` hard-link it, or symlink it where hard links fail."""
    if link:
        try:
            os.link(src, dst)
        except OSError:
            os.symlink(os.path.abspath(src), dst)
    else:
        shutil.copyfile(src, dst)


def make_class_dirs(root, splits, classes):
    """Create ``root/<split>/<class>/`` for every split and every canonical class.

    All class folders are created even when a split has no image of some class, so that label indices
    (positions in the sorted folder names) never shift; the dataset readers reject an empty folder
    with a clear message.
    """
    for split in splits:
        for name in classes:
            os.makedirs(os.path.join(root, split, name), exist_ok=True)


def print_counts(title, counts, splits, classes):
    """Print a small table of images per split and class."""
    print(title)
    width = max(len(c) for c in classes)
    print(f"  {'class':<{width}} " + " ".join(f"{s:>7}" for s in splits))
    for name in classes:
        print(f"  {name:<{width}} " + " ".join(f"{counts.get((s, name), 0):>7}" for s in splits))
    print(f"  {'total':<{width}} " + " ".join(f"{sum(counts.get((s, c), 0) for c in classes):>7}" for s in splits))


# --------------------------------------------------------------------------- RAF-DB
def read_rafdb(root):
    """The samples of a RAF-DB basic folder: a list of (split, image path, class name, file name)."""
    list_file = os.path.join(root, LIST_FILE)
    if not os.path.isdir(root):
        raise UserError(f"RAF-DB folder {root} does not exist; pass --root pointing at RAF-DB/basic.")
    if not os.path.isfile(list_file):
        raise UserError(f"label list {list_file} not found; --root must be the RAF-DB basic folder holding "
                        f"EmoLabel/list_patition_label.txt and Image/aligned/.")
    samples, missing = [], []
    with open(list_file) as handle:
        for lineno, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) not in RAFDB_CODES:
                raise UserError(f"{list_file} line {lineno} is not '<name>.jpg <label 1..7>': {line.strip()!r}; "
                                f"fix that line.")
            name, code = parts
            split = next((s for s in SPLITS if name.startswith(s + "_")), None)
            if split is None:
                raise UserError(f"{list_file} line {lineno} names {name!r}, which starts with neither 'train_' nor "
                                f"'test_'; fix that line.")
            stem, ext = os.path.splitext(name)
            filename = f"{stem}_aligned{ext}"
            path = os.path.join(root, IMAGE_DIR, filename)
            if not os.path.isfile(path):
                missing.append(path)
            samples.append((split, path, RAFDB_CODES[int(code)], filename))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"image {missing[0]}{more} listed in {list_file} not found; restore the aligned images "
                        f"under {os.path.join(root, IMAGE_DIR)}.")
    if not samples:
        raise UserError(f"{list_file} lists no images; check that it is the RAF-DB basic label file.")
    return samples


def convert(root, out, link=False, overwrite=False):
    """Write ``out/{train,test}/<class>/``; returns {(split, class): count}."""
    samples = read_rafdb(root)
    counts = {}
    with atomic_output_dir(out, overwrite) as tmp:
        make_class_dirs(tmp, SPLITS, CLASSES_7)
        for split, path, name, filename in samples:
            place_file(path, os.path.join(tmp, split, name, filename), link)
            counts[(split, name)] = counts.get((split, name), 0) + 1
    return counts


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="the RAF-DB basic folder (EmoLabel/, Image/aligned/)")
    parser.add_argument("--out", default=os.path.join("data", "RAF-DB"), help="output folder (default: data/RAF-DB)")
    parser.add_argument("--link", action="store_true", help="hard-link (or symlink) the images instead of copying")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser.parse_args(argv)


@run_main
def main(argv=None):
    args = parse_args(argv)
    counts = convert(args.root, args.out, args.link, args.overwrite)
    print_counts(f"wrote {os.path.abspath(args.out)}", counts, SPLITS, CLASSES_7)


if __name__ == "__main__":
    main()
