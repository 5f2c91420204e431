"""Output helpers shared by the dataset converters (tools/prepare_*.py) and tools/make_synthetic_faces.py.

They write the ImageFolder layout ``OUT/<split>/<class>/`` atomically (:func:`atomic_output_dir`), place
the files (:func:`place_file`, :func:`make_class_dirs`), print what was written (:func:`print_counts`,
:func:`print_dropped`) and declare the command-line options the converters have in common
(:func:`converter_parser`, :func:`add_flag`).
"""

import argparse
import contextlib
import os
import shutil

from utils.errors import UserError

# Options several converters take: flag -> keyword arguments of ArgumentParser.add_argument.
FLAGS = {
    "--link": {"action": "store_true", "help": "hard-link (or symlink) the images instead of copying"},
    "--overwrite": {"action": "store_true", "help": "replace a non-empty --out"},
    "--classes": {
        "type": int,
        "choices": (8, 7),
        "default": 8,
        "help": "8 (with contempt, default) or 7 (contempt dropped)",
    },
}


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
        raise UserError(
            f"output folder {out} already exists and is not empty; remove it, choose another "
            f"{flag}, or pass --overwrite."
        )
    created = []
    parent = os.path.dirname(out)
    missing = parent
    while missing and not os.path.exists(missing):
        created.append(missing)
        missing = os.path.dirname(missing)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the folder {parent} for {flag} ({exc.strerror}); choose another {flag}."
        ) from None
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


def print_dropped(dropped, unit=""):
    """Print ``dropped N<unit>: reason n, ...`` for a {reason: count} dict (``none`` when empty)."""
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(dropped.items())) or "none"
    print(f"dropped {sum(dropped.values())}{unit}: {reasons}")


def converter_parser(doc):
    """The argument parser of a converter, described by the first paragraph of its module docstring."""
    return argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_flag(parser, flag):
    """Add one of the shared options of :data:`FLAGS` (``--link``, ``--overwrite``, ``--classes``) to ``parser``."""
    parser.add_argument(flag, **FLAGS[flag])
