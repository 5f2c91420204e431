"""How fast CRPN trains and how cheap its deployed network is, on whatever device is present.

    python benchmarks/benchmark.py --json benchmarks/results-cpu.json
    python benchmarks/benchmark.py --input_size 224 --batch_size 64 --amp --channels_last --json gpu.json

Every training row runs the repository's own code (the stage's loss function, ``train_one_epoch``, the
stage's datasets, transforms and DataLoader with workers) on synthetic faces written to a temporary
folder, at one input size and batch; a row's figure is the median over ``--repeats`` of images/s over
``--steps`` steps, after ``--warmup`` steps. The ratios are times per image (or bytes), lower is better:

- ``stage1_over_bare``: a stage-1 step (data loading, all four losses, metrics) over the bare
  forward + backward + optimiser step of the two encoders on random tensors already on the device.
- ``stage3_bank_over_none``: stage 3 with pooled concepts from the stage-2 feature bank over the
  plain ResNet-18 (``--concept_target none``).
- ``stage3_online_over_reference``: stage 3 encoding the pool images online (the emotion branch only,
  one forward) over the reference's way: the concatenated pool images through the whole conceptual
  model, both encoders.
- ``stage2_over_reference``: stage-2 scoring (emotion branch) over scoring through the whole model.
- ``percept_over_concept_latency`` / ``_params``: the deployed perceptual network over the conceptual
  pathway (both encoders and the classifier), batch 1 at ``--latency_size``.
- ``lcc_peak_mem_ratio``: L_CC (dimension views, batch ``--lcc_batch``) forward + backward peak memory,
  ours over the naive form that materialises the (256·B)² matrices; ``lcc_max_abs_diff`` the largest
  difference of their values and gradients. Each L_CC variant runs in a fresh process so that one's
  freed memory cannot hide another's peak (CPU: the process's peak resident memory, Linux only).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import RandomSampler  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from dataset_concept import build_splits, eval_loader, make_loader, resize_size  # noqa: E402
from dataset_percept import collate_percept, concept_regularisation  # noqa: E402
from models.backbones import PERCEPT_BACKBONES  # noqa: E402
from models.concept import ConceptNet  # noqa: E402
from models.percept import PerceptNet  # noqa: E402
from tools.make_synthetic_faces import make_dataset  # noqa: E402
from utils.checkpoint import save_checkpoint, write_json  # noqa: E402
from utils.cli import check_percept_args, concept_parser, percept_parser, start_run  # noqa: E402
from utils.confidence import score, write_artefacts  # noqa: E402
from utils.engine import Trainer, amp_setup, autocast, optimizer_step  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.files import sha256_file  # noqa: E402
from utils.losses import class_weighted_supcon, class_weighted_supcon_naive  # noqa: E402
from utils.objectives import ConceptObjective, PerceptObjective, resolve_focal_alpha  # noqa: E402

TARGETS = {  # key: upper bound (issue #7)
    "stage1_over_bare": 1.15,
    "stage3_bank_over_none": 1.15,
    "stage3_online_over_reference": 0.70,
    "stage2_over_reference": 0.60,
    "percept_over_concept_latency": 0.25,
    "percept_over_concept_params": 0.25,
    "lcc_peak_mem_ratio": 0.10,
    "lcc_max_abs_diff": 1e-5,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--input_size", type=int, default=64, help="training crop size of every training row")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the first repeat")
    parser.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--images_per_class", type=int, default=40, help="synthetic training faces per class")
    parser.add_argument("--latency_size", type=int, default=224, help="input size of the inference row")
    parser.add_argument("--latency_repeats", type=int, default=20)
    parser.add_argument("--lcc_batch", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--only", default="", help="comma-separated rows: stage1,stage2,stage3,inference,backbones,lcc")
    parser.add_argument("--lcc_child", default="", help=argparse.SUPPRESS)  # internal: one L_CC variant
    args = parser.parse_args(argv)
    for name in (
        "input_size",
        "batch_size",
        "steps",
        "repeats",
        "images_per_class",
        "latency_size",
        "latency_repeats",
        "lcc_batch",
    ):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1.")
    if args.warmup < 0 or args.num_workers < 0:
        raise UserError("--warmup and --num_workers cannot be negative.")
    if args.images_per_class * 7 < args.batch_size:
        raise UserError(
            f"--images_per_class {args.images_per_class} gives fewer than one batch of {args.batch_size} faces."
        )
    return args


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Take:
    """The next ``n`` batches of a long-lived loader iterator, as an epoch-like iterable."""

    def __init__(self, iterator, n):
        self.iterator, self.n = iterator, n

    def __iter__(self):
        for _ in range(self.n):
            yield next(self.iterator)

    def __len__(self):
        return self.n


class WholeConcept(nn.Module):
    """The reference's use of the conceptual model: every image through both encoders."""

    def __init__(self, concept):
        super().__init__()
        self.concept = concept

    def emotion_forward(self, x):
        return self.concept(x)


def stage_args(parser, bench, extra=()):
    """A stage script's own flags (defaults: the paper's) for the benchmark's data and settings."""
    argv = [
        "--data_path",
        bench.train_dir,
        "--eval_data_path",
        bench.test_dir,
        "--input_size",
        bench.input_size,
        "--batch_size",
        bench.batch_size,
        "--num_workers",
        bench.num_workers,
        "--norm_cache",
        bench.cache_dir,
        "--device",
        bench.device,
        "--seed",
        bench.seed,
        "--pretrained",
        "none",
        *extra,
    ]
    if bench.amp:
        argv.append("--amp")
    if bench.channels_last:
        argv.append("--channels_last")
    return start_run(parser.parse_args([str(a) for a in argv]))


def stream_loader(dataset, args, total_batches, collate_fn=None):
    """The stage's DataLoader settings, sampling with replacement for as many batches as the row needs."""
    sampler = RandomSampler(
        dataset,
        replacement=True,
        num_samples=total_batches * args.batch_size,
        generator=torch.Generator().manual_seed(args.seed),
    )
    kwargs = {"collate_fn": collate_fn} if collate_fn else {}
    return make_loader(
        dataset,
        args.batch_size,
        sampler,
        drop_last=True,
        num_workers=args.num_workers,
        device=args.device_obj,
        **kwargs,
    )


def time_training(bench, args, model, objective, dataset, collate_fn=None):
    """Median images/s of the stage's :meth:`Trainer.train_epoch` over ``repeats`` runs of ``steps`` steps
    (after warm-up)."""
    trainer = Trainer(args, model, objective, meta={})
    loader = stream_loader(dataset, args, bench.warmup + bench.repeats * bench.steps, collate_fn)
    iterator = iter(loader)

    def run(steps):
        return trainer.train_epoch(Take(iterator, steps), 0)["train_images_per_s"]

    if bench.warmup:
        run(bench.warmup)
    return statistics.median(run(bench.steps) for _ in range(bench.repeats))


def time_calls(fn, device, warmup, repeats):
    """Median seconds of ``fn()`` (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------- rows
def bench_stage1(bench, results):
    args = stage_args(concept_parser(), bench)
    splits, _, _ = build_splits(args)
    classes = splits["train"].classes
    alpha = resolve_focal_alpha(None, classes, splits["train"].targets)
    objective = ConceptObjective(args, len(classes), alpha, args.device_obj)
    results["stage1_images_per_s"] = time_training(bench, args, ConceptNet(len(classes)), objective, splits["train"])

    # bare: forward + backward + optimiser step of both encoders, random tensors already on the device
    trainer = Trainer(args, ConceptNet(len(classes)), objective, meta={})
    model, optimizer, amp_dtype, scaler = trainer.model, trainer.optimizer, trainer.amp_dtype, trainer.scaler
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=args.device_obj)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def bare_step():
        with autocast(args.device_obj, amp_dtype):
            out = model(x)
            loss = out["e"].float().sum() + out["n"].float().sum() + out["logits"].float().sum()
        optimizer_step(loss, optimizer, scaler)

    def bare_steps():
        for _ in range(bench.steps):
            bare_step()

    seconds = time_calls(bare_steps, args.device_obj, 1 if bench.warmup else 0, bench.repeats)
    results["stage1_bare_images_per_s"] = bench.steps * args.batch_size / seconds
    results["stage1_over_bare"] = results["stage1_bare_images_per_s"] / results["stage1_images_per_s"]


def frozen_random_concept(args, num_classes):
    """A frozen conceptual model with random weights (speed does not depend on them)."""
    concept = ConceptNet(num_classes).to(args.device_obj).requires_grad_(False).eval()
    if args.channels_last:
        concept = concept.to(memory_format=torch.channels_last)
    return concept


def bench_stage2(bench, results, shared):
    args = stage_args(concept_parser(), bench)
    splits, mean, std = build_splits(args, train_transform=False)
    concept = frozen_random_concept(args, len(splits["train"].classes))
    loader = eval_loader(splits["train"], args)
    amp_dtype = amp_setup(args.device_obj, args.amp)[0]
    n = len(splits["train"])
    scores = {}

    def run(model):
        scores["last"] = score(model, loader, args.device_obj, amp_dtype)

    ours = time_calls(lambda: run(concept), args.device_obj, 1, bench.repeats)
    shared["scores"] = scores["last"]
    reference = time_calls(lambda: run(WholeConcept(concept)), args.device_obj, 1, bench.repeats)
    results["stage2_images_per_s"] = n / ours
    results["stage2_reference_images_per_s"] = n / reference
    results["stage2_over_reference"] = ours / reference
    shared["concept"] = concept
    # stage 2's artefacts, written by the stage's own function, for stage 3 to read
    shared["concept_ckpt"] = os.path.join(bench.tmp, "concept.pth")
    save_checkpoint(
        shared["concept_ckpt"],
        {
            "model": concept.state_dict(),
            "meta": {"model": "ConceptNet", "classes": splits["train"].classes, "input_size": args.input_size},
        },
    )
    shared["confidence_dir"] = os.path.join(bench.tmp, "confidence")
    write_artefacts(
        shared["confidence_dir"],
        splits["train"],
        scores["last"],
        0.2,
        {
            "input_size": args.input_size,
            "mean": mean,
            "std": std,
            "dataset": args.dataset,
            "concept_sha256": sha256_file(shared["concept_ckpt"]),
            "score_transform": "eval",
        },
    )


def bench_stage3(bench, results, shared):
    if "scores" not in shared:
        bench_stage2(bench, {}, shared)
    rows = {
        "none": ("none", "online"),
        "self": ("self", "online"),
        "pool+bank": ("pool", "bank"),
        "pool+online": ("pool", "online"),
        "reference": ("pool", "online"),
    }
    for name, (target, pool_features) in rows.items():
        args = stage_args(
            percept_parser(),
            bench,
            [
                "--concept_target",
                target,
                "--pool_features",
                pool_features,
                "--concept_ckpt",
                shared["concept_ckpt"],
                "--confidence_dir",
                shared["confidence_dir"],
            ],
        )
        check_percept_args(args)
        splits, _, _ = build_splits(args)
        train, concept, bank = splits["train"], None, None
        if target != "none":  # the stage's own wiring: bank.pt, the concept checkpoint, masks and pools
            train, concept, bank, _, _ = concept_regularisation(args, train)
            results["stage3_low_confidence_share"] = float(1 - train.mask.float().mean())
        if name == "reference":  # the reference's way: pool images through both encoders
            concept = WholeConcept(concept)
        results[f"stage3_{name}_images_per_s"] = time_training(
            bench, args, PerceptNet(len(train.classes)), PerceptObjective(args, concept, bank), train, collate_percept
        )
    rate = {name: results[f"stage3_{name}_images_per_s"] for name in rows}
    results["stage3_bank_over_none"] = rate["none"] / rate["pool+bank"]
    results["stage3_online_over_reference"] = rate["reference"] / rate["pool+online"]


def bench_inference(bench, results):
    """Parameters, FLOPs and batch-1 latency; the two networks are timed alternately, so that a change
    in the machine's speed during the row affects both alike."""
    device = torch.device(bench.device_obj)
    size = bench.latency_size
    x = torch.randn(1, 3, size, size, device=device)
    if bench.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    nets = {"percept": PerceptNet(7), "concept": ConceptNet(7)}
    results["concept_emotion_branch_params"] = sum(
        p.numel() for m in (nets["concept"].emotion, nets["concept"].classifier) for p in m.parameters()
    )
    times = {name: [] for name in nets}
    with torch.inference_mode():
        for name, net in nets.items():
            net = nets[name] = net.to(device).eval()
            if bench.channels_last:
                nets[name] = net.to(memory_format=torch.channels_last)
            counter = FlopCounterMode(display=False)
            with counter:
                nets[name](x)
            results[f"{name}_flops"] = counter.get_total_flops()
            results[f"{name}_params"] = sum(p.numel() for p in net.parameters())
            for _ in range(3):  # warm-up
                nets[name](x)
        for _ in range(bench.latency_repeats):
            for name, net in nets.items():
                times[name].append(time_calls(lambda net=net: net(x), device, 0, 1))
    for name in nets:
        results[f"{name}_latency_ms"] = 1000 * statistics.median(times[name])
    results["percept_over_concept_latency"] = results["percept_latency_ms"] / results["concept_latency_ms"]
    results["percept_over_concept_params"] = results["percept_params"] / results["concept_params"]
    results["percept_over_concept_flops"] = results["percept_flops"] / results["concept_flops"]


def bench_backbones(bench, results):
    """Parameters, FLOPs and batch-1 latency of the perceptual network with every registered backbone
    (``--backbone``), timed alternately like :func:`bench_inference`."""
    device = torch.device(bench.device_obj)
    x = torch.randn(1, 3, bench.latency_size, bench.latency_size, device=device)
    nets = {name: PerceptNet(7, backbone=name).to(device).eval() for name in PERCEPT_BACKBONES}
    times = {name: [] for name in nets}
    with torch.inference_mode():
        for name, net in nets.items():
            counter = FlopCounterMode(display=False)
            with counter:
                net(x)
            results[f"backbone_{name}_flops"] = counter.get_total_flops()
            results[f"backbone_{name}_params"] = sum(p.numel() for p in net.parameters())
            for _ in range(3):
                net(x)
        for _ in range(bench.latency_repeats):
            for name, net in nets.items():
                times[name].append(time_calls(lambda net=net: net(x), device, 0, 1))
    for name in nets:
        results[f"backbone_{name}_latency_ms"] = 1000 * statistics.median(times[name])


# --------------------------------------------------------------------------- L_CC, one variant per process
def _rss_bytes(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(field)


def lcc_child(bench):
    """Run one L_CC variant forward + backward; print peak extra memory, median time, value; save the
    gradient next to the --json path."""
    device = bench.device_obj
    gen = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(bench.lcc_batch, 256, generator=gen), dim=1).to(device)
    labels = torch.randint(0, 7, (bench.lcc_batch,), generator=gen).to(device)
    fn = {"ours": class_weighted_supcon, "naive": class_weighted_supcon_naive}[bench.lcc_child]
    out = {}

    def once():
        x = features.clone().requires_grad_()
        loss = fn(x, labels, 7)
        loss.backward()
        out["value"], out["grad"] = loss.item(), x.grad

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        once()
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # reset the peak resident set size (Linux >= 4.0)
            base = _rss_bytes("VmRSS")
            once()
            peak = _rss_bytes("VmHWM") - base
        except OSError:
            once()
            peak = None
    repeats = 1 if bench.lcc_child == "naive" else bench.repeats
    seconds = time_calls(once, device, 0, repeats)
    torch.save(out["grad"].cpu(), bench.json)
    print(json.dumps({"peak_bytes": peak, "seconds": seconds, "value": out["value"]}))


def bench_lcc(bench, results):
    with tempfile.TemporaryDirectory() as tmp:
        child = {}
        for variant in ("ours", "naive"):
            grad_path = os.path.join(tmp, f"{variant}.pt")
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--lcc_child",
                variant,
                "--lcc_batch",
                str(bench.lcc_batch),
                "--device",
                bench.device,
                "--repeats",
                str(bench.repeats),
                "--json",
                grad_path,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                raise UserError(f"the L_CC {variant} measurement failed: {proc.stderr.strip().splitlines()[-1:]}")
            child[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            child[variant]["grad"] = torch.load(grad_path, weights_only=True)
    for variant in ("ours", "naive"):
        results[f"lcc_{variant}_peak_bytes"] = child[variant]["peak_bytes"]
        results[f"lcc_{variant}_ms"] = 1000 * child[variant]["seconds"]
    ours, naive = child["ours"]["peak_bytes"], child["naive"]["peak_bytes"]
    results["lcc_peak_mem_ratio"] = ours / naive if ours is not None and naive else None
    results["lcc_time_ratio"] = child["ours"]["seconds"] / child["naive"]["seconds"]
    results["lcc_max_abs_diff"] = max(
        abs(child["ours"]["value"] - child["naive"]["value"]),
        float((child["ours"]["grad"] - child["naive"]["grad"]).abs().max()),
    )


# --------------------------------------------------------------------------- report
def table(results):
    rows = [
        ("stage 1 step", "stage1_images_per_s", "img/s"),
        ("stage 1 bare fwd+bwd+step", "stage1_bare_images_per_s", "img/s"),
        ("stage 2 scoring (emotion branch)", "stage2_images_per_s", "img/s"),
        ("stage 2 scoring, reference (both encoders)", "stage2_reference_images_per_s", "img/s"),
    ]
    rows += [
        (f"stage 3 {name}", f"stage3_{name}_images_per_s", "img/s")
        for name in ("none", "self", "pool+bank", "pool+online", "reference")
    ]
    rows += [
        ("perceptual net latency", "percept_latency_ms", "ms"),
        ("conceptual pathway latency", "concept_latency_ms", "ms"),
        ("perceptual net params", "percept_params", "M"),
        ("conceptual pathway params", "concept_params", "M"),
        ("perceptual net FLOPs", "percept_flops", "G"),
        ("conceptual pathway FLOPs", "concept_flops", "G"),
        ("L_CC ours fwd+bwd", "lcc_ours_ms", "ms"),
        ("L_CC naive fwd+bwd", "lcc_naive_ms", "ms"),
        ("L_CC ours peak memory", "lcc_ours_peak_bytes", "MiB"),
        ("L_CC naive peak memory", "lcc_naive_peak_bytes", "MiB"),
    ]
    rows += [
        (f"--backbone {name} {what}", f"backbone_{name}_{key}", unit)
        for name in PERCEPT_BACKBONES
        for what, key, unit in (("params", "params", "M"), ("FLOPs", "flops", "G"), ("latency", "latency_ms", "ms"))
    ]
    scale = {"M": 1e-6, "G": 1e-9, "MiB": 2**-20}
    lines = ["| measurement | value |", "|---|---|"]
    for label, key, unit in rows:
        if results.get(key) is not None:
            lines.append(f"| {label} | {results[key] * scale.get(unit, 1):.4g} {unit} |")
    lines += ["", "| ratio (lower is better) | value | target | met |", "|---|---|---|---|"]
    for key, bound in TARGETS.items():
        if key in results:
            value = results[key]
            met = "n/a" if value is None else ("yes" if value <= bound else "NO")
            lines.append(f"| {key} | {'n/a' if value is None else f'{value:.3g}'} | <= {bound:g} | {met} |")
    return "\n".join(lines)


@run_main
def main(argv=None):
    bench = parse_args(argv)
    from utils.distributed import resolve_device

    bench.device_obj = resolve_device(bench.device)
    if bench.lcc_child:
        lcc_child(bench)
        return
    rows = ("stage1", "stage2", "stage3", "inference", "backbones", "lcc")
    only = set(filter(None, bench.only.split(","))) or set(rows)
    unknown = only - set(rows)
    if unknown:
        raise UserError(f"--only {','.join(sorted(unknown))}: no such row ({', '.join(rows)}).")
    device = bench.device_obj
    results = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(bench).items() if k not in ("device_obj", "lcc_child", "tmp")},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bench.tmp = tmp
        if only & {"stage1", "stage2", "stage3"}:
            faces = os.path.join(tmp, "faces")
            make_dataset(
                faces,
                seed=bench.seed,
                size=resize_size(bench.input_size),
                train_per_class=bench.images_per_class,
                test_per_class=1,
            )
            bench.train_dir, bench.test_dir = os.path.join(faces, "train"), os.path.join(faces, "test")
            bench.cache_dir = os.path.join(tmp, "cache")
        shared = {}
        for row, fn in (
            ("stage1", lambda: bench_stage1(bench, results)),
            ("stage2", lambda: bench_stage2(bench, results, shared)),
            ("stage3", lambda: bench_stage3(bench, results, shared)),
            ("inference", lambda: bench_inference(bench, results)),
            ("backbones", lambda: bench_backbones(bench, results)),
            ("lcc", lambda: bench_lcc(bench, results)),
        ):
            if row in only:
                start = time.perf_counter()
                fn()
                print(f"{row}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    results["targets"] = {
        k: {"max": v, "met": results[k] is not None and results[k] <= v} for k, v in TARGETS.items() if k in results
    }
    results["seconds"] = time.perf_counter() - started
    print(
        f"device: {results['device']}, torch {results['torch']}, input {bench.input_size} px, batch "
        f"{bench.batch_size}, {bench.num_workers} workers"
    )
    print(table(results))
    if bench.json:
        write_json(bench.json, results)


if __name__ == "__main__":
    main()
