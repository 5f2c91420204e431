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

The list file is parsed by ``dataset_concept.read_rafdb_list`` (the reader of ``--dataset rafdb``);
the output helpers live in ``tools/convert_common.py``.

Usage: ``python tools/prepare_rafdb.py --root RAF-DB/basic --out data/RAF-DB [--link]``
"""

import os
import sys

if __package__ in (None, ""):  # run as `python tools/prepare_rafdb.py`: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_concept import RAFDB_IMAGES, RAFDB_LIST, read_rafdb_list  # noqa: E402
from tools.convert_common import (
    add_flag,
    atomic_output_dir,
    converter_parser,
    make_class_dirs,  # noqa: E402
    place_file,
    print_counts,
)
from utils.errors import UserError, run_main  # noqa: E402
from utils.labels import CLASSES_7  # noqa: E402

SPLITS = ("train", "test")


def read_rafdb(root):
    """The samples of a RAF-DB basic folder: a list of (split, image path, class name, file name)."""
    if not os.path.isdir(root):
        raise UserError(f"RAF-DB folder {root} does not exist; pass --root pointing at RAF-DB/basic.")
    entries = read_rafdb_list(
        root, "--root must be the RAF-DB basic folder holding EmoLabel/list_patition_label.txt and Image/aligned/"
    )
    samples = [
        (split, os.path.join(root, rel), CLASSES_7[label], os.path.basename(rel)) for split, rel, label in entries
    ]
    missing = [path for _, path, _, _ in samples if not os.path.isfile(path)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(
            f"image {missing[0]}{more} listed in {os.path.join(root, RAFDB_LIST)} not found; restore "
            f"the aligned images under {os.path.join(root, RAFDB_IMAGES)}."
        )
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
    parser = converter_parser(__doc__)
    parser.add_argument("--root", required=True, help="the RAF-DB basic folder (EmoLabel/, Image/aligned/)")
    parser.add_argument("--out", default=os.path.join("data", "RAF-DB"), help="output folder (default: data/RAF-DB)")
    add_flag(parser, "--link")
    add_flag(parser, "--overwrite")
    return parser.parse_args(argv)


@run_main
def main(argv=None):
    args = parse_args(argv)
    counts = convert(args.root, args.out, args.link, args.overwrite)
    print_counts(f"wrote {os.path.abspath(args.out)}", counts, SPLITS, CLASSES_7)


if __name__ == "__main__":
    main()
