"""The perceptual network (docs/method.md, stage 3), optionally with the VAD head of the second system."""

import math

import torch
from torch import nn

from models.backbones import backbone_spec, build_backbone
from models.concept import Encoder, classifier_input_scale


class PerceptNet(nn.Module):
    """Backbone (``resnet18`` = the MS-Celeb ResNet-18 by default; any of ``PERCEPT_BACKBONES``) -> 256-d
    unit feature p -> category logits (and, with ``vad``, 3 VAD values).

    Input is RGB (torchvision convention; no channel flip). ``pretrained``: a weight file for the backbone
    (sha256 kept in ``self.weights_sha256``) or None for random init. ``forward`` returns {"p", "logits"}
    and, when ``vad``, "vad" (B x 3, unsquashed; targets on -2..2).

    The VAD head reads ``sqrt(dim) * p`` (:meth:`vad_from_feature`), i.e. p rescaled to unit mean square
    per component. p is L2-normalised, so its components are about 1/sqrt(dim) = 0.06; fed as is to
    default-initialised linear layers, the head's outputs start about 100x narrower than the targets
    (std 0.01 against about 1 on -2..2), and Adam, which moves each weight by about lr per step, needs
    hundreds of steps just to grow that scale: the predictions stay shrunk towards the mean, and CCC,
    which penalises a too-narrow spread, stays near 0 even when they correlate with the targets. The
    category head reads ``s * p`` with s = sqrt(dim) by default, for the same reason (it learns about as fast as
    a plain linear classifier on the backbone), or p itself with ``classifier_input="unit"`` (the published
    code); see :func:`models.concept.classifier_input_scale`.
    """

    def __init__(
        self,
        num_classes: int,
        pretrained: str | None = None,
        vad: bool = False,
        backbone: str = "resnet18",
        dim: int = 256,
        hidden: int = 128,
        dropout: float = 0.4,
        classifier_input: str = "scaled",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.vad = vad
        self.backbone_name = backbone
        spec = backbone_spec(backbone)
        features, self.weights_sha256 = build_backbone(backbone, pretrained)

        self.encoder = Encoder(features, spec.width, dim, dropout, flip_bgr=spec.bgr)
        self.classifier = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
        self.vad_head = (
            nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 3)) if vad else None
        )
        self.vad_input_scale = math.sqrt(dim)
        self.classifier_input_scale = classifier_input_scale(classifier_input, dim)

    def vad_from_feature(self, p: torch.Tensor) -> torch.Tensor:
        """The B x 3 VAD prediction from unit features p (B x dim): the head applied to sqrt(dim) * p."""
        return self.vad_head(p * self.vad_input_scale)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.encoder(x)
        out = {"p": p, "logits": self.classifier(p * self.classifier_input_scale)}
        if self.vad_head is not None:
            out["vad"] = self.vad_from_feature(p)
        return out
