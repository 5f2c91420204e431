"""Draw Figure1.png: the CRPN framework (three stages, their scripts and losses) with matplotlib only.

python tools/draw_figure.py --out Figure1.png
"""

import argparse
import os
import sys

from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

if __package__ in (None, ""):  # run as `python tools/draw_figure.py`: make `utils` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.figures import new_figure, save_figure  # noqa: E402

W, H = 14.0, 8.6  # figure size in inches == data units (1 unit = 100 px at dpi 100)
FONT = 10

COLORS = {
    "input": "#eeeeee",
    "concept": "#d6e6f7",
    "frozen": "#e4e4e4",
    "feature": "#fff2cc",
    "loss": "#f8d7d5",
    "stage2": "#e2f0d9",
    "percept": "#fde9d9",
}


def box(ax, x, y, w, h, text, color, fontsize=FONT, weight="normal", edge="#333333", style="-", lw=1.2):
    """A rounded box with its lower-left corner at (x, y); returns its anchor points."""
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=color,
            edgecolor=edge,
            linewidth=lw,
            linestyle=style,
            zorder=2,
        )
    )
    ax.text(
        x + w / 2,
        y + h / 2,
        text,
        ha="center",
        va="center",
        fontsize=fontsize,
        weight=weight,
        zorder=3,
        linespacing=1.3,
    )
    return {
        "l": (x, y + h / 2),
        "r": (x + w, y + h / 2),
        "t": (x + w / 2, y + h),
        "b": (x + w / 2, y),
        "c": (x + w / 2, y + h / 2),
    }


def arrow(
    ax, start, end, color="#333333", style="-|>", ls="-", rad=0.0, lw=1.3, label=None, label_xy=None, label_kw=None
):
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle=style,
            mutation_scale=13,
            color=color,
            linewidth=lw,
            linestyle=ls,
            connectionstyle=f"arc3,rad={rad}",
            zorder=1,
            shrinkA=2,
            shrinkB=2,
        )
    )
    if label:
        x, y = label_xy or ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        kw = {"fontsize": FONT - 1, "ha": "center", "va": "bottom", "color": color, "style": "italic"}
        kw.update(label_kw or {})
        ax.text(x, y, label, zorder=4, **kw)


def panel(ax, x, y, w, h, title, color):
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0.0,rounding_size=0.12",
            facecolor=color,
            edgecolor="#888888",
            linewidth=1.0,
            alpha=0.35,
            zorder=0,
        )
    )
    ax.text(x + 0.15, y + h - 0.12, title, ha="left", va="top", fontsize=FONT + 2, weight="bold", zorder=3)


def draw(out):
    fig, _ = new_figure(0, 0, figsize=(W, H))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, W)
    ax.set_ylim(0, H)
    ax.axis("off")

    ax.text(
        W / 2,
        H - 0.18,
        "CRPN: Concept-Regularized Perceptual Network",
        ha="center",
        va="top",
        fontsize=FONT + 4,
        weight="bold",
    )

    # ------------------------------------------------------------------ stage 1: conceptual pathway
    s1_y, s1_h = 4.55, 3.55
    panel(ax, 0.15, s1_y, W - 0.3, s1_h, "Stage 1: conceptual pathway (main_concept.py)", "#bcd4ee")
    face1 = box(ax, 0.4, 5.75, 1.3, 1.0, "input face x\n(RGB crop)", COLORS["input"])
    enc_e = box(
        ax, 2.2, 6.55, 2.6, 0.95, "emotion encoder E\nResNet-50 (VGGFace2 init)\nfully trainable", COLORS["concept"]
    )
    enc_n = box(
        ax, 2.2, 4.95, 2.6, 0.95, "non-emotion encoder N\nResNet-50: frozen backbone,\ntrainable head", COLORS["frozen"]
    )
    arrow(ax, face1["r"], enc_e["l"])
    arrow(ax, face1["r"], enc_n["l"])
    feat_e = box(ax, 5.3, 6.75, 1.1, 0.55, "e (256-d)", COLORS["feature"])
    feat_n = box(ax, 5.3, 5.15, 1.1, 0.55, "n (256-d)", COLORS["feature"])
    arrow(ax, enc_e["r"], feat_e["l"])
    arrow(ax, enc_n["r"], feat_n["l"])
    orth = box(ax, 5.05, 6.0, 1.6, 0.5, "L_orth (e ⊥ n)", COLORS["loss"])
    arrow(ax, feat_e["b"], orth["t"], style="<|-|>")
    arrow(ax, feat_n["t"], orth["b"], style="<|-|>")

    clf = box(
        ax,
        7.2,
        6.55,
        3.1,
        0.95,
        "classifier with confidence\nz = Linear(ReLU(Linear(e)))\na = sigmoid(Linear(e)),  logits = a·z",
        COLORS["concept"],
    )
    arrow(ax, feat_e["r"], clf["l"])
    focal = box(ax, 10.9, 6.75, 2.75, 0.55, "L_focal (logits)  +  L_RR (a)", COLORS["loss"])
    arrow(ax, clf["r"], focal["l"])
    cc = box(ax, 7.2, 5.3, 3.1, 0.8, "L_CC on e: class-weighted\nsupervised contrastive", COLORS["loss"])
    arrow(ax, (feat_e["r"][0], feat_e["r"][1] - 0.12), (cc["l"][0], cc["l"][1] + 0.1))
    ax.text(
        12.3,
        5.75,
        "L = 0.1·L_orth + (L_focal + L_RR)\n      + 0.01·L_CC",
        ha="center",
        va="center",
        fontsize=FONT + 1,
        weight="bold",
        family="monospace",
        bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "#aa3333"},
    )

    # ------------------------------------------------------------------ stage 2: pools
    s2_x, s2_w = 0.15, 3.9
    panel(ax, s2_x, 0.15, s2_w, 4.2, "Stage 2: high-score pools\n(high_confidence.py)", "#b7dba0")
    conf = box(
        ax, 0.45, 2.7, 3.3, 0.65, "confidence a, feature e, logits\nof every training image (frozen)", COLORS["stage2"]
    )
    thr = box(ax, 0.45, 1.65, 3.3, 0.7, "per-class threshold t_c =\n20th percentile of a in class c", COLORS["stage2"])
    pools = box(
        ax,
        0.45,
        0.4,
        3.3,
        0.95,
        "a ≥ t_y: high-confidence\n→ high-score pool per class\n+ feature bank (e, logits)",
        COLORS["stage2"],
    )
    arrow(ax, conf["b"], thr["t"])
    arrow(ax, thr["b"], pools["t"])
    arrow(
        ax,
        (3.45, s1_y + 0.02),
        (3.45, conf["t"][1]),
        color="#2f6f2f",
        label="frozen stage-1 model",
        label_xy=(3.35, 3.5),
        label_kw={"ha": "right", "va": "center"},
    )

    # ------------------------------------------------------------------ stage 3: perceptual pathway
    s3_x = 4.25
    panel(ax, s3_x, 0.15, W - 0.15 - s3_x, 4.2, "Stage 3: perceptual pathway (main_percept.py)", "#f4c7a8")
    face3 = box(ax, 4.8, 1.75, 1.05, 0.8, "input face x", COLORS["input"])
    # inference-only network (dashed frame)
    ax.add_patch(
        FancyBboxPatch(
            (6.05, 1.35),
            4.5,
            1.6,
            boxstyle="round,pad=0.02,rounding_size=0.1",
            facecolor="none",
            edgecolor="#c0504d",
            linewidth=1.6,
            linestyle="--",
            zorder=1,
        )
    )
    ax.text(
        8.3,
        1.22,
        "inference: only the perceptual network",
        ha="center",
        va="top",
        fontsize=FONT,
        color="#c0504d",
        weight="bold",
    )
    r18 = box(ax, 6.2, 1.75, 1.7, 0.8, "ResNet-18\n(MS-Celeb-1M init)", COLORS["percept"])
    feat_p = box(ax, 8.1, 1.9, 0.75, 0.5, "p", COLORS["feature"])
    clf_p = box(ax, 9.05, 1.75, 1.3, 0.8, "classifier\n→ logits_p", COLORS["percept"])
    arrow(ax, face3["r"], r18["l"])
    arrow(ax, r18["r"], feat_p["l"])
    arrow(ax, feat_p["r"], clf_p["l"])
    ce = box(ax, 10.9, 1.85, 1.0, 0.6, "CE", COLORS["loss"])
    arrow(ax, clf_p["r"], ce["l"])

    target = box(
        ax,
        4.5,
        3.05,
        3.6,
        0.75,
        "concept target c: own e if high-confidence,\nelse mean e of K=8 pooled same-class",
        COLORS["feature"],
        fontsize=FONT - 0.5,
    )
    mmd = box(ax, 8.55, 3.15, 1.5, 0.55, "MMD(c, p)", COLORS["loss"])
    arrow(ax, target["r"], mmd["l"])
    arrow(ax, feat_p["t"], (mmd["b"][0] - 0.3, mmd["b"][1]))
    kl = box(
        ax,
        10.9,
        2.85,
        2.75,
        0.9,
        "KL(concept logits ‖ logits_p)\non high-confidence samples",
        COLORS["loss"],
        fontsize=FONT - 0.5,
    )
    arrow(ax, (clf_p["t"][0] + 0.3, clf_p["t"][1]), (kl["l"][0], kl["l"][1] - 0.2))
    arrow(
        ax,
        pools["r"],
        (4.65, target["b"][1]),
        color="#2f6f2f",
        rad=0.3,
        label="pools",
        label_xy=(4.3, 1.05),
        label_kw={"ha": "left", "va": "center"},
    )
    arrow(ax, face3["t"], (face3["t"][0], target["b"][1]))
    ax.text(
        12.5,
        0.7,
        "L = 2·CE + MMD + KL",
        ha="center",
        va="center",
        fontsize=FONT + 1,
        weight="bold",
        family="monospace",
        bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "#aa3333"},
    )
    # frozen concept model feeds the targets and the KL teacher
    arrow(
        ax,
        (kl["t"][0], 5.35),
        kl["t"],
        color="#1f4e79",
        ls="--",
        label="frozen E + classifier\n(concept e, logits)",
        label_xy=(12.4, 4.85),
        label_kw={"ha": "left", "va": "center"},
    )

    save_figure(fig, out, dpi=100)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", default="Figure1.png", help="output PNG path")
    args = parser.parse_args(argv)
    draw(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
