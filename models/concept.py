"""The conceptual pathway (METHOD.md, stage 1): emotion encoder, non-emotion encoder, confidence classifier."""
import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import as_feature_extractor, load_vggface2_weights, vggface2_resnet50
from utils.checkpoint import load_checkpoint
from utils.errors import UserError


def _unit(h):
    """L2-normalise rows, in fp32 when autocast produced half precision (unit length matters downstream)."""
    if h.dtype in (torch.float16, torch.bfloat16):
        h = h.float()
    return F.normalize(h, dim=1)


class Encoder(nn.Module):
    """backbone (globally pooled features) -> Linear -> ReLU -> Dropout -> Linear -> L2-normalise.

    ``flip_bgr=True`` reverses the channels of the RGB input on entry (the VGGFace2 ResNet-50 was trained
    on BGR); the data pipeline is RGB everywhere.
    """

    def __init__(self, backbone, feat_dim_in=2048, dim=256, dropout=0.4, flip_bgr=True):
        super().__init__()
        self.backbone = backbone
        self.flip_bgr = flip_bgr
        self.head = nn.Sequential(
            nn.Linear(feat_dim_in, dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(dim, dim),
        )

    def forward(self, x):
        if self.flip_bgr:
            x = x.flip(1)  # RGB -> BGR; keeps channels_last
        return _unit(self.head(self.backbone(x)))


class ConfidenceClassifier(nn.Module):
    """h = ReLU(Linear(e)); z = Linear(h); a = sigmoid(Linear(e)); logits = a * z. Returns (logits, a)."""

    def __init__(self, num_classes, dim=256, hidden=128):
        super().__init__()
        self.hidden = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, num_classes)
        self.confidence = nn.Linear(dim, 1)

    def forward(self, e):
        z = self.out(F.relu(self.hidden(e)))
        a = torch.sigmoid(self.confidence(e)).squeeze(1)
        return a.unsqueeze(1) * z, a


class ConceptNet(nn.Module):
    """Emotion encoder E (trainable), non-emotion encoder N (frozen backbone, trainable head), classifier.

    ``pretrained``: path to ``resnet50_ft_weight.pkl`` (loaded into both backbones; its sha256 is kept in
    ``self.weights_sha256``) or None for random initialisation. The non-emotion backbone stays in eval
    mode under ``train()``; ``nonemotion_bn_update=True`` reproduces the reference, whose frozen backbone
    still updates its BatchNorm statistics.
    """

    def __init__(self, num_classes, pretrained=None, nonemotion_bn_update=False, dim=256, dropout=0.4):
        super().__init__()
        self.num_classes = num_classes
        self.nonemotion_bn_update = nonemotion_bn_update
        self.weights_sha256 = None

        emotion_backbone = vggface2_resnet50()
        non_emotion_backbone = vggface2_resnet50()
        if pretrained is not None:
            self.weights_sha256 = load_vggface2_weights(emotion_backbone, pretrained)
            non_emotion_backbone.load_state_dict(emotion_backbone.state_dict())
        width = as_feature_extractor(emotion_backbone)
        as_feature_extractor(non_emotion_backbone)

        self.emotion = Encoder(emotion_backbone, width, dim, dropout)
        self.non_emotion = Encoder(non_emotion_backbone, width, dim, dropout)
        self.non_emotion.backbone.requires_grad_(False)
        self.classifier = ConfidenceClassifier(num_classes, dim)
        self.train()

    def train(self, mode=True):
        super().train(mode)
        if not self.nonemotion_bn_update:
            self.non_emotion.backbone.eval()
        return self

    def emotion_forward(self, x):
        """Emotion encoder + classifier only (stages 2 and 3): {"e", "logits", "confidence"}."""
        e = self.emotion(x)
        logits, confidence = self.classifier(e)
        return {"e": e, "logits": logits, "confidence": confidence}

    def forward(self, x):
        out = self.emotion_forward(x)
        out["n"] = self.non_emotion(x)
        return out


def load_concept_checkpoint(path):
    """A stage-1 checkpoint, checked to be one (its ``meta`` names ConceptNet)."""
    checkpoint = load_checkpoint(path, "concept checkpoint")
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    if not meta or meta.get("model") != "ConceptNet":
        raise UserError(f"{path} is not a stage-1 (main_concept.py) checkpoint; pass --concept_ckpt "
                        f"output/concept/checkpoint-best.pth or your stage-1 output.")
    return checkpoint


def frozen_concept(checkpoint, device):
    """The stage-1 model of a loaded checkpoint, frozen and in eval mode (stages 2 and 3 run only
    its emotion branch)."""
    model = ConceptNet(len(checkpoint["meta"]["classes"]), None)
    model.load_state_dict(checkpoint["model"])
    model.requires_grad_(False)
    return model.to(device).eval()
