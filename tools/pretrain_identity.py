"""Synthetic stand-ins for the two face-IDENTITY backbones: the same architectures, trained to tell apart
the people of the synthetic face generator, written in exactly the formats of the real weight files.

CRPN starts both pathways from face-identity networks (a VGGFace2 ResNet-50 and an MS-Celeb-1M ResNet-18,
pretrained/README.md). Neither can be downloaded here, so the demo trains its own on synthetic faces
(tools/make_synthetic_faces.py): ``--identities`` people, each drawn ``--images_per_identity`` times with
every expression class, the whole intensity range and the generator's per-image nuisance (pose, lighting,
background, blur, noise, hats, clothes). One image in five of every person is held out to measure
identity accuracy (top-1; chance is 1 / identities). The files are NOT face-recognition weights of real
people and must never be used as such; their names start with ``synthetic-identity_`` for that reason.

Identity training on these faces leaves no expression in the features (a random network's carry more; README,
"Why the teacher is weak here"), where real VGGFace2 features keep some. ``--expression_epochs N`` therefore
fine-tunes the network afterwards, N epochs, on the seven expressions of ``--expression_per_class`` faces per
class of other synthetic people (4 faces each; make_synthetic_faces' generator at seed 70000 + ``--seed``, not a
seed of the demo or the benchmarks), through a 7-way head beside the identity fc that is not written to the
file; held-out expression accuracy is measured on 30 faces per class of yet other people. For the ResNet-50 it
gives the concept pathway a teacher that knows more than its student can learn from the training faces, as the
paper's VGGFace2 teacher does, at no cost to the stages; but the fine-tuning takes most of the identity out of
the features (a fresh linear probe: 69 % -> 19 %), and the frozen non-emotion encoder reads them.
``--expression_identity_batch B`` carries B images of the identity training with every expression batch (one
forward pass, the two cross-entropies summed) so that the features keep their identity; at B = 32 they do (86.8 %
held-out identity afterwards) but learn much less expression (30.0 % against 45.2 %). With
``--expression_epochs`` the tool also writes the network as it was before the fine-tuning (identity only), so the
frozen non-emotion encoder can start from that (main_concept.py --non_emotion_pretrained): ``make demo`` trains
its ResNet-50 with ``--expression_epochs 4`` (expression alone) for the emotion encoder, gives the identity-only
file to the non-emotion encoder, and trains its ResNet-18 on identity alone (README, "A teacher that knows more,
cached in its stand-in").

Output (``--out``, default ``output/pretrained_synthetic``; not ``pretrained/``, which holds users' real files)::

    OUT/synthetic-identity_resnet50_ft_weight.pkl   pickle (protocol 2) of {torchvision name: numpy array},
                                                    fc of --identities outputs; format of resnet50_ft_weight.pkl
                                                    (main_concept.py --pretrained PATH); trained on BGR input
    OUT/synthetic-identity_resnet18_msceleb.pth     torch.save({"state_dict": ..., plain metadata}), fc of
                                                    --identities outputs; format of resnet18_msceleb.pth
                                                    (main_percept.py --pretrained PATH); RGB input
    OUT/synthetic-identity-only_<as above>          with --expression_epochs: the same network before the
                                                    expression fine-tuning, byte for byte the file of the run
                                                    without --expression_epochs
    OUT/identity_pretrain.json                      settings, cache key, held-out identity accuracy, train
                                                    time and sha256 of each file (per architecture)

Recipe: cross-entropy on identity (label smoothing 0.1), AdamW with a linear warm-up and a per-step cosine
decay, residual blocks initialised as the identity (last BatchNorm weight 0), random crop + flip as
dataset_concept.build_transform, normalisation statistics of the rendered training images. The ResNet-50 is
fed BGR (the channels of the RGB tensor reversed, exactly as models.concept.Encoder does), so the file means
what a real VGGFace2 file means. The defaults take about 4 minutes on 2 idle CPU cores (ResNet-50 about
2.5, ResNet-18 about 1) and reach about 70-80% held-out identity accuracy over 100 people (chance 1%);
``--expression_epochs 8`` adds about 3 minutes to the ResNet-50 (the expression phase: AdamW lr 1e-3, batch 32,
cosine to 0 per step), ``--expression_epochs 4`` (``make demo``'s) about 1.5, ``--expression_epochs 4
--expression_identity_batch 32`` about 2.5.

Every image has its own random stream keyed by (seed, identity, image), and training is seeded, so a seed
gives the same files (for the same number of torch threads). A rerun with the same settings reuses files
whose sha256 matches the JSON (and says so, in well under a second: no torch import); ``--force`` retrains.
All files are written atomically.

Usage: ``python tools/pretrain_identity.py [--out output/pretrained_synthetic] [--arch both] [--force]``
"""

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time

if __package__ in (None, ""):  # run as `python tools/pretrain_identity.py`: make `utils` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.errors import UserError, run_main  # noqa: E402  (light: the cache check imports no torch)
from utils.files import sha256_file  # noqa: E402

# Bump when anything that changes the trained weights for the same flags changes (data, model, training).
RECIPE_VERSION = 1
ARCHS = ("resnet50", "resnet18")
FILES = {"resnet50": "synthetic-identity_resnet50_ft_weight.pkl", "resnet18": "synthetic-identity_resnet18_msceleb.pth"}
INPUT_CHANNELS = {"resnet50": "BGR", "resnet18": "RGB"}  # what each real file's network was trained on
# with --expression_epochs, the network as it was before the expression fine-tuning (identity only), also written
IDENTITY_ONLY_FILES = {arch: name.replace("identity_", "identity-only_") for arch, name in FILES.items()}
REPORT = "identity_pretrain.json"
DEFAULT_OUT = os.path.join("output", "pretrained_synthetic")
HOLDOUT_EVERY = 5  # image j of a person is held out when j % 5 == 4
ARCH_CODES = {"resnet50": 50, "resnet18": 18}  # mixed into the seeds, so each network's run stands alone
IDENTITY_STREAM = 7001  # tags of the random streams that draw the people and their images; make_synthetic_faces
IMAGE_STREAM = 7002  # uses other streams, so the demo's people are not among these
LABEL_SMOOTHING = 0.1
WARMUP_FRACTION = 0.05  # of all steps, linear warm-up before the cosine decay
EXPRESSION_SEED = 70000  # + --seed: make_synthetic_faces' generator seed of the expression faces (other people
# than the demo's, generator seeds 0 and 1000, and the benchmark's, 0-2009)
EXPRESSION_HELDOUT_PER_CLASS = 30  # faces per class of still other people that measure expression accuracy
EXPRESSION_LR = 1e-3  # AdamW, cosine to 0 per step, batch 32: the demo's stage-1 recipe
EXPRESSION_BATCH = 32
ZERO_INIT_RESIDUAL = True  # last BN of every residual block starts at 0 (ResNet-50: 6.8% -> 33% after 3 epochs)


# --------------------------------------------------------------------------- settings and cache
def settings_for(args, arch):
    """Everything that decides ``arch``'s weights (the cache key is their hash)."""
    settings = {
        "recipe_version": RECIPE_VERSION,
        "arch": arch,
        "seed": args.seed,
        "identities": args.identities,
        "images_per_identity": args.images_per_identity,
        "size": args.size,
        "input_size": args.input_size,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "weight_decay": args.weight_decay,
        "label_smoothing": LABEL_SMOOTHING,
        "holdout_every": HOLDOUT_EVERY,
    }
    if args.expression_epochs:  # (absent otherwise, so identity-only files made before the option stay cached)
        settings.update(
            expression_epochs=args.expression_epochs,
            expression_per_class=args.expression_per_class,
            expression_seed=EXPRESSION_SEED + args.seed,
            expression_lr=EXPRESSION_LR,
            expression_batch=EXPRESSION_BATCH,
        )
        if args.expression_identity_batch:  # (absent at 0, so expression-only files made before stay cached)
            settings["expression_identity_batch"] = args.expression_identity_batch
    return settings


def cache_key(settings):
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def read_report(out):
    """The JSON of an earlier run in ``out`` ({} when absent or unreadable)."""
    path = os.path.join(out, REPORT)
    try:
        with open(path) as handle:
            report = json.load(handle)
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) and isinstance(report.get("archs"), dict) else {}


def reusable(report, out, arch, key):
    """Whether ``out`` holds ``arch``'s file made with the settings of ``key`` (and, after an expression
    fine-tuning, its identity-only file), unchanged since."""
    entry = report.get("archs", {}).get(arch)
    if not isinstance(entry, dict) or entry.get("key") != key:
        return False
    files = {FILES[arch]: entry.get("sha256")}
    if "identity_only" in entry:
        files[IDENTITY_ONLY_FILES[arch]] = entry["identity_only"].get("sha256")
    return all(
        os.path.isfile(os.path.join(out, name)) and sha256_file(os.path.join(out, name)) == digest
        for name, digest in files.items()
    )


# --------------------------------------------------------------------------- data
def plan(seed, identities, images_per_identity):
    """(identity, image, class index, intensity stratum, strata, held out) for every image.

    Person i's image j shows class (i + j) mod 7, so every person shows every class once it has 7 or more
    images, and classes are balanced over people. The images of one class of a person split the
    intensity range [0.15, 1] into equal strata, one image per stratum (the value inside is random).
    """
    from utils.labels import CLASSES_7

    rows = []
    strata = math.ceil(images_per_identity / len(CLASSES_7))
    for i in range(identities):
        for j in range(images_per_identity):
            rows.append(
                (i, j, (i + j) % len(CLASSES_7), j // len(CLASSES_7), strata, j % HOLDOUT_EVERY == HOLDOUT_EVERY - 1)
            )
    return rows


def _render_person(job):
    """Images of one person (uint8 HxWx3), each from its own stream keyed by (seed, identity, image)."""
    import numpy as np

    from tools.make_synthetic_faces import render_face, sample_identity

    seed, identity, rows, size = job
    person = sample_identity(np.random.default_rng([seed, IDENTITY_STREAM, identity]))
    images = []
    for _, j, label, stratum, strata, _ in rows:
        rng = np.random.default_rng([seed, IMAGE_STREAM, identity, j])
        intensity = 0.15 + 0.85 * (stratum + rng.random()) / strata
        images.append(render_face(label, intensity, person, rng, size=size))
    return images


def render_identities(seed, identities, images_per_identity, size, workers=1):
    """(images uint8 N x size x size x 3, identity labels, expression labels, held-out mask), numpy."""
    import numpy as np

    rows = plan(seed, identities, images_per_identity)
    jobs = [(seed, i, rows[i * images_per_identity : (i + 1) * images_per_identity], size) for i in range(identities)]
    if workers > 1 and sys.platform.startswith("linux"):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            per_person = list(pool.map(_render_person, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        per_person = [_render_person(job) for job in jobs]
    images = np.stack([image for person in per_person for image in person])
    identity = np.array([r[0] for r in rows], np.int64)
    expression = np.array([r[2] for r in rows], np.int64)
    held_out = np.array([r[5] for r in rows], bool)
    return images, identity, expression, held_out


def image_norm_stats(images):
    """(mean, std) per channel, as dataset_concept.compute_norm_stats defines them: the average over images
    of the per-image channel means and population standard deviations of the [0, 1] image."""
    import numpy as np

    x = images.astype(np.float64) / 255.0
    mean = x.mean(axis=(1, 2)).mean(0)
    std = x.std(axis=(1, 2)).mean(0)
    return [float(v) for v in mean], [float(v) for v in std]


def _array_dataset():
    from PIL import Image
    from torch.utils.data import Dataset

    class ArrayFaces(Dataset):
        """In-memory uint8 images -> {"image", "label", "index"} through a torchvision transform."""

        def __init__(self, images, labels, transform):
            self.images, self.labels, self.transform = images, labels, transform

        def __len__(self):
            return len(self.images)

        def __getitem__(self, index):
            image = self.transform(Image.fromarray(self.images[index]))
            return {"image": image, "label": int(self.labels[index]), "index": index}

    return ArrayFaces


# --------------------------------------------------------------------------- models and training
def build_model(arch, identities):
    from torch import nn
    from torchvision.models.resnet import BasicBlock, Bottleneck

    from models.backbones import msceleb_resnet18, vggface2_resnet50

    if arch == "resnet50":
        model = vggface2_resnet50(num_classes=identities)
    else:
        model = msceleb_resnet18()
        model.fc = nn.Linear(model.fc.in_features, identities)
    if ZERO_INIT_RESIDUAL:  # torchvision's zero_init_residual: every residual block starts as the identity
        for module in model.modules():
            if isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)
            elif isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)
    return model


def _prepare(arch, images):
    """The network's input convention: the VGGFace2 ResNet-50 is fed BGR (exactly as models.concept.Encoder
    flips the RGB pipeline on entry), the MS-Celeb ResNet-18 RGB."""
    return images.flip(1) if arch == "resnet50" else images


def _load_average():
    """The 1-minute load average (how busy the machine was: timings on a shared machine are slower), or None."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _fit(arch, model, loss_of, loader, epochs, optimizer, scheduler, evaluate, name):
    """``epochs`` epochs of minimising ``loss_of(batch)`` -> (loss, logits, labels) (the logits and labels give
    the training accuracy), then ``evaluate()`` (a held-out accuracy) after each; returns the per-epoch log."""
    from utils.log import progress

    log = []
    for epoch in range(epochs):
        model.train()
        tic = time.perf_counter()
        loss_sum = correct = seen = 0
        for batch in progress(loader, f"{arch} {name} epoch {epoch + 1}/{epochs}"):
            loss, logits, y = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        train_seconds = time.perf_counter() - tic
        accuracy = evaluate()
        record = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(1, seen),
            "train_acc": correct / max(1, seen),
            f"heldout_{name}_acc": accuracy,
            "images_per_s": seen / max(1e-9, train_seconds),
            "seconds": time.perf_counter() - tic,
        }
        log.append(record)
        print(
            f"{arch} {name} epoch {epoch + 1}/{epochs} | loss {record['loss']:.4f} | train_acc "
            f"{100 * record['train_acc']:.1f}% | heldout_{name}_acc {100 * accuracy:.1f}% | "
            f"{record['images_per_s']:.0f} img/s | {record['seconds']:.0f} s",
            flush=True,
        )
    return log


def _smoothed_ce(logits, labels):
    import torch.nn.functional as F

    return F.cross_entropy(logits, labels, label_smoothing=LABEL_SMOOTHING)


def _endless(loader):
    """The loader's batches, epoch after epoch (each epoch reshuffled by the loader's generator)."""
    while True:
        yield from loader


def _accuracy(logits_of, arch, loader):
    import torch

    correct = total = 0
    with torch.no_grad():
        for batch in loader:
            logits = logits_of(_prepare(arch, batch["image"]))
            correct += int((logits.argmax(1) == batch["label"]).sum())
            total += len(batch["label"])
    return correct / max(1, total)


def _cosine(optimizer, steps, warmup):
    """Linear warm-up over ``warmup`` steps, then a cosine to 0, per step."""
    import torch

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def expression_faces(seed, per_class, size):
    """(train images, labels, held-out images, labels): --expression_per_class faces per class of other people
    (make_synthetic_faces' generator at seed EXPRESSION_SEED + seed, its "train" split), and 30 per class of yet
    other people (its "test" split) to measure expression accuracy on people never seen."""
    import numpy as np

    from tools.make_synthetic_faces import generate_split

    def arrays(split, count):
        samples = generate_split(EXPRESSION_SEED + seed, split, count, size)
        return np.stack([s["image"] for s in samples]), np.array([s["label"] for s in samples], np.int64)

    return (*arrays("train", per_class), *arrays("test", EXPRESSION_HELDOUT_PER_CLASS))


def train_arch(arch, args, data, norm):
    """Train ``arch`` on identity, then (``--expression_epochs``) on expression; returns (model, record with
    the per-epoch logs and the held-out accuracies, the model as it was before the expression fine-tuning or None
    without one)."""
    import torch

    from dataset_concept import build_transform, make_loader
    from utils.labels import CLASSES_7

    images, identity, _, held_out = data
    mean, std = norm
    ArrayFaces = _array_dataset()
    train_tf, eval_tf = (
        build_transform(True, args.input_size, mean, std),
        build_transform(False, args.input_size, mean, std),
    )
    train_set = ArrayFaces(images[~held_out], identity[~held_out], train_tf)
    eval_set = ArrayFaces(images[held_out], identity[held_out], eval_tf)

    torch.manual_seed(args.seed * 1000 + ARCH_CODES[arch])
    generator = torch.Generator().manual_seed(args.seed * 1000 + ARCH_CODES[arch] + 1)
    batch_size = min(args.batch_size, len(train_set))
    train_loader = make_loader(train_set, batch_size, shuffle=True, drop_last=True, num_workers=0, generator=generator)
    eval_loader = make_loader(eval_set, 256, num_workers=0, generator=torch.Generator())
    model = build_model(arch, args.identities)
    if args.optimizer == "adam":
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay
        )
    steps = args.epochs * len(train_loader)
    scheduler = _cosine(optimizer, steps, max(1, int(WARMUP_FRACTION * steps)))
    load_before = _load_average()
    start = time.perf_counter()
    cpu_start = time.process_time()

    def identity_accuracy():
        model.eval()
        return _accuracy(model, arch, eval_loader)

    def identity_loss(batch):
        logits = model(_prepare(arch, batch["image"]))
        return _smoothed_ce(logits, batch["label"]), logits, batch["label"]

    log = _fit(
        arch, model, identity_loss, train_loader, args.epochs, optimizer, scheduler, identity_accuracy, "identity"
    )
    result = {"heldout_identity_top1": log[-1]["heldout_identity_acc"] if log else 0.0}
    identity_only = None
    if args.expression_epochs > 0:
        identity_only = copy.deepcopy(model).eval()  # written beside the fine-tuned file
        # a 7-way expression head beside the identity fc, on the pooled features the fc reads (a hook captures
        # them); the whole network is fine-tuned, the head is not written to the file. With
        # --expression_identity_batch B > 0 every step also carries B identity images of the training people
        # through the fc (one forward pass, the loss the sum of both), so the features keep the identity the frozen
        # non-emotion encoder reads; 0 fine-tunes on expression alone.
        x_train, y_train, x_heldout, y_heldout = expression_faces(args.seed, args.expression_per_class, args.size)
        expression_set = ArrayFaces(x_train, y_train, train_tf)
        heldout_set = ArrayFaces(x_heldout, y_heldout, eval_tf)
        head = torch.nn.Linear(model.fc.in_features, len(CLASSES_7))
        pooled = {}
        hook = model.fc.register_forward_pre_hook(lambda _, inputs: pooled.__setitem__("features", inputs[0]))
        identity_batches = None
        if args.expression_identity_batch > 0:
            identity_generator = torch.Generator().manual_seed(args.seed * 1000 + ARCH_CODES[arch] + 3)
            identity_batches = _endless(
                make_loader(
                    train_set,
                    min(args.expression_identity_batch, len(train_set)),
                    shuffle=True,
                    drop_last=True,
                    num_workers=0,
                    generator=identity_generator,
                )
            )

        def expression_logits(x):
            model(x)
            return head(pooled["features"])

        def expression_loss(batch):
            y = batch["label"]
            if identity_batches is None:
                logits = expression_logits(_prepare(arch, batch["image"]))
                return _smoothed_ce(logits, y), logits, y
            other = next(identity_batches)
            identity_logits = model(_prepare(arch, torch.cat([batch["image"], other["image"]])))[len(y) :]
            logits = head(pooled["features"][: len(y)])
            loss = _smoothed_ce(logits, y) + _smoothed_ce(identity_logits, other["label"])
            return loss, logits, y

        def expression_accuracy():
            model.eval()
            return _accuracy(expression_logits, arch, heldout_loader)

        generator = torch.Generator().manual_seed(args.seed * 1000 + ARCH_CODES[arch] + 2)
        batch_size = min(EXPRESSION_BATCH, len(expression_set))
        loader = make_loader(
            expression_set, batch_size, shuffle=True, drop_last=True, num_workers=0, generator=generator
        )
        heldout_loader = make_loader(heldout_set, 256, num_workers=0, generator=torch.Generator())
        parameters = list(model.parameters()) + list(head.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=EXPRESSION_LR, weight_decay=args.weight_decay)
        scheduler = _cosine(optimizer, args.expression_epochs * len(loader), 0)
        expression_log = _fit(
            arch,
            model,
            expression_loss,
            loader,
            args.expression_epochs,
            optimizer,
            scheduler,
            expression_accuracy,
            "expression",
        )
        hook.remove()
        result.update(
            heldout_expression_top1=expression_log[-1]["heldout_expression_acc"],
            heldout_identity_top1_after_expression=identity_accuracy(),
            expression_train_images=len(expression_set),
            expression_heldout_images=len(heldout_set),
            expression_epochs_log=expression_log,
        )
    result.update(
        chance=1.0 / args.identities,
        train_images=len(train_set),
        heldout_images=len(eval_set),
        train_seconds=round(time.perf_counter() - start, 2),
        train_cpu_seconds=round(time.process_time() - cpu_start, 2),
        torch_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        load_average_before=load_before,
        load_average_after=_load_average(),
        epochs_log=log,
    )
    return model.eval(), result, identity_only


# --------------------------------------------------------------------------- writing
def resnet50_pickle(model):
    """The bytes of resnet50_ft_weight.pkl's format: what Python 2 + numpy 1.x wrote with protocol 2.

    A dict {torchvision name: numpy array} holding, like the real (Caffe-converted) file, the parameters
    and the BatchNorm running statistics, ``fc`` included, and no ``num_batches_tracked`` counters. Keys
    and array data are Python-2 ``str`` (BINSTRING), numpy globals carry their numpy 1.x names
    (``numpy.core.multiarray``), so the file reads like the original: ``pickle.load(f, encoding="latin1")``.
    """
    import io
    import pickle
    import struct

    class Python2Pickler(pickle._Pickler):  # the pure-Python pickler, whose opcodes can be chosen
        dispatch = pickle._Pickler.dispatch.copy()

        def save_py2_str(self, obj):
            if len(obj) < 256:
                self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
            else:
                self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
            self.memoize(obj)

        dispatch[bytes] = save_py2_str

        def save_global(self, obj, name=None):
            module = getattr(obj, "__module__", None) or pickle.whichmodule(obj, name)
            name = name or obj.__qualname__
            if module.startswith("numpy._core"):  # numpy >= 2 spells numpy 1.x's numpy.core this way
                module = "numpy.core" + module[len("numpy._core") :]
            self.write(pickle.GLOBAL + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n")
            self.memoize(obj)

    arrays = {
        name.encode("ascii"): tensor.detach().cpu().numpy().copy()
        for name, tensor in model.state_dict().items()
        if not name.endswith("num_batches_tracked")
    }
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(arrays)
    return buffer.getvalue()


def resnet18_checkpoint(model, metadata):
    """The bytes of resnet18_msceleb.pth's format: torch.save({"state_dict": ..., plain metadata})."""
    import io

    import torch

    buffer = io.BytesIO()
    state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    torch.save({"state_dict": state, **metadata}, buffer)
    return buffer.getvalue()


def write_weights(network, out, name, settings, norm, heldout_top1):
    """Write ``network``, trained with ``settings``, in its architecture's real format to OUT/``name``
    (atomically); returns (sha256, bytes)."""
    from utils.checkpoint import atomic_write_bytes

    arch = settings["arch"]
    metadata = {
        "arch": arch,
        "num_classes": settings["identities"],
        "input": INPUT_CHANNELS[arch],
        "norm_mean_rgb": norm[0],
        "norm_std_rgb": norm[1],
        "settings": settings,
        "key": cache_key(settings),
        "heldout_identity_top1": heldout_top1,
        "what": "synthetic-identity stand-in (tools/pretrain_identity.py), not real MS-Celeb-1M weights",
    }
    blob = resnet50_pickle(network) if arch == "resnet50" else resnet18_checkpoint(network, metadata)
    atomic_write_bytes(os.path.join(out, name), blob)
    return hashlib.sha256(blob).hexdigest(), len(blob)


def check_writable(out):
    """Create ``out`` if needed and prove a file can be written there; a UserError otherwise."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}.tmp")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise UserError(
            f"cannot write to --out {out} ({exc.strerror or exc}); pass a folder you can write to."
        ) from None


# --------------------------------------------------------------------------- command line
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (not pretrained/: that is for real files)")
    parser.add_argument("--arch", default="both", choices=(*ARCHS, "both"), help="which network(s) to train")
    parser.add_argument("--identities", type=int, default=100, help="number of synthetic people (fc outputs)")
    parser.add_argument(
        "--images_per_identity",
        type=int,
        default=30,
        help="images per person (every 5th held out for the identity accuracy)",
    )
    parser.add_argument("--size", type=int, default=48, help="rendered image side in pixels")
    parser.add_argument("--input_size", type=int, default=40, help="crop size (resize is input_size*256/224)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs of each network")
    parser.add_argument("--lr", type=float, default=4e-3, help="peak learning rate (cosine schedule)")
    parser.add_argument("--batch_size", type=int, default=64, help="training batch size")
    parser.add_argument("--optimizer", default="adam", choices=("adam", "sgd"), help="AdamW or SGD with momentum")
    parser.add_argument("--weight_decay", type=float, default=5e-4, help="AdamW (decoupled) or SGD weight decay")
    parser.add_argument(
        "--expression_epochs",
        type=int,
        default=0,
        help="after identity, fine-tune this many epochs on the 7 expressions of other synthetic people (a head "
        "beside the identity fc, not written to the file); 0: identity only",
    )
    parser.add_argument(
        "--expression_per_class", type=int, default=240, help="faces per class of that fine-tuning (4 per person)"
    )
    parser.add_argument(
        "--expression_identity_batch",
        type=int,
        default=0,
        help="identity images of the training people carried with every expression batch of that fine-tuning, so "
        "the features keep their identity (README: 32 keeps it and learns less expression); 0: expression alone",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes that render the faces (does not change the result)",
    )
    parser.add_argument("--force", action="store_true", help="retrain even when matching files exist")
    return parser.parse_args(argv)


def check_args(args):
    if args.identities < 2:
        raise UserError(f"--identities {args.identities} must be at least 2.")
    if args.images_per_identity < HOLDOUT_EVERY:
        raise UserError(
            f"--images_per_identity {args.images_per_identity} must be at least {HOLDOUT_EVERY} "
            f"(one image in {HOLDOUT_EVERY} of every person is held out)."
        )
    if args.size < 32:
        raise UserError(f"--size {args.size} is too small to draw a face; use 32 or more.")
    if not 16 <= args.input_size <= args.size:
        raise UserError(f"--input_size {args.input_size} must be between 16 and --size {args.size}.")
    for name in ("epochs", "batch_size", "workers"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be a positive number, got {args.lr}.")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise UserError(f"--weight_decay cannot be negative, got {args.weight_decay}.")
    if args.expression_epochs < 0:
        raise UserError(f"--expression_epochs cannot be negative, got {args.expression_epochs}.")
    if args.expression_identity_batch < 0:
        raise UserError(f"--expression_identity_batch cannot be negative, got {args.expression_identity_batch}.")
    if args.expression_per_class < 1:
        raise UserError(f"--expression_per_class must be at least 1, got {args.expression_per_class}.")


def pretrain(args):
    """Train (or reuse) the requested networks; returns the report dict written to OUT/identity_pretrain.json."""
    check_args(args)
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file, not a folder; pass a folder.")
    archs = ARCHS if args.arch == "both" else (args.arch,)
    report = read_report(out)
    keys = {arch: cache_key(settings_for(args, arch)) for arch in archs}
    todo = [arch for arch in archs if args.force or not reusable(report, out, arch, keys[arch])]
    for arch in archs:
        if arch not in todo:
            entry = report["archs"][arch]
            accuracy = 100 * entry.get("heldout_identity_top1", float("nan"))
            print(
                f"reusing {os.path.join(out, FILES[arch])} (same settings, key {keys[arch]}, sha256 "
                f"{entry['sha256'][:12]}...; held-out identity accuracy {accuracy:.1f}%); --force retrains",
                flush=True,
            )
    if not todo:
        return report
    check_writable(out)

    from utils.checkpoint import remove_stale_temporaries, write_json

    remove_stale_temporaries(out)
    tic = time.perf_counter()
    data = render_identities(args.seed, args.identities, args.images_per_identity, args.size, args.workers)
    images, _, _, held_out = data
    norm = image_norm_stats(images[~held_out])
    print(
        f"rendered {len(images)} faces of {args.identities} synthetic people at {args.size} px "
        f"({int((~held_out).sum())} train, {int(held_out.sum())} held out) in {time.perf_counter() - tic:.1f} s",
        flush=True,
    )

    report = {
        "what": "synthetic stand-ins for the face-identity backbones, trained by tools/pretrain_identity.py "
        "on procedurally drawn faces (no real people); not VGGFace2 or MS-Celeb-1M weights",
        "recipe_version": RECIPE_VERSION,
        "archs": dict(report.get("archs", {})),
    }
    for arch in todo:
        settings = settings_for(args, arch)
        print(
            f"training {arch} on identity ({args.identities} people, {args.epochs} epochs, "
            f"{args.optimizer} lr {args.lr:g}, batch {args.batch_size}, {args.input_size} px)"
            + (
                f", then on the expressions of other people ({args.expression_epochs} epochs, "
                f"{args.expression_per_class} faces per class)"
                if args.expression_epochs
                else ""
            ),
            flush=True,
        )
        model, result, identity_only = train_arch(arch, args, data, norm)

        extra = {}
        if identity_only is not None:  # its settings and key are those of the same run without the fine-tuning
            plain = settings_for(argparse.Namespace(**{**vars(args), "expression_epochs": 0}), arch)
            digest, size = write_weights(
                identity_only, out, IDENTITY_ONLY_FILES[arch], plain, norm, result["heldout_identity_top1"]
            )
            extra["identity_only"] = {
                "file": IDENTITY_ONLY_FILES[arch],
                "key": cache_key(plain),
                "sha256": digest,
                "bytes": size,
                "heldout_identity_top1": result["heldout_identity_top1"],
            }
        path = os.path.join(out, FILES[arch])
        digest, size = write_weights(model, out, FILES[arch], settings, norm, result["heldout_identity_top1"])
        entry = {
            "file": FILES[arch],
            "key": keys[arch],
            "settings": settings,
            "sha256": digest,
            "bytes": size,
            "input_channels": INPUT_CHANNELS[arch],
            "norm_mean_rgb": norm[0],
            "norm_std_rgb": norm[1],
            **result,
            **extra,
        }
        report["archs"][arch] = entry
        write_json(os.path.join(out, REPORT), report)  # after each network: a kill keeps what is done
        print(
            f"{arch}: held-out identity accuracy {100 * result['heldout_identity_top1']:.1f}% "
            f"(chance {100 / args.identities:.1f}%)"
            + (
                f", then held-out expression accuracy {100 * result['heldout_expression_top1']:.1f}% on other "
                f"people (chance {100 / 7:.1f}%; identity afterwards "
                f"{100 * result['heldout_identity_top1_after_expression']:.1f}%)"
                if "heldout_expression_top1" in result
                else ""
            )
            + f", trained in {result['train_seconds']:.0f} s; wrote {path}"
            + (f" and, as it was before the expression, {IDENTITY_ONLY_FILES[arch]}" if extra else ""),
            flush=True,
        )
    return report


@run_main
def main(argv=None):
    pretrain(parse_args(argv))


if __name__ == "__main__":
    main()
