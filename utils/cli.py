"""The command-line flags every stage shares, their checks, and the start of a run.

Defaults are the paper's (docs/method.md) and chain the stages: RAF-DB class folders at
data/RAF-DB/{train,test}, outputs under output/<stage>.
"""

import argparse
import math
import os
import platform

import torch

from utils import distributed as du
from utils.checkpoint import elastic_restart, load_checkpoint, resolve_resume, write_json
from utils.engine import check_meta, claim_output_dir, plain_args
from utils.errors import UserError
from utils.files import check_folder_free, sha256_file
from utils.labels import DATASETS

DEFAULT_TRAIN_PATH = os.path.join("data", "RAF-DB", "train")
DEFAULT_EVAL_PATH = os.path.join("data", "RAF-DB", "test")
DEFAULT_CONCEPT = os.path.join("output", "concept", "checkpoint-best.pth")
DEFAULT_CONFIDENCE = os.path.join("output", "confidence")


def default_workers():
    return min(8, os.cpu_count() or 1)


# flags that only mean something where a network is trained; stage 2 (which only scores) refuses them
TRAINING_ONLY = (
    "val_data_path",
    "val_split",
    "val_seed",
    "eval_data_path",
    "test_data_path",
    "norm_cache",
    "log_dir",
    "epochs",
    "lr",
    "blr",
    "weight_decay",
    "lr_schedule",
    "resume",
    "eval",
    "classifier_input",
)


def common_parser(description, output_dir, epochs, training=True):
    """The flags every stage shares. ``training=False`` (stage 2) keeps only those that mean something
    without training; the others (TRAINING_ONLY) are still parsed, hidden, so that
    :func:`reject_training_flags` can name them instead of letting them pass unnoticed."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hidden = parser.add_argument_group("not for this stage")

    def add(group, name, **kwargs):
        if training or name.lstrip("-") not in TRAINING_ONLY:
            group.add_argument(name, **kwargs)
        else:  # accepted by the parser only to be refused with a sentence
            hidden.add_argument(name, nargs="?", const="", default=None, help=argparse.SUPPRESS)

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data_path", default=DEFAULT_TRAIN_PATH, help="training split (class folders, RAF-DB root or CSV)"
    )
    add(
        data,
        "--val_split",
        type=float,
        default=None,
        help="fraction of each class's training images held out (stratified, --val_seed) to choose the best "
        "epoch; the rest train, and stages 2 and 3 re-derive the same split from the stage-1 checkpoint "
        "(default 0: no split; stage 3 with a concept model: stage 1's)",
    )
    add(data, "--val_seed", type=int, default=0, help="seed of the --val_split draw (independent of --seed)")
    add(
        data,
        "--val_data_path",
        default="",
        help="a validation split that chooses the best epoch (instead of --val_split)",
    )
    add(
        data,
        "--eval_data_path",
        default=DEFAULT_EVAL_PATH,
        help="split evaluated every epoch; it chooses the best epoch only when there is no validation split "
        "(a FER2013 file with Usage: the same file, PublicTest)",
    )
    add(data, "--test_data_path", default="", help="optional split evaluated and reported, never used to choose")
    data.add_argument("--dataset", default="folder", choices=DATASETS, help="format of the data paths")
    data.add_argument("--input_size", type=int, default=224, help="crop size; the resize is input_size*256/224")
    data.add_argument("--num_workers", type=int, default=default_workers())
    data.add_argument(
        "--skip_bad_images", action="store_true", help="skip and count unreadable images instead of stopping"
    )
    add(data, "--norm_cache", default="output/cache", help="folder caching normalisation statistics ('' = off)")
    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default=output_dir)
    add(run, "--log_dir", default=None, help="TensorBoard folder (default OUTPUT_DIR/tb)")
    run.add_argument("--batch_size", type=int, default=64, help="per process")
    add(run, "--epochs", type=int, default=epochs)
    add(run, "--lr", type=float, default=None, help="absolute learning rate (default blr x world size)")
    add(run, "--blr", type=float, default=1e-4, help="learning rate per process")
    add(run, "--weight_decay", type=float, default=1e-5)
    add(
        run,
        "--lr_schedule",
        default="reference",
        choices=("reference", "cosine"),
        help="reference: CosineAnnealingLR(T_max=5) stepped every iteration; cosine: per-epoch cosine",
    )
    run.add_argument("--seed", type=int, default=42)
    run.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms only (torch.use_deterministic_algorithms, cuDNN autotuning off, "
        "CUBLAS_WORKSPACE_CONFIG); slower on GPUs, see README",
    )
    run.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    add(run, "--resume", default="", help="checkpoint to continue from, or 'auto' for OUTPUT_DIR/checkpoint-last.pth")
    add(run, "--eval", action="store_true", help="only evaluate the --resume checkpoint")
    run.add_argument("--dist_url", default="env://")
    run.add_argument("--amp", action="store_true", help="mixed precision on CUDA (bf16, or fp16 with GradScaler)")
    run.add_argument("--channels_last", action="store_true", help="channels_last memory format (faster on recent GPUs)")
    run.add_argument(
        "--print_freq",
        type=int,
        default=50,
        help="when stdout is not a terminal (nohup, SLURM): one progress line every N iterations (0 = none)",
    )
    add(
        run,
        "--classifier_input",
        default="scaled",
        choices=("scaled", "unit"),
        help="scaled: the class head reads sqrt(256) x the unit feature (learns as fast as a linear "
        "classifier); unit: the unit feature itself, as the published code (learns ~10x slower)",
    )
    return parser


def reject_training_flags(args, script) -> None:
    """Stage 2 trains nothing: a training flag given to it is refused with one sentence naming it."""
    given = [f"--{name}" for name in TRAINING_ONLY if getattr(args, name, None) is not None]
    if given:
        raise UserError(
            f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to {script}, which only scores "
            f"the training images with the stage-1 model (its normalisation and validation split come from "
            f"--concept_ckpt); drop {'it' if len(given) == 1 else 'them'}."
        )


# --------------------------------------------------------------------------- each stage's own flags
def concept_parser() -> argparse.ArgumentParser:
    """Stage 1's flags (main_concept.py)."""
    parser = common_parser("CRPN stage 1: the conceptual pathway", os.path.join("output", "concept"), epochs=100)
    method = parser.add_argument_group("method (defaults: the paper)")
    method.add_argument(
        "--pretrained",
        default=os.path.join("pretrained", "resnet50_ft_weight.pkl"),
        help="VGGFace2 ResNet-50 pickle for both encoders, or 'none' to start from random weights",
    )
    method.add_argument(
        "--non_emotion_pretrained",
        default="same",
        help="another ResNet-50 pickle of the same format for the frozen non-emotion encoder alone (the emotion "
        "encoder still starts from --pretrained); 'same': --pretrained, as in the paper",
    )
    method.add_argument("--alpha", type=float, default=0.1, help="weight of L_orth")
    method.add_argument("--beta", type=float, default=1.0, help="weight of L_focal + L_RR")
    method.add_argument("--gamma", type=float, default=0.01, help="weight of L_CC")
    method.add_argument(
        "--focal_alpha",
        default=None,
        help="per-class focal alphas: 'rafdb' (the paper's, for the 7 canonical classes), 'auto' "
        "(from class frequencies) or a comma-separated list in label order; default rafdb for "
        "RAF-DB (--dataset rafdb, or folder with the 7 canonical classes), auto otherwise",
    )
    method.add_argument("--focal_gamma", type=float, default=2.0)
    method.add_argument("--rr_ratio", type=float, default=0.7, help="share of the batch in the high-confidence group")
    method.add_argument("--rr_margin", type=float, default=0.15)
    method.add_argument(
        "--cc_mode",
        default="dims",
        choices=("dims", "standard"),
        help="L_CC form: 'dims' (reference dimension views) or 'standard' (one 256-d view per sample)",
    )
    method.add_argument("--temperature", type=float, default=0.07)
    method.add_argument(
        "--nonemotion_bn_update",
        action="store_true",
        help="reproduce the reference quirk: the frozen non-emotion backbone's BatchNorm statistics update",
    )
    return parser


def confidence_parser() -> argparse.ArgumentParser:
    """Stage 2's flags (high_confidence.py)."""
    parser = common_parser(
        "CRPN stage 2: confidence scores, thresholds, pools and feature bank",
        os.path.join("output", "confidence"),
        epochs=None,
        training=False,
    )
    parser.set_defaults(input_size=None, batch_size=128)
    group = parser.add_argument_group("stage 2")
    group.add_argument("--concept_ckpt", default=DEFAULT_CONCEPT, help="stage-1 checkpoint")
    group.add_argument("--percentile", type=float, default=0.2, help="per-class threshold percentile")
    group.add_argument(
        "--score_transform",
        default="eval",
        choices=("eval", "train"),
        help="eval: deterministic resize + centre crop; train: the reference's random augmentations",
    )
    return parser


def percept_parser() -> argparse.ArgumentParser:
    """Stage 3's flags (main_percept.py), the multi-task model's included."""
    parser = common_parser(
        "CRPN stage 3: the concept-regularised perceptual network", os.path.join("output", "percept"), epochs=40
    )
    method = parser.add_argument_group("method (defaults: the paper)")
    method.add_argument(
        "--backbone",
        default="resnet18",
        help="perceptual network backbone by name (models/backbones.py): resnet18 (the paper's "
        "MS-Celeb ResNet-18), resnet34, resnet50, mobilenet_v3_large, efficientnet_b0",
    )
    method.add_argument(
        "--pretrained",
        default=None,
        help="backbone weights (torchvision layout; default pretrained/resnet18_msceleb.pth for "
        "resnet18, none for the others), or 'none' to start from random weights",
    )
    method.add_argument("--concept_ckpt", default=DEFAULT_CONCEPT, help="stage-1 checkpoint (frozen)")
    method.add_argument("--confidence_dir", default=DEFAULT_CONFIDENCE, help="stage-2 artefacts")
    method.add_argument("--concept_target", default="pool", choices=("pool", "self", "none"))
    method.add_argument(
        "--pool_features",
        default="online",
        choices=("online", "bank"),
        help="online: encode pooled images each step; bank: stage 2's features, no concept forward",
    )
    method.add_argument("--k", type=int, default=8, help="pooled concepts averaged per low-confidence sample")
    method.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="weight of CE: 2 (the paper's stage 3), or 1 with --vad (the multi-task loss of docs/method.md)",
    )
    method.add_argument("--beta", type=float, default=1.0, help="weight of MMD")
    method.add_argument("--gamma", type=float, default=1.0, help="weight of KL")
    method.add_argument(
        "--kl_temperature",
        type=temperature_arg,
        default=1.0,
        help="the KL target is softmax(concept logits / T): 1 (the paper), a positive number, or auto: the T "
        "that calibrates the concept model on the training images stage 2 scored (temperature scaling; "
        "T < 1 sharpens an under-confident teacher)",
    )
    method.add_argument(
        "--teacher_filter",
        default="none",
        choices=("none", "correct"),
        help="none: the paper's high-confidence mask; correct: also require the concept model to "
        "classify the sample correctly (a remedy for a weak concept model)",
    )
    method.add_argument(
        "--weak_teacher_acc",
        type=float,
        default=50.0,
        help="warn when the concept model's eval accuracy (%%) is below this",
    )
    vad = parser.add_argument_group("multi-task category + Valence/Arousal/Dominance")
    vad.add_argument("--vad", action="store_true", help="add the VAD head (needs --dataset fer2013 with VAD columns)")
    vad.add_argument("--lambda_vad", type=float, default=1.0, help="weight of the VAD MSE")
    vad.add_argument("--lambda_cons", type=float, default=0.1, help="weight of the category/VAD sign consistency")
    vad.add_argument(
        "--cons_weights",
        default="prob",
        choices=("prob", "label"),
        help="weight the sign penalty by predicted class probabilities or by the true label",
    )
    vad.add_argument("--skip_missing_vad", action="store_true", help="drop rows with missing VAD instead of stopping")
    return parser


def adopt_concept_split(args) -> None:
    """Stage 3 with concept targets trains on the images stage 1 trained on: its validation split is the one
    recorded in the stage-1 checkpoint (``meta["val_split"]``: fraction and seed, re-derived by
    :func:`dataset_concept.split_validation`). A different explicit ``--val_split``/``--val_seed``, or a
    ``--val_data_path`` next to a held-out split, is refused."""
    if args.eval or args.concept_target == "none" or not os.path.isfile(args.concept_ckpt):
        return  # a missing checkpoint is reported where it is read
    checkpoint = load_checkpoint(args.concept_ckpt, "concept checkpoint", mmap=True)
    record = (checkpoint.get("meta") or {}).get("val_split") if isinstance(checkpoint, dict) else None
    if not record:
        return
    asked = args.val_split is not None and (args.val_split != record["fraction"] or args.val_seed != record["seed"])
    if asked or args.val_data_path:
        raise UserError(
            f"{args.concept_ckpt} was trained with --val_split {record['fraction']} --val_seed {record['seed']} "
            f"({record['images']} training images held out), and stage 3 must hold out the same images; drop "
            f"--val_split, --val_seed and --val_data_path (stage 3 takes the split from the stage-1 checkpoint)."
        )
    args.val_split, args.val_seed = record["fraction"], record["seed"]
    print(
        f"stage 3 holds out the {record['images']} training images stage 1 held out (--val_split "
        f"{record['fraction']}, --val_seed {record['seed']}) and chooses its best epoch on them.",
        flush=True,
    )


def temperature_arg(text: str):
    """``--kl_temperature``: ``auto`` or a positive number."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive number, got {text!r}")
    return value


def check_percept_args(args) -> None:
    """Stage 3's method flags: the CE weight's default (2, or 1 with --vad) and the ranges."""
    if args.alpha is None:
        args.alpha = 1.0 if args.vad else 2.0
    if args.k < 1:
        raise UserError(f"--k must be at least 1, got {args.k}.")
    for name in ("alpha", "beta", "gamma", "lambda_vad", "lambda_cons"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} cannot be negative.")
    if not 0 <= args.weak_teacher_acc <= 100:
        raise UserError(f"--weak_teacher_acc is a percentage in 0..100, got {args.weak_teacher_acc}.")


# --------------------------------------------------------------------------- checks and start
def check_args(args):
    """Refuse absurd values with one sentence each."""
    positive = {"batch_size": args.batch_size, "input_size": args.input_size}
    if args.blr is not None:  # None: stage 2, which has no learning rate
        positive["blr"] = args.blr
    if getattr(args, "epochs", None) is not None and not args.eval:
        positive["epochs"] = args.epochs
    if args.lr is not None:
        positive["lr"] = args.lr
    for name, value in positive.items():
        if not value > 0:
            raise UserError(f"--{name} must be positive, got {value}.")
    if args.input_size < 16 or args.input_size > 1024:
        raise UserError(f"--input_size {args.input_size} is outside 16..1024 pixels.")
    for name in ("num_workers", "weight_decay", "print_freq"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise UserError(f"--{name} cannot be negative, got {getattr(args, name)}.")
    if args.eval and not args.resume:
        raise UserError("--eval needs --resume CHECKPOINT (the checkpoint to evaluate).")
    if args.val_split is not None and not 0 <= args.val_split < 1:
        raise UserError(f"--val_split is a fraction in [0, 1), got {args.val_split}.")
    if args.val_split and args.val_data_path:
        raise UserError("pass --val_split (held out of the training set) or --val_data_path (a given split), not both.")


def set_deterministic(enabled: bool) -> None:
    """``--deterministic``: only deterministic algorithms (an op without one stops with PyTorch's error),
    cuDNN autotuning off, and the cuBLAS workspace setting CUDA's deterministic GEMMs need."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def start_run(args):
    """Initialise devices and processes, seed, and resolve the learning rate. Writes nothing; a folder
    held by a live run (:func:`utils.files.hold_folder`) is refused here already."""
    check_args(args)
    set_deterministic(args.deterministic)
    layout = du.init_distributed(args.device, args.dist_url)
    args.rank, args.world_size, args.distributed = layout["rank"], layout["world_size"], layout["distributed"]
    args.device_obj = layout["device"]
    args.device_name = str(layout["device"])
    if args.device_obj.type == "cuda":
        torch.backends.cudnn.benchmark = not args.deterministic
    else:
        args.channels_last = False
    if du.is_main_process():
        check_folder_free(args.output_dir)
    du.seed_everything(args.seed)
    if args.lr is None and args.blr is not None:
        args.lr = args.blr * args.world_size
    args.elastic_run_id = elastic_restart()[1]  # saved in checkpoints: which torchrun job wrote them
    return args


# what a training checkpoint must share with the run that continues it (check_meta's keys, and the split)
RESUME_KEYS = ("model", "backbone", "classifier_input", "classes", "input_size", "val_split")


def prepare_resume(args, meta):
    """Settle, before anything is written, the checkpoint a training run continues from, and check it.

    The checkpoint (``--resume PATH``, ``--resume auto``, or, in a worker group that torchrun restarted,
    OUTPUT/checkpoint-last.pth of this job) must be a training checkpoint (checkpoint-last.pth, not the
    weights-only checkpoint-best.pth) of the same model, classes and input size (``meta``); otherwise
    the run stops with one sentence before config.json or any other file exists. Sets ``args.resume``
    to that path ('' for a fresh start) so config.json and :func:`utils.engine.fit` use the same file.
    """
    if args.eval:
        return
    restarts, run_id = elastic_restart()
    path = resolve_resume(args.resume, args.output_dir, run_id if restarts else None)
    if restarts:
        last = os.path.join(args.output_dir, "checkpoint-last.pth")
        print(
            f"torchrun restarted the workers (restart {restarts}); "
            + (
                f"continuing from {last}."
                if path == last
                else f"this job saved no checkpoint-last.pth in {args.output_dir} yet, so it starts "
                + (f"again from {path}." if path else "from scratch.")
            ),
            flush=True,
        )
    if path:
        checkpoint = load_checkpoint(path, mmap=True)
        check_meta(checkpoint, meta, path, keys=RESUME_KEYS)
        if "optimizer" not in checkpoint:
            raise UserError(
                f"{path} holds weights only (a checkpoint-best.pth), not the training state; continue "
                f"training from checkpoint-last.pth of the same output folder, or evaluate it with --eval."
            )
    args.resume = path


def existing_file(path: str, what: str, hint: str) -> str | None:
    """None for 'none'; otherwise ``path``, which must be a file (else one sentence: ``what`` not found; ``hint``)."""
    if path.lower() == "none":
        return None
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} not found; {hint}")
    return path


def write_config(args, files=None):
    """OUTPUT_DIR/config.json: the resolved flags, the sha256 of every weight/checkpoint file read
    (``files`` maps a role to a path; a resumed checkpoint is added), and what ran (rank 0 only)."""
    if not du.is_main_process():
        return
    claim_output_dir(args)
    files = {role: path for role, path in (files or {}).items() if path}
    if getattr(args, "resume", ""):  # settled once by prepare_resume
        files["resume"] = args.resume
    hashes = {role: {"path": os.path.abspath(path), "sha256": sha256_file(path)} for role, path in files.items()}
    os.makedirs(args.output_dir, exist_ok=True)
    config = {
        "args": plain_args(args),
        "files_sha256": hashes,
        "world_size": args.world_size,
        "device": args.device_name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda_device": torch.cuda.get_device_name(args.device_obj) if args.device_obj.type == "cuda" else None,
    }
    write_json(os.path.join(args.output_dir, "config.json"), config)
