"""The conceptual pathway (docs/method.md, stage 1): emotion encoder, non-emotion encoder, confidence classifier."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import backbone_spec, build_backbone
from utils.checkpoint import load_checkpoint
from utils.errors import UserError


def _unit(h: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows, in fp32 when autocast produced half precision (unit length matters downstream)."""
    if h.dtype in (torch.float16, torch.bfloat16):
        h = h.float()
    return F.normalize(h, dim=1)


class Encoder(nn.Module):
    """backbone (globally pooled features) -> Linear -> ReLU -> Dropout -> Linear -> L2-normalise.

    ``flip_bgr=True`` reverses the channels of the RGB input on entry (the VGGFace2 ResNet-50 was trained
    on BGR); the data pipeline is RGB everywhere.
    """

    def __init__(
        self, backbone: nn.Module, feat_dim_in: int = 2048, dim: int = 256, dropout: float = 0.4, flip_bgr: bool = True
    ):
        super().__init__()
        self.backbone = backbone
        self.flip_bgr = flip_bgr
        self.head = nn.Sequential(
            nn.Linear(feat_dim_in, dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip_bgr:
            x = x.flip(1)  # RGB -> BGR; keeps channels_last
        return _unit(self.head(self.backbone(x)))


CLASSIFIER_INPUTS = ("scaled", "unit")


def classifier_input_scale(mode: str, dim: int) -> float:
    """The factor a class head applies to its unit-length input: sqrt(dim) for ``scaled`` (the default),
    1 for ``unit`` (the published code).

    A unit vector's components are about 1/sqrt(dim) = 0.06 at dim 256; fed as they are to
    default-initialised linear layers they give logits about 10x narrower than a plain linear classifier's
    (std 0.02 against 0.19 at initialisation), and Adam needs many steps to grow that scale: the head learns
    several times slower than its backbone allows. Scaling the input by sqrt(dim) gives unit mean square per
    component. It changes no function the head can represent (W(s e) = (sW) e), only where training starts
    and how fast it moves.
    """
    if mode not in CLASSIFIER_INPUTS:
        raise ValueError(f"classifier input {mode!r} is not one of {CLASSIFIER_INPUTS}")
    return math.sqrt(dim) if mode == "scaled" else 1.0


class ConfidenceClassifier(nn.Module):
    """h = ReLU(Linear(s * e)); z = Linear(h); a = sigmoid(Linear(e)); logits = a * z. Returns (logits, a).

    s = :func:`classifier_input_scale` (sqrt(dim), or 1 with ``input_mode="unit"``). Only the class
    branch reads the scaled e: the confidence branch keeps unit e, since a gate that learns faster than
    the class scores it multiplies can collapse to a = 0 and stall training (measured: a fell to 0.015).
    """

    def __init__(self, num_classes: int, dim: int = 256, hidden: int = 128, input_mode: str = "scaled"):
        super().__init__()
        self.hidden = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, num_classes)
        self.confidence = nn.Linear(dim, 1)
        self.input_scale = classifier_input_scale(input_mode, dim)

    def forward(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.out(F.relu(self.hidden(e * self.input_scale)))
        a = torch.sigmoid(self.confidence(e)).squeeze(1)
        return a.unsqueeze(1) * z, a


class ConceptNet(nn.Module):
    """Emotion encoder E (trainable), non-emotion encoder N (frozen backbone, trainable head), classifier.

    ``pretrained``: path to ``resnet50_ft_weight.pkl`` (loaded into both backbones; its sha256 is kept in
    ``self.weights_sha256``) or None for random initialisation. ``non_emotion_pretrained``: another file of the
    same format for the non-emotion backbone alone (sha256 in ``self.non_emotion_weights_sha256``); None: the
    same start as the emotion backbone. The non-emotion backbone stays in eval
    mode under ``train()``; ``nonemotion_bn_update=True`` reproduces the reference, whose frozen backbone
    still updates its BatchNorm statistics.
    """

    BACKBONE = "vggface2_resnet50"

    def __init__(
        self,
        num_classes: int,
        pretrained: str | None = None,
        nonemotion_bn_update: bool = False,
        non_emotion_pretrained: str | None = None,
        dim: int = 256,
        dropout: float = 0.4,
        classifier_input: str = "scaled",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.nonemotion_bn_update = nonemotion_bn_update
        spec = backbone_spec(self.BACKBONE)
        emotion_backbone, self.weights_sha256 = build_backbone(self.BACKBONE, pretrained)
        if non_emotion_pretrained is not None:
            non_emotion_backbone, self.non_emotion_weights_sha256 = build_backbone(
                self.BACKBONE, non_emotion_pretrained
            )
        else:
            non_emotion_backbone, _ = build_backbone(self.BACKBONE)
            self.non_emotion_weights_sha256 = self.weights_sha256
            if pretrained is not None:  # both start from the same face-identity weights
                non_emotion_backbone.load_state_dict(emotion_backbone.state_dict())

        self.emotion = Encoder(emotion_backbone, spec.width, dim, dropout, flip_bgr=spec.bgr)
        self.non_emotion = Encoder(non_emotion_backbone, spec.width, dim, dropout, flip_bgr=spec.bgr)
        self.non_emotion.backbone.requires_grad_(False)
        self.classifier = ConfidenceClassifier(num_classes, dim, input_mode=classifier_input)
        self.train()

    def train(self, mode: bool = True) -> "ConceptNet":
        super().train(mode)
        if not self.nonemotion_bn_update:
            self.non_emotion.backbone.eval()
        return self

    def emotion_forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Emotion encoder + classifier only (stages 2 and 3): {"e", "logits", "confidence"}."""
        e = self.emotion(x)
        logits, confidence = self.classifier(e)
        return {"e": e, "logits": logits, "confidence": confidence}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.emotion_forward(x)
        out["n"] = self.non_emotion(x)
        return out


def load_concept_checkpoint(path: str) -> dict:
    """A stage-1 checkpoint, checked to be one (its ``meta`` names ConceptNet)."""
    checkpoint = load_checkpoint(path, "concept checkpoint")
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    if not meta or meta.get("model") != "ConceptNet":
        raise UserError(
            f"{path} is not a stage-1 (main_concept.py) checkpoint; pass --concept_ckpt "
            f"output/concept/checkpoint-best.pth or your stage-1 output."
        )
    return checkpoint


def frozen_concept(checkpoint: dict, device: torch.device) -> ConceptNet:
    """The stage-1 model of a loaded checkpoint, frozen and in eval mode (stages 2 and 3 run only
    its emotion branch)."""
    meta = checkpoint["meta"]  # checkpoints from before --classifier_input were trained with unit inputs
    model = ConceptNet(len(meta["classes"]), None, classifier_input=meta.get("classifier_input", "unit"))
    model.load_state_dict(checkpoint["model"])
    model.requires_grad_(False)
    return model.to(device).eval()
