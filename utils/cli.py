"""The command-line flags every stage shares, their checks, and the start of a run.

Defaults are the paper's (shared/METHOD.md) and chain the stages: RAF-DB class folders at
data/RAF-DB/{train,test}, outputs under output/<stage>.
"""
import argparse
import os
import platform

import torch

from dataset_concept import DATASETS, DEFAULT_EVAL_PATH, DEFAULT_TRAIN_PATH
from utils import distributed as du
from utils.checkpoint import elastic_restart, load_checkpoint, resolve_resume, sha256_file, write_json
from utils.engine import check_meta
from utils.errors import UserError


def default_workers():
    return min(8, os.cpu_count() or 1)


def common_parser(description, output_dir, epochs, lr_schedule=True):
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data_path", default=DEFAULT_TRAIN_PATH, help="training split (class folders, RAF-DB root or CSV)")
    data.add_argument("--eval_data_path", default=DEFAULT_EVAL_PATH,
                      help="split that selects the best epoch (a FER2013 file with Usage: the same file, PublicTest)")
    data.add_argument("--test_data_path", default="", help="optional split evaluated and reported, never used to choose")
    data.add_argument("--dataset", default="folder", choices=DATASETS, help="format of the three paths")
    data.add_argument("--input_size", type=int, default=224, help="crop size; the resize is input_size*256/224")
    data.add_argument("--num_workers", type=int, default=default_workers())
    data.add_argument("--skip_bad_images", action="store_true", help="skip and count unreadable images instead of stopping")
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
        run.add_argument("--lr_schedule", default="reference", choices=("reference", "cosine"),
                         help="reference: CosineAnnealingLR(T_max=5) stepped every iteration; cosine: per-epoch cosine")
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    run.add_argument("--resume", default="", help="checkpoint to continue from, or 'auto' for OUTPUT_DIR/checkpoint-last.pth")
    run.add_argument("--eval", action="store_true", help="only evaluate the --resume checkpoint")
    run.add_argument("--dist_url", default="env://")
    run.add_argument("--amp", action="store_true", help="mixed precision on CUDA (bf16, or fp16 with GradScaler)")
    run.add_argument("--channels_last", action="store_true", help="channels_last memory format (faster on recent GPUs)")
    return parser


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
        print(f"torchrun restarted the workers (restart {restarts}); "
              + (f"continuing from {last}." if path == last else
                 f"this job saved no checkpoint-last.pth in {args.output_dir} yet, so it starts "
                 + (f"again from {path}." if path else "from scratch.")), flush=True)
    if path:
        checkpoint = load_checkpoint(path, mmap=True)
        check_meta(checkpoint, meta, path)
        if "optimizer" not in checkpoint:
            raise UserError(f"{path} holds weights only (a checkpoint-best.pth), not the training state; continue "
                            f"training from checkpoint-last.pth of the same output folder, or evaluate it with --eval.")
    args.resume = path


def plain_args(args):
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None), list))}


def write_config(args, files=None):
    """OUTPUT_DIR/config.json: the resolved flags, the sha256 of every weight/checkpoint file read
    (``files`` maps a role to a path; a resumed checkpoint is added), and what ran (rank 0 only)."""
    if not du.is_main_process():
        return
    files = {role: path for role, path in (files or {}).items() if path}
    resume = resolve_resume(args.resume, args.output_dir)
    if resume:
        files["resume"] = resume
    hashes = {role: {"path": os.path.abspath(path), "sha256": sha256_file(path)} for role, path in files.items()}
    os.makedirs(args.output_dir, exist_ok=True)
    config = {"args": plain_args(args), "files_sha256": hashes, "world_size": args.world_size,
              "device": args.device_name, "torch": torch.__version__, "python": platform.python_version(),
              "cuda_device": torch.cuda.get_device_name(args.device_obj) if args.device_obj.type == "cuda" else None}
    write_json(os.path.join(args.output_dir, "config.json"), config)
