"""The command-line flags every stage shares, their checks, and the start of a run.

Defaults are the paper's (docs/method.md) and chain the stages: RAF-DB class folders at
data/RAF-DB/{train,test}, outputs under output/<stage>.
"""

import argparse
import os
import platform

import torch

from utils import distributed as du
from utils.checkpoint import elastic_restart, load_checkpoint, resolve_resume, write_json
from utils.engine import check_meta, plain_args
from utils.errors import UserError
from utils.files import sha256_file
from utils.labels import DATASETS

DEFAULT_TRAIN_PATH = os.path.join("data", "RAF-DB", "train")
DEFAULT_EVAL_PATH = os.path.join("data", "RAF-DB", "test")
DEFAULT_CONCEPT = os.path.join("output", "concept", "checkpoint-best.pth")
DEFAULT_CONFIDENCE = os.path.join("output", "confidence")


def default_workers():
    return min(8, os.cpu_count() or 1)


def common_parser(description, output_dir, epochs, lr_schedule=True):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data_path", default=DEFAULT_TRAIN_PATH, help="training split (class folders, RAF-DB root or CSV)"
    )
    data.add_argument(
        "--eval_data_path",
        default=DEFAULT_EVAL_PATH,
        help="split that selects the best epoch (a FER2013 file with Usage: the same file, PublicTest)",
    )
    data.add_argument(
        "--test_data_path", default="", help="optional split evaluated and reported, never used to choose"
    )
    data.add_argument("--dataset", default="folder", choices=DATASETS, help="format of the three paths")
    data.add_argument("--input_size", type=int, default=224, help="crop size; the resize is input_size*256/224")
    data.add_argument("--num_workers", type=int, default=default_workers())
    data.add_argument(
        "--skip_bad_images", action="store_true", help="skip and count unreadable images instead of stopping"
    )
    data.add_argument("--norm_cache", default="output/cache", help="folder caching normalisation statistics ('' = off)")
    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default=output_dir)
    run.add_argument("--log_dir", default=None, help="TensorBoard folder (default OUTPUT_DIR/tb)")
    run.add_argument("--batch_size", type=int, default=64, help="per process")
    run.add_argument("--epochs", type=int, default=epochs)
    run.add_argument("--lr", type=float, default=None, help="absolute learning rate (default blr x world size)")
    run.add_argument("--blr", type=float, default=1e-4, help="learning rate per process")
    run.add_argument("--weight_decay", type=float, default=1e-5)
    if lr_schedule:
        run.add_argument(
            "--lr_schedule",
            default="reference",
            choices=("reference", "cosine"),
            help="reference: CosineAnnealingLR(T_max=5) stepped every iteration; cosine: per-epoch cosine",
        )
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    run.add_argument(
        "--resume", default="", help="checkpoint to continue from, or 'auto' for OUTPUT_DIR/checkpoint-last.pth"
    )
    run.add_argument("--eval", action="store_true", help="only evaluate the --resume checkpoint")
    run.add_argument("--dist_url", default="env://")
    run.add_argument("--amp", action="store_true", help="mixed precision on CUDA (bf16, or fp16 with GradScaler)")
    run.add_argument("--channels_last", action="store_true", help="channels_last memory format (faster on recent GPUs)")
    if epochs is not None:  # the training stages
        run.add_argument(
            "--classifier_input",
            default="scaled",
            choices=("scaled", "unit"),
            help="scaled: the class head reads sqrt(256) x the unit feature (learns as fast as a linear "
            "classifier); unit: the unit feature itself, as the published code (learns ~10x slower)",
        )
    return parser


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
        lr_schedule=False,
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
    positive = {"batch_size": args.batch_size, "input_size": args.input_size, "blr": args.blr}
    if getattr(args, "epochs", None) is not None and not args.eval:
        positive["epochs"] = args.epochs
    if args.lr is not None:
        positive["lr"] = args.lr
    for name, value in positive.items():
        if not value > 0:
            raise UserError(f"--{name} must be positive, got {value}.")
    if args.input_size < 16 or args.input_size > 1024:
        raise UserError(f"--input_size {args.input_size} is outside 16..1024 pixels.")
    for name in ("num_workers", "weight_decay"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} cannot be negative, got {getattr(args, name)}.")
    if args.eval and not args.resume:
        raise UserError("--eval needs --resume CHECKPOINT (the checkpoint to evaluate).")


def start_run(args):
    """Initialise devices and processes, seed, and resolve the learning rate. Writes nothing."""
    check_args(args)
    layout = du.init_distributed(args.device, args.dist_url)
    args.rank, args.world_size, args.distributed = layout["rank"], layout["world_size"], layout["distributed"]
    args.device_obj = layout["device"]
    args.device_name = str(layout["device"])
    if args.device_obj.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        args.channels_last = False
    du.seed_everything(args.seed)
    if args.lr is None:
        args.lr = args.blr * args.world_size
    args.elastic_run_id = elastic_restart()[1]  # saved in checkpoints: which torchrun job wrote them
    return args


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
        check_meta(checkpoint, meta, path)
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
