"""Learning curves: how fast each network and loss of CRPN learns, against plain classifiers on the same backbones.

    python benchmarks/learning_curves.py --json curves.json                   # both inits, 2 seeds, every variant
    python benchmarks/learning_curves.py --init identity --seeds 0 --variants percept,resnet18_linear

Every variant trains on the demo's synthetic faces (``tools/make_synthetic_faces.py``, 7 classes) with the
repository's own ``Trainer``, data pipeline and objectives, at the same recipe (``--lr``, ``--lr_schedule``,
``--epochs``, batch, input size), and records test accuracy after every epoch:

- ``resnet50_linear``: the VGGFace2-variant ResNet-50 + one Linear layer + cross-entropy (the ceiling
  stage 1's network could reach with its backbone);
- ``concept_ce``: ConceptNet trained with cross-entropy on its confidence-scaled logits (focal alphas 1,
  focal gamma 0, every other term off), then adding the paper's terms in turn: ``concept_focal`` (focal
  loss, alphas from class frequencies), ``concept_focal_rr`` (+ L_RR), ``concept_focal_rr_orth`` (+ L_orth),
  ``concept_full`` (+ L_CC: the stage-1 loss);
- ``concept_full_unit``: the stage-1 loss with the published head (``--classifier_input unit``);
- ``percept`` / ``percept_unit``: PerceptNet (ResNet-18 + the 256-d unit head), CE only, with the scaled /
  the published head;
- ``resnet18_linear``: torchvision ResNet-18 + one Linear layer + cross-entropy.

``--init scratch`` starts every backbone from random weights; ``identity`` from the synthetic identity
stand-ins of ``tools/pretrain_identity.py`` (trained, or reused from its cache, first). Prints a table (final
and best test accuracy, mean and std over seeds, and the gap to the plain classifier of the same backbone),
writes JSON and a plot of the mean curves.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from torch import nn  # noqa: E402

from benchmarks.common import add_common_flags, identity_weights, mean_std, name_list, seed_list, write_report  # noqa: E402
from dataset_concept import build_splits, eval_loader, train_loader  # noqa: E402
from models.backbones import backbone_spec, build_backbone  # noqa: E402
from models.concept import ConceptNet  # noqa: E402
from models.percept import PerceptNet  # noqa: E402
from tools.make_synthetic_faces import make_dataset  # noqa: E402
from utils.cli import check_percept_args, concept_parser, percept_parser, start_run  # noqa: E402
from utils.engine import Trainer  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.figures import new_figure, save_figure  # noqa: E402
from utils.objectives import ConceptObjective, PerceptObjective, resolve_focal_alpha  # noqa: E402

CE_ONLY = ["--focal_alpha", "1,1,1,1,1,1,1", "--focal_gamma", "0", "--rr_margin", "0", "--alpha", "0", "--gamma", "0"]
# name: (network, extra stage flags, the plain classifier it is compared with)
VARIANTS = {
    "resnet50_linear": ("linear:vggface2_resnet50", ["--concept_target", "none"], None),
    "concept_ce": ("concept", CE_ONLY, "resnet50_linear"),
    "concept_focal": (
        "concept",
        ["--focal_alpha", "auto", "--rr_margin", "0", "--alpha", "0", "--gamma", "0"],
        "resnet50_linear",
    ),
    "concept_focal_rr": ("concept", ["--focal_alpha", "auto", "--alpha", "0", "--gamma", "0"], "resnet50_linear"),
    "concept_focal_rr_orth": ("concept", ["--focal_alpha", "auto", "--gamma", "0"], "resnet50_linear"),
    "concept_full": ("concept", ["--focal_alpha", "auto"], "resnet50_linear"),
    "concept_full_unit": ("concept", ["--focal_alpha", "auto", "--classifier_input", "unit"], "resnet50_linear"),
    "percept": ("percept", ["--concept_target", "none"], "resnet18_linear"),
    "percept_unit": ("percept", ["--concept_target", "none", "--classifier_input", "unit"], "resnet18_linear"),
    "resnet18_linear": ("linear:resnet18", ["--concept_target", "none"], None),
}


ARCH = {"vggface2_resnet50": "resnet50", "resnet18": "resnet18"}  # backbone -> tools/pretrain_identity.py --arch


class LinearClassifier(nn.Module):
    """A backbone from the registry + one Linear layer: the plain classifier a head is compared with."""

    def __init__(self, backbone: str, num_classes: int, pretrained: str | None):
        super().__init__()
        spec = backbone_spec(backbone)
        self.backbone, _ = build_backbone(backbone, pretrained)
        self.bgr = spec.bgr
        self.fc = nn.Linear(spec.width, num_classes)

    def forward(self, x):
        return {"logits": self.fc(self.backbone(x.flip(1) if self.bgr else x))}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--init", default="both", choices=("scratch", "identity", "both"))
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr_schedule", default="cosine", choices=("cosine", "reference"))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--input_size", type=int, default=40)
    parser.add_argument("--train_per_class", type=int, default=80)
    parser.add_argument("--test_per_class", type=int, default=30)
    parser.add_argument("--data_seed", type=int, default=0)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--out", default=os.path.join("output", "benchmarks", "learning_curves"))
    add_common_flags(parser)
    args = parser.parse_args(argv)
    args.variants = name_list(args.variants, VARIANTS, "--variants")
    args.seeds = seed_list(args.seeds)
    if args.epochs < 1:
        raise UserError("--epochs must be positive.")
    return args


def run_variant(bench, name, init, seed, faces, weights, tmp):
    """Train one variant; returns its per-epoch test accuracies."""
    network, extra, _ = VARIANTS[name]
    stage = concept_parser() if network == "concept" else percept_parser()
    backbone = (
        network.split(":")[1]
        if network.startswith("linear:")
        else ("vggface2_resnet50" if network == "concept" else "resnet18")
    )
    pretrained = weights[ARCH[backbone]] if init == "identity" else "none"
    argv = [
        "--data_path",
        os.path.join(faces, "train"),
        "--eval_data_path",
        os.path.join(faces, "test"),
        "--input_size",
        bench.input_size,
        "--batch_size",
        bench.batch_size,
        "--epochs",
        bench.epochs,
        "--lr",
        bench.lr,
        "--lr_schedule",
        bench.lr_schedule,
        "--seed",
        seed,
        "--num_workers",
        bench.num_workers,
        "--norm_cache",
        os.path.join(tmp, "cache"),
        "--pretrained",
        pretrained,
        "--output_dir",
        os.path.join(tmp, f"{name}-{init}-{seed}"),
        *extra,
    ]
    args = start_run(stage.parse_args([str(a) for a in argv]))
    splits, _, _ = build_splits(args)
    classes = splits["train"].classes
    path = None if pretrained == "none" else pretrained
    if network == "concept":
        model = ConceptNet(len(classes), path, classifier_input=args.classifier_input)
        alpha = resolve_focal_alpha(args.focal_alpha, classes, splits["train"].targets, args.dataset)
        objective = ConceptObjective(args, len(classes), alpha, args.device_obj)
    else:
        check_percept_args(args)
        args.alpha = 1.0  # plain cross-entropy
        model = (
            LinearClassifier(backbone, len(classes), path)
            if network.startswith("linear:")
            else PerceptNet(len(classes), path, classifier_input=args.classifier_input)
        )
        objective = PerceptObjective(args)
    trainer = Trainer(args, model, objective, meta={"model": name})
    loader, sampler = train_loader(splits["train"], args)
    _, history = trainer.fit(loader, sampler, {"eval": eval_loader(splits["eval"], args)}, classes, args.epochs)
    return [record["eval_acc"] for record in history]


def summarise(results, variants):
    """Rows of (init, variant, seeds, final mean/std, best mean/std, gap to its plain classifier)."""
    rows = []
    for init, by_variant in results.items():
        for name in variants:
            curves = list(by_variant.get(name, {}).values())
            if not curves:
                continue
            finals, bests = [c[-1] for c in curves], [max(c) for c in curves]
            reference = VARIANTS[name][2]
            ref_curves = list(by_variant.get(reference, {}).values()) if reference else []
            gap = statistics.mean(finals) - statistics.mean(c[-1] for c in ref_curves) if ref_curves else None
            rows.append(
                {
                    "init": init,
                    "variant": name,
                    "seeds": len(curves),
                    **dict(zip(("final_mean", "final_std"), mean_std(finals))),
                    **dict(zip(("best_mean", "best_std"), mean_std(bests))),
                    "gap_to_plain": gap,
                    "reference": reference,
                    "mean_curve": [statistics.mean(c[i] for c in curves) for i in range(len(curves[0]))],
                }
            )
    return rows


def table(rows):
    lines = [
        "| init | variant | seeds | final test acc % | best test acc % | final − plain classifier | mean curve |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gap = "" if r["gap_to_plain"] is None else f"{r['gap_to_plain']:+.1f} vs {r['reference']}"
        curve = " ".join(f"{v:.0f}" for v in r["mean_curve"])
        lines.append(
            f"| {r['init']} | {r['variant']} | {r['seeds']} | {r['final_mean']:.1f} ± {r['final_std']:.1f} | "
            f"{r['best_mean']:.1f} ± {r['best_std']:.1f} | {gap} | {curve} |"
        )
    return "\n".join(lines)


def plot(rows, path):
    inits = sorted({r["init"] for r in rows})
    fig, axes = new_figure(1, len(inits), figsize=(6.5 * len(inits), 4.5))
    for ax, init in zip(axes[0], inits):
        for r in (r for r in rows if r["init"] == init):
            style = "--" if r["reference"] is None else "-"
            ax.plot(
                range(1, len(r["mean_curve"]) + 1), r["mean_curve"], style, marker="o", markersize=3, label=r["variant"]
            )
        ax.set_title(f"{init} init")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


@run_main
def main(argv=None):
    bench = parse_args(argv)
    inits = ["scratch", "identity"] if bench.init == "both" else [bench.init]
    started = time.perf_counter()
    weights = identity_weights(bench.pretrained_dir) if "identity" in inits else {}
    results = {init: {} for init in inits}
    with tempfile.TemporaryDirectory() as tmp:
        faces = os.path.join(tmp, "faces")
        make_dataset(
            faces,
            seed=bench.data_seed,
            size=round(bench.input_size * 256 / 224) + 2,
            train_per_class=bench.train_per_class,
            test_per_class=bench.test_per_class,
        )
        for init in inits:
            for name in bench.variants:
                for seed in bench.seeds:
                    start = time.perf_counter()
                    curve = run_variant(bench, name, init, seed, faces, weights, tmp)
                    results[init].setdefault(name, {})[seed] = curve
                    print(
                        f"{init} {name} seed {seed}: {' '.join(f'{v:.1f}' for v in curve)} "
                        f"({time.perf_counter() - start:.0f} s)",
                        flush=True,
                    )
    rows = summarise(results, bench.variants)
    text = table(rows)
    print(text)
    os.makedirs(bench.out, exist_ok=True)
    plot(rows, os.path.join(bench.out, "learning_curves.png"))
    write_report(bench, "learning_curves", {"curves": results, "summary": rows}, text, started)


if __name__ == "__main__":
    main()
