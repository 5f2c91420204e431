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
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from torch.utils.data import RandomSampler  # noqa: E402

import main_concept  # noqa: E402
import main_percept  # noqa: E402
from dataset_concept import build_splits, eval_loader, make_loader, resize_size  # noqa: E402
from dataset_percept import PerceptTrainSet, collate_percept  # noqa: E402
from high_confidence import per_class_thresholds, score  # noqa: E402
from models.concept import ConceptNet  # noqa: E402
from models.percept import PerceptNet  # noqa: E402
from tools.make_synthetic_faces import make_dataset  # noqa: E402
from utils.checkpoint import write_json  # noqa: E402
from utils.cli import start_run  # noqa: E402
from utils.engine import amp_setup, autocast, optimizer_step, prepare_training, train_one_epoch  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.losses import class_weighted_supcon, class_weighted_supcon_naive  # noqa: E402

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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    parser.add_argument("--only", default="", help="comma-separated rows: stage1,stage2,stage3,inference,lcc")
    parser.add_argument("--lcc_child", default="", help=argparse.SUPPRESS)  # internal: one L_CC variant
    args = parser.parse_args(argv)
    for name in ("input_size", "batch_size", "steps", "repeats", "images_per_class", "latency_size",
                 "latency_repeats", "lcc_batch"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1.")
    if args.warmup < 0 or args.num_workers < 0:
        raise UserError("--warmup and --num_workers cannot be negative.")
    if args.images_per_class * 7 < args.batch_size:
        raise UserError(f"--images_per_class {args.images_per_class} gives fewer than one batch of "
                        f"{args.batch_size} faces.")
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
    argv = ["--data_path", bench.train_dir, "--eval_data_path", bench.test_dir, "--input_size", bench.input_size,
            "--batch_size", bench.batch_size, "--num_workers", bench.num_workers, "--norm_cache", bench.cache_dir,
            "--device", bench.device, "--seed", bench.seed, "--pretrained", "none", *extra]
    if bench.amp:
        argv.append("--amp")
    if bench.channels_last:
        argv.append("--channels_last")
    return start_run(parser.parse_args([str(a) for a in argv]))


def stream_loader(dataset, args, total_batches, collate_fn=None):
    """The stage's DataLoader settings, sampling with replacement for as many batches as the row needs."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=total_batches * args.batch_size,
                            generator=torch.Generator().manual_seed(args.seed))
    kwargs = {"collate_fn": collate_fn} if collate_fn else {}
    return make_loader(dataset, args.batch_size, sampler, drop_last=True, num_workers=args.num_workers,
                       device=args.device_obj, **kwargs)


def time_training(bench, args, model, loss_fn, dataset, collate_fn=None):
    """Median images/s of ``train_one_epoch`` over ``repeats`` runs of ``steps`` steps (after warm-up)."""
    model, ddp_model, optimizer, scheduler, per_iteration, amp_dtype, scaler = prepare_training(args, model)
    loader = stream_loader(dataset, args, bench.warmup + bench.repeats * bench.steps, collate_fn)
    iterator = iter(loader)

    def run(steps):
        return train_one_epoch(ddp_model, loss_fn, Take(iterator, steps), optimizer, args.device_obj, 0, scheduler,
                               per_iteration, scaler, amp_dtype, args.channels_last)["train_images_per_s"]

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
    args = stage_args(main_concept.get_args_parser(), bench)
    splits, _, _ = build_splits(args)
    classes = splits["train"].classes
    alpha = main_concept.resolve_focal_alpha(None, classes, splits["train"].targets)
    loss_fn = main_concept.make_loss_fn(args, len(classes), alpha)
    results["stage1_images_per_s"] = time_training(bench, args, ConceptNet(len(classes)), loss_fn, splits["train"])

    # bare: forward + backward + optimiser step of both encoders, random tensors already on the device
    model, _, optimizer, _, _, amp_dtype, scaler = prepare_training(args, ConceptNet(len(classes)))
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
    args = stage_args(main_concept.get_args_parser(), bench)
    splits, _, _ = build_splits(args, train_transform=False)
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


def bench_stage3(bench, results, shared):
    if "scores" not in shared:
        bench_stage2(bench, {}, shared)
    concept, scores = shared["concept"], shared["scores"]
    rows = {"none": ("none", "online", None), "self": ("self", "online", concept),
            "pool+bank": ("pool", "bank", None), "pool+online": ("pool", "online", concept),
            "reference": ("pool", "online", WholeConcept(concept))}
    for name, (target, pool_features, concept_model) in rows.items():
        args = stage_args(main_percept.get_args_parser(), bench,
                          ["--concept_target", target, "--pool_features", pool_features])
        main_percept.check_method_args(args)
        splits, _, _ = build_splits(args)
        train = splits["train"]
        labels = torch.tensor(train.targets)[scores["index"]].numpy()
        _, _, mask = per_class_thresholds(scores["confidence"].double().numpy(), labels, len(train.classes), 0.2)
        bank = None
        if target != "none":
            train = PerceptTrainSet(train, torch.from_numpy(mask), args.k,
                                    pool_features if target == "pool" else None, args.seed)
            if pool_features == "bank":
                bank = {k: scores[key].to(args.device_obj) for k, key in (("features", "e"), ("logits", "logits"))}
        loss_fn = main_percept.make_loss_fn(args, concept_model, bank, None)
        results[f"stage3_{name}_images_per_s"] = time_training(bench, args, PerceptNet(len(train.classes)), loss_fn,
                                                               train, collate_percept)
        results["stage3_low_confidence_share"] = float(1 - mask.mean())
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
    results["concept_emotion_branch_params"] = sum(p.numel() for m in (nets["concept"].emotion,
                                                                       nets["concept"].classifier)
                                                   for p in m.parameters())
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
                times[name].append(time_calls(lambda: net(x), device, 0, 1))
    for name in nets:
        results[f"{name}_latency_ms"] = 1000 * statistics.median(times[name])
    results["percept_over_concept_latency"] = results["percept_latency_ms"] / results["concept_latency_ms"]
    results["percept_over_concept_params"] = results["percept_params"] / results["concept_params"]
    results["percept_over_concept_flops"] = results["percept_flops"] / results["concept_flops"]


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
            cmd = [sys.executable, os.path.abspath(__file__), "--lcc_child", variant, "--lcc_batch",
                   str(bench.lcc_batch), "--device", bench.device, "--repeats", str(bench.repeats), "--json", grad_path]
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
    results["lcc_max_abs_diff"] = max(abs(child["ours"]["value"] - child["naive"]["value"]),
                                      float((child["ours"]["grad"] - child["naive"]["grad"]).abs().max()))


# --------------------------------------------------------------------------- report
def table(results):
    rows = [("stage 1 step", "stage1_images_per_s", "img/s"), ("stage 1 bare fwd+bwd+step", "stage1_bare_images_per_s", "img/s"),
            ("stage 2 scoring (emotion branch)", "stage2_images_per_s", "img/s"),
            ("stage 2 scoring, reference (both encoders)", "stage2_reference_images_per_s", "img/s")]
    rows += [(f"stage 3 {name}", f"stage3_{name}_images_per_s", "img/s")
             for name in ("none", "self", "pool+bank", "pool+online", "reference")]
    rows += [("perceptual net latency", "percept_latency_ms", "ms"), ("conceptual pathway latency", "concept_latency_ms", "ms"),
             ("perceptual net params", "percept_params", "M"), ("conceptual pathway params", "concept_params", "M"),
             ("perceptual net FLOPs", "percept_flops", "G"), ("conceptual pathway FLOPs", "concept_flops", "G"),
             ("L_CC ours fwd+bwd", "lcc_ours_ms", "ms"), ("L_CC naive fwd+bwd", "lcc_naive_ms", "ms"),
             ("L_CC ours peak memory", "lcc_ours_peak_bytes", "MiB"), ("L_CC naive peak memory", "lcc_naive_peak_bytes", "MiB")]
    scale = {"M": 1e-6, "G": 1e-9, "MiB": 2 ** -20}
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
    only = set(filter(None, bench.only.split(","))) or {"stage1", "stage2", "stage3", "inference", "lcc"}
    unknown = only - {"stage1", "stage2", "stage3", "inference", "lcc"}
    if unknown:
        raise UserError(f"--only {','.join(sorted(unknown))}: no such row (stage1, stage2, stage3, inference, lcc).")
    device = bench.device_obj
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
               f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores)",
               "torch": torch.__version__, "settings": {k: v for k, v in vars(bench).items()
                                                        if k not in ("device_obj", "lcc_child")}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if only & {"stage1", "stage2", "stage3"}:
            faces = os.path.join(tmp, "faces")
            make_dataset(faces, seed=bench.seed, size=resize_size(bench.input_size),
                         train_per_class=bench.images_per_class, test_per_class=1)
            bench.train_dir, bench.test_dir = os.path.join(faces, "train"), os.path.join(faces, "test")
            bench.cache_dir = os.path.join(tmp, "cache")
        shared = {}
        for row, fn in (("stage1", lambda: bench_stage1(bench, results)),
                        ("stage2", lambda: bench_stage2(bench, results, shared)),
                        ("stage3", lambda: bench_stage3(bench, results, shared)),
                        ("inference", lambda: bench_inference(bench, results)),
                        ("lcc", lambda: bench_lcc(bench, results))):
            if row in only:
                start = time.perf_counter()
                fn()
                print(f"{row}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    results["targets"] = {k: {"max": v, "met": results[k] is not None and results[k] <= v}
                          for k, v in TARGETS.items() if k in results}
    results["seconds"] = time.perf_counter() - started
    print(f"device: {results['device']}, torch {results['torch']}, input {bench.input_size} px, batch "
          f"{bench.batch_size}, {bench.num_workers} workers")
    print(table(results))
    if bench.json:
        write_json(bench.json, results)


if __name__ == "__main__":
    main()
