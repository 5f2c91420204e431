"""Datasets, transforms and normalisation statistics shared by every stage.

Formats (``--dataset``):
- ``folder`` (default), ``ferplus``, ``affectnet``: ImageFolder layout ``ROOT/<class>/*.png|jpg``;
  ferplus/affectnet additionally check the class names against their canonical lists
  (utils/labels.py; tools/prepare_ferplus.py and tools/prepare_affectnet.py write this layout).
- ``rafdb``: the RAF-DB basic list-file layout, ROOT holding ``EmoLabel/list_patition_label.txt``
  and ``Image/aligned/<name>_aligned.jpg``; the train split is the ``train_*`` lines, eval/test the
  ``test_*`` lines; official labels 1..7 are mapped onto the sorted class names.
- ``fer2013``: a FER2013-format CSV (``emotion``, ``pixels`` of 48x48 grey, optional ``Usage``,
  optional ``Valence``/``Arousal``/``Dominance``); with a ``Usage`` column the train split is
  ``Training``, eval ``PublicTest``, test ``PrivateTest``; without one the file is the split.
  Grey is replicated to three channels.

Every dataset yields dicts ``{"image", "label", "index"}`` (plus ``"vad"`` when asked for), has
``classes`` (sorted names; labels index into them), ``targets`` and ``relpath(i)``.
"""

import copy
import hashlib
import json
import os
import warnings

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from utils import distributed as du
from utils.cli import DEFAULT_EVAL_PATH
from utils.errors import UserError, first_line
from utils.labels import CLASSES_7, CLASSES_8, DATASETS, FER2013_CODES, RAFDB_CODES, VAD_COLUMNS, code_to_label

RAFDB_LIST = os.path.join("EmoLabel", "list_patition_label.txt")
RAFDB_IMAGES = os.path.join("Image", "aligned")
FER2013_USAGE = {"train": "Training", "val": "PublicTest", "eval": "PublicTest", "test": "PrivateTest"}
SPLIT_FLAGS = {"train": "--data_path", "val": "--val_data_path", "eval": "--eval_data_path", "test": "--test_data_path"}


# --------------------------------------------------------------------------- transforms
def resize_size(input_size: int) -> int:
    """The resize before the crop, scaled like 256 -> 224."""
    return int(round(input_size * 256 / 224))


def build_transform(is_train: bool, input_size: int, mean: list, std: list) -> transforms.Compose:
    """The method's transforms (docs/method.md): Resize(256) -> RandomCrop(224) -> flip, or Resize -> CenterCrop."""
    crop = (
        [transforms.RandomCrop(input_size), transforms.RandomHorizontalFlip()]
        if is_train
        else [transforms.CenterCrop(input_size)]
    )
    return transforms.Compose(
        [transforms.Resize(resize_size(input_size)), *crop, transforms.ToTensor(), transforms.Normalize(mean, std)]
    )


# --------------------------------------------------------------------------- datasets
class FaceDataset(Dataset):
    """Base class: subclasses fill ``samples`` [(path relative to root, label)] and ``classes``."""

    name = "faces"
    per_sample = ()  # further per-sample lists a subclass keeps in sample order (see subset)

    def __init__(self, root, classes, samples, transform=None, skip_bad_images=False, vad=None):
        if not samples:
            raise UserError(f"{root} holds no images for this split; check --data_path / --dataset.")
        self.root = root
        self.classes = list(classes)
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.vad = vad  # float32 array N x 3, or None

    def __len__(self):
        return len(self.samples)

    def relpath(self, index: int) -> str:
        return str(self.samples[index][0])

    def describe(self, index):
        return os.path.join(self.root, self.relpath(index))

    def _load(self, index):
        path = os.path.join(self.root, self.samples[index][0])
        if os.path.getsize(path) == 0:
            raise ValueError("the file is empty, 0 bytes")
        return ImageOps.exif_transpose(Image.open(path))  # upright, as the camera's orientation tag says

    def load_image(self, index: int) -> Image.Image:
        """The PIL RGB image of sample ``index``; an unreadable file is a UserError naming it.

        Empty files, images without pixels and decompression bombs (more pixels than PIL's
        ``Image.MAX_IMAGE_PIXELS``, its warning made an error) are refused the same way.
        """
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = self._load(index)
                image.load()
                if image.width == 0 or image.height == 0:
                    raise ValueError(f"the image is {image.width}x{image.height} pixels")
                return image.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise UserError(
                f"image {self.describe(index)} is refused as a decompression bomb ({first_line(exc)}); "
                f"a face image needs far fewer pixels: remove the file or pass --skip_bad_images."
            ) from None
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as exc:
            raise UserError(
                f"cannot read image {self.describe(index)} ({first_line(exc)}); fix or remove it, or pass "
                f"--skip_bad_images to skip unreadable images."
            ) from None

    def __getitem__(self, index):
        try:
            image = self.load_image(index)
        except UserError:
            if self.skip_bad_images:
                return None
            raise
        if self.transform is not None:
            image = self.transform(image)
        item = {"image": image, "label": self.targets[index], "index": index}
        if self.vad is not None:
            item["vad"] = torch.tensor(self.vad[index])
        return item

    def subset(self, indices) -> "FaceDataset":
        """A copy holding only the samples ``indices`` (in that order), with its own transform."""
        part = copy.copy(self)
        indices = [int(i) for i in indices]
        part.samples = [self.samples[i] for i in indices]
        part.targets = [self.targets[i] for i in indices]
        part.vad = self.vad[indices] if self.vad is not None else None
        for name in self.per_sample:
            values = getattr(self, name)
            setattr(part, name, [values[i] for i in indices])
        return part

    def fingerprint(self) -> str:
        """A short hash of what the split holds, for caches and for matching stage artefacts."""
        h = hashlib.sha1()
        h.update(json.dumps(self.classes).encode())
        for ref, label in self.samples:
            h.update(f"{ref}\t{label}\n".encode())
        return h.hexdigest()[:16]

    def source_files(self):
        """The files the images are read from (for :meth:`content_stamp`)."""
        return sorted({os.path.join(self.root, str(ref)) for ref, _ in self.samples})

    def content_stamp(self):
        """A short hash of the source files' sizes and modification times: a cache made from other
        bytes at the same paths (regenerated or replaced images) is not reused."""
        h = hashlib.sha1()
        for path in self.source_files():
            try:
                info = os.stat(path)
                h.update(f"{path}\t{info.st_size}\t{info.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{path}\tmissing\n".encode())
        return h.hexdigest()[:8]


class FolderFaces(FaceDataset):
    """ImageFolder layout, through torchvision's own folder scanning."""

    name = "folder"
    expected_classes = None

    def __init__(self, root, transform=None, skip_bad_images=False, flag="--data_path"):
        if not os.path.isdir(root):
            raise UserError(
                f"data folder {root} does not exist; put the class folders there or pass {flag} (see README, 'Data')."
            )
        try:
            classes, class_to_idx = find_classes(root)
        except FileNotFoundError:
            raise UserError(
                f"{root} holds no class folder; put the images in {os.path.join(root, '<class>')}/ "
                f"(see README, 'Data')."
            ) from None
        found = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        empty = sorted(set(classes) - {classes[label] for _, label in found})
        if empty:
            raise UserError(
                f"class folder {', '.join(os.path.join(root, c) for c in empty)} holds no image "
                f"({' '.join(IMG_EXTENSIONS)}); add images or remove the folder."
            )
        if self.expected_classes is not None and classes not in self.expected_classes:
            options = " or ".join(str(c) for c in self.expected_classes)
            raise UserError(f"{root} has class folders {classes}, but --dataset {self.name} expects {options}.")
        if all(c.isdigit() for c in classes):
            print(
                f"warning: the class folders of {root} are named only by digits ({', '.join(classes[:8])}"
                f"{' ...' if len(classes) > 8 else ''}); the class names are the folder names, in text order, "
                f"not a dataset's label codes: rename the folders (or convert with tools/prepare_*.py) to name "
                f"the expressions.",
                flush=True,
            )
        samples = [(os.path.relpath(path, root), label) for path, label in found]
        super().__init__(root, classes, samples, transform, skip_bad_images)


class FerPlusFaces(FolderFaces):
    name = "ferplus"
    expected_classes = (CLASSES_8, CLASSES_7)


class AffectNetFaces(FolderFaces):
    name = "affectnet"
    expected_classes = (CLASSES_8, CLASSES_7)


def read_rafdb_list(
    root,
    fix="--dataset rafdb expects the RAF-DB basic folder (EmoLabel/ and Image/aligned/), "
    "or convert it with tools/prepare_rafdb.py",
):
    """The entries of RAF-DB's list file: [(split, image path relative to ``root``, label index)].

    ``split`` is ``train`` or ``test`` (from the ``train_``/``test_`` name prefix), the path is
    ``Image/aligned/<name>_aligned.jpg`` and the label indexes CLASSES_7 (official codes 1..7 mapped
    through RAFDB_CODES). A missing list file is a UserError ending in ``fix``; a malformed line or an
    empty list is a UserError naming it. Whether the images exist is not checked here.
    """
    list_file = os.path.join(root, RAFDB_LIST)
    if not os.path.isfile(list_file):
        raise UserError(f"label list {list_file} not found; {fix}.")
    to_label = code_to_label(RAFDB_CODES, CLASSES_7)
    entries = []
    try:
        with open(list_file, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{list_file} is not a text file ({exc.reason} at byte {exc.start}); check that it is the RAF-DB "
            f"basic label file."
        ) from None
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdigit()) or int(parts[1]) not in to_label:
            raise UserError(
                f"{list_file} line {lineno} is not '<name>.jpg <label 1..7>': {line.strip()!r}; fix that line."
            )
        name, code = parts
        split = next((s for s in ("train", "test") if name.startswith(s + "_")), None)
        if split is None:
            raise UserError(
                f"{list_file} line {lineno} names {name!r}, which starts with neither 'train_' nor "
                f"'test_'; fix that line."
            )
        stem, ext = os.path.splitext(name)
        entries.append((split, os.path.join(RAFDB_IMAGES, f"{stem}_aligned{ext}"), to_label[int(code)]))
    if not entries:
        raise UserError(f"{list_file} lists no images; check that it is the RAF-DB basic label file.")
    return entries


class RafDbList(FaceDataset):
    """RAF-DB basic list-file layout (labels 1..7 mapped onto CLASSES_7); eval and test read the test lines."""

    name = "rafdb"

    def __init__(self, root, split, transform=None, skip_bad_images=False):
        wanted = "train" if split == "train" else "test"
        samples = [(path, label) for part, path, label in read_rafdb_list(root) if part == wanted]
        super().__init__(root, CLASSES_7, samples, transform, skip_bad_images)


class Fer2013Csv(FaceDataset):
    """FER2013-format CSV: 48x48 grey faces in a ``pixels`` column, labels mapped onto CLASSES_7."""

    name = "fer2013"
    per_sample = ("pixels", "rows")

    def __init__(self, csv_path, split, transform=None, skip_bad_images=False, vad=False, skip_missing_vad=False):
        if not os.path.isfile(csv_path):
            raise UserError(
                f"FER2013 CSV {csv_path} not found; pass the file with --data_path "
                f"(and --eval_data_path / --test_data_path)."
            )
        try:
            frame = pd.read_csv(csv_path)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise UserError(f"{csv_path} is not a readable CSV ({exc}).") from None
        missing = [c for c in ("emotion", "pixels") if c not in frame.columns]
        if vad:
            missing += [c for c in VAD_COLUMNS if c not in frame.columns]
        if missing:
            raise UserError(
                f"{csv_path} lacks the column(s) {', '.join(missing)}; a FER2013 CSV has "
                f"emotion, pixels[, Usage]{', Valence, Arousal, Dominance' if vad else ''}."
            )
        frame["row"] = np.arange(len(frame)) + 2  # the line number a user sees in an editor
        if "Usage" in frame.columns:
            frame = frame[frame["Usage"] == FER2013_USAGE[split]]
        bad = frame[~frame["emotion"].isin(list(FER2013_CODES))]
        if len(bad):
            raise UserError(
                f"{csv_path} line {bad['row'].iloc[0]} has emotion {bad['emotion'].iloc[0]!r}; FER2013 labels are 0..6."
            )
        self.skipped_rows = 0
        if vad:
            values = frame[list(VAD_COLUMNS)].apply(pd.to_numeric, errors="coerce")
            holes = values.isna().any(axis=1)
            if holes.any():
                if not skip_missing_vad:
                    raise UserError(
                        f"{csv_path} line {frame['row'][holes].iloc[0]} has no valid Valence/Arousal/"
                        f"Dominance; fill it in or pass --skip_missing_vad to drop such rows."
                    )
                self.skipped_rows = int(holes.sum())
                frame, values = frame[~holes], values[~holes]
        self.csv_path = csv_path
        self.pixels = list(frame["pixels"])
        self.rows = list(frame["row"])
        to_label = code_to_label(FER2013_CODES, CLASSES_7)
        samples = [(f"row{row}", to_label[int(code)]) for row, code in zip(self.rows, frame["emotion"])]
        vad_array = values.to_numpy(np.float32) if vad else None
        super().__init__(csv_path, CLASSES_7, samples, transform, skip_bad_images, vad_array)

    def describe(self, index):
        return f"{self.csv_path} line {self.rows[index]}"

    def source_files(self):
        return [self.csv_path]

    def _load(self, index):
        fields = str(self.pixels[index]).split()
        try:
            values = np.array(fields, dtype=np.float32)
        except ValueError:
            bad = next(f for f in fields if not _is_number(f))
            raise ValueError(f"pixels holds the non-numeric value {bad[:20]!r}") from None
        if values.size != 48 * 48:
            raise ValueError(f"pixels holds {values.size} values, not 48x48 = 2304")
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
            raise ValueError("pixels holds values outside 0..255")
        return Image.fromarray(values.reshape(48, 48).astype(np.uint8), mode="L")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class ImageFiles(FaceDataset):
    """Unlabelled images given as files and/or folders (searched recursively), for prediction."""

    name = "images"

    def __init__(self, inputs, transform=None, skip_bad_images=False):
        paths = []
        for item in inputs:
            if os.path.isdir(item):
                found = sorted(
                    os.path.join(d, f)
                    for d, _, files in os.walk(item)
                    for f in files
                    if f.lower().endswith(IMG_EXTENSIONS)
                )
                paths.extend(found)
            elif os.path.isfile(item):
                paths.append(item)
            else:
                raise UserError(f"{item} is neither an image file nor a folder.")
        if not paths:
            raise UserError(f"no image ({', '.join(IMG_EXTENSIONS)}) found in {', '.join(inputs)}.")
        super().__init__("", [], [(p, -1) for p in paths], transform, skip_bad_images)


def build_dataset(
    kind: str,
    path: str,
    split: str,
    transform=None,
    skip_bad_images: bool = False,
    vad: bool = False,
    skip_missing_vad: bool = False,
) -> FaceDataset:
    """The dataset of one split (``train``, ``eval`` or ``test``) in the format ``kind``."""
    if vad and kind != "fer2013":
        raise UserError("--vad needs VAD labels, which only the FER2013-format CSV carries; pass --dataset fer2013.")
    if kind == "fer2013":
        return Fer2013Csv(path, split, transform, skip_bad_images, vad, skip_missing_vad)
    if kind == "rafdb":
        return RafDbList(path, split, transform, skip_bad_images)
    folder = {"folder": FolderFaces, "ferplus": FerPlusFaces, "affectnet": AffectNetFaces}.get(kind)
    if folder is None:
        raise UserError(f"--dataset {kind} is not one of {', '.join(DATASETS)}.")
    return folder(path, transform, skip_bad_images, SPLIT_FLAGS.get(split, "--data_path"))


def check_same_classes(train_set, other_set, what):
    if other_set.classes != train_set.classes:
        raise UserError(
            f"the {what} split has classes {other_set.classes} but the training split has "
            f"{train_set.classes}; both need the same class folders."
        )


# --------------------------------------------------------------------------- loading
def collate_skip_none(batch: list) -> dict:
    """default_collate after dropping samples that --skip_bad_images turned into None.

    The number dropped travels as ``batch["skipped"]``; an all-bad batch becomes ``{"skipped": n}``.
    """
    kept = [item for item in batch if item is not None]
    out = default_collate(kept) if kept else {}
    out["skipped"] = len(batch) - len(kept)
    return out


def make_loader(
    dataset,
    batch_size,
    sampler=None,
    shuffle=False,
    drop_last=False,
    num_workers=4,
    device=None,
    persistent_workers=False,
    generator=None,
    collate_fn=collate_skip_none,
):
    """A DataLoader with the repository's conventions (pinned memory on CUDA, prefetch, collate).

    A loader without its own ``generator`` draws its workers' seeds from the global torch RNG,
    which checkpoints save and restore; evaluation loaders get their own so that evaluating never
    shifts the training's random stream (resumed runs stay identical).
    """
    pin = device is not None and torch.device(device).type == "cuda"
    kwargs = {}
    if num_workers > 0:
        kwargs = {"persistent_workers": persistent_workers, "prefetch_factor": 4}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle if sampler is None else False,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin,
        collate_fn=collate_fn,
        generator=generator,
        **kwargs,
    )


# --------------------------------------------------------------------------- normalisation
class _ImageStats(Dataset):
    """Per-image channel means and standard deviations of ToTensor images ([0, 1])."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.to_tensor = transforms.ToTensor()

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            image = self.to_tensor(self.dataset.load_image(index)).double()
        except UserError:
            if self.dataset.skip_bad_images:
                return torch.zeros(7, dtype=torch.float64)
            raise
        std, mean = torch.std_mean(image, dim=(1, 2), correction=0)
        return torch.cat([mean, std, torch.ones(1, dtype=torch.float64)])


def compute_norm_stats(dataset: FaceDataset, batch_size: int = 256, num_workers: int = 4) -> tuple[list, list]:
    """(mean, std): the average over images of per-image channel means and population stds.

    Images are read in batches by a DataLoader, sharded over ranks and summed exactly.
    """
    stats = _ImageStats(dataset)
    loader = DataLoader(
        stats,
        batch_size=batch_size,
        sampler=du.ShardSampler(len(stats)),
        num_workers=num_workers,
        generator=torch.Generator(),
    )
    total = torch.zeros(7, dtype=torch.float64)
    for rows in loader:
        total += rows.sum(0)
    du.all_reduce_sum(total)
    count = total[6].item()
    if count == 0:
        raise UserError(f"no readable image in {dataset.root} to compute normalisation statistics from.")
    return (total[:3] / count).tolist(), (total[3:6] / count).tolist()


def read_norm_cache(path: str) -> tuple[list, list] | None:
    """(mean, std) from a cache file, or None when it is absent or unreadable (then they are recomputed)."""
    try:
        with open(path) as handle:
            saved = json.load(handle)
        mean, std = saved["mean"], saved["std"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = all(isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v) for v in (mean, std))
    return (mean, std) if ok else None


def norm_stats(dataset: FaceDataset, cache_dir: str | None = None, num_workers: int = 4) -> tuple[list, list]:
    """Normalisation statistics of a training set, cached as JSON keyed by the dataset's fingerprint."""
    cache = None
    if cache_dir:
        cache = os.path.join(cache_dir, f"norm_{dataset.name}_{dataset.fingerprint()}_{dataset.content_stamp()}.json")
        saved = read_norm_cache(cache)
        if saved is not None:
            return saved
    mean, std = compute_norm_stats(dataset, num_workers=num_workers)
    if cache and du.is_main_process():
        from utils.checkpoint import write_json  # local import: checkpoint imports nothing from here

        os.makedirs(cache_dir, exist_ok=True)
        write_json(cache, {"root": os.path.abspath(dataset.root), "images": len(dataset), "mean": mean, "std": std})
    return mean, std


# --------------------------------------------------------------------------- what a stage calls
def fer2013_has_usage(path):
    """Whether a FER2013 CSV carries a Usage column (so one file holds all three splits)."""
    try:
        return "Usage" in pd.read_csv(path, nrows=0).columns
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return False


def split_validation(dataset: FaceDataset, fraction: float, seed: int) -> tuple[FaceDataset, FaceDataset, dict]:
    """Hold out ``fraction`` of each class's images of ``dataset`` (stratified, drawn with ``seed``).

    Class c gives round(fraction * n_c) images, at least one and at most n_c - 1 (a class keeps at least
    one training image). The draw depends only on (seed, fraction, the dataset's samples), so a later
    stage re-derives the same split from the record. Returns (remaining, held out, record) where the
    record {"fraction", "seed", "images", "fingerprint"} is what checkpoints store.
    """
    targets = np.asarray(dataset.targets)
    rng = np.random.default_rng(seed)
    held = []
    for c in range(len(dataset.classes)):
        members = np.flatnonzero(targets == c)
        if members.size < 2:
            continue
        n = min(max(int(round(fraction * members.size)), 1), members.size - 1)
        held.extend(rng.permutation(members)[:n].tolist())
    held_set = set(held)
    if not held:
        raise UserError(
            f"--val_split {fraction} holds out no image of {dataset.root}: every class has fewer than 2 images."
        )
    held = sorted(held)
    remaining = dataset.subset([i for i in range(len(dataset)) if i not in held_set])
    validation = dataset.subset(held)
    record = {"fraction": fraction, "seed": seed, "images": len(held), "fingerprint": validation.fingerprint()}
    return remaining, validation, record


def apply_recorded_split(dataset: FaceDataset, record: dict | None, what: str) -> FaceDataset:
    """The images of ``dataset`` that a stage-1 run trained on, from the validation split it recorded
    (``meta["val_split"]``; None: all of them). The split is drawn again and must hold the same images."""
    if not record:
        return dataset
    remaining, _, again = split_validation(dataset, record["fraction"], record["seed"])
    if again["fingerprint"] != record["fingerprint"]:
        raise UserError(
            f"{dataset.root} does not hold the {record['images']} validation images that {what} held out "
            f"(--val_split {record['fraction']}, --val_seed {record['seed']}); pass the training set it was "
            f"trained on."
        )
    return remaining


def build_splits(args, vad: bool = False, train_transform: bool = True) -> tuple[dict, list, list]:
    """The train / (val) / eval / (test) datasets of a stage with the method's transforms.

    ``val`` is ``--val_data_path``, or ``--val_split`` of the training images held out (stratified,
    ``--val_seed``; the rest train, and ``args.val_record`` says which were held out), or absent.
    Normalisation statistics are those of the training images (cached); classes must agree across
    splits. Returns (splits dict, mean, std).
    """
    skip_vad = getattr(args, "skip_missing_vad", False)
    if args.dataset == "fer2013" and args.eval_data_path == DEFAULT_EVAL_PATH and fer2013_has_usage(args.data_path):
        # one FER2013 file with Usage: PublicTest selects, PrivateTest is reported
        args.eval_data_path = args.data_path
        args.test_data_path = args.test_data_path or args.data_path
    splits = {"train": build_dataset(args.dataset, args.data_path, "train", None, args.skip_bad_images, vad, skip_vad)}
    args.val_record = None
    if getattr(args, "val_split", 0):
        splits["train"], splits["val"], args.val_record = split_validation(
            splits["train"], args.val_split, args.val_seed
        )
    for split, path in (
        ("val", getattr(args, "val_data_path", "")),
        ("eval", args.eval_data_path),
        ("test", getattr(args, "test_data_path", "")),
    ):
        if path:
            splits[split] = build_dataset(args.dataset, path, split, None, args.skip_bad_images, vad, skip_vad)
            check_same_classes(splits["train"], splits[split], split)
    mean, std = norm_stats(splits["train"], args.norm_cache, args.num_workers)
    for split, dataset in splits.items():
        dataset.transform = build_transform(split == "train" and train_transform, args.input_size, mean, std)
    return splits, mean, std


def train_loader(dataset, args, collate_fn=collate_skip_none) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled, sharded over ranks (DistributedSampler, also on one process), full batches only."""
    world, rank = du.get_world_size(), du.get_rank()
    if len(dataset) // world < args.batch_size:
        raise UserError(
            f"the training split has {len(dataset)} images, fewer than one batch of {args.batch_size} "
            f"per process on {world} process(es); lower --batch_size."
        )
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True
    )
    loader = make_loader(
        dataset,
        args.batch_size,
        sampler,
        drop_last=True,
        num_workers=args.num_workers,
        device=args.device_obj,
        collate_fn=collate_fn,
    )
    return loader, sampler


def eval_loader(dataset, args) -> DataLoader:
    """In order, rank r taking samples r, r+W, ...: every sample exactly once, no padding."""
    return make_loader(
        dataset,
        args.batch_size,
        du.ShardSampler(len(dataset)),
        num_workers=args.num_workers,
        device=args.device_obj,
        persistent_workers=args.num_workers > 0,
        generator=torch.Generator().manual_seed(args.seed),
    )
