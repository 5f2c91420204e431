"""The perceptual network (METHOD.md, stage 3), optionally with the VAD head of the second system."""
from torch import nn

from models.backbones import as_feature_extractor, load_msceleb_weights, msceleb_resnet18
from models.concept import Encoder


class PerceptNet(nn.Module):
    """MS-Celeb ResNet-18 -> 256-d unit feature p -> category logits (and, with ``vad``, 3 VAD values).

    Input is RGB (torchvision convention of the MS-Celeb model; no channel flip). ``pretrained``: path
    to the MS-Celeb checkpoint (sha256 kept in ``self.weights_sha256``) or None for random init.
    ``forward`` returns {"p", "logits"} and, when ``vad``, "vad" (B x 3, unsquashed; targets on -2..2).
    """

    def __init__(self, num_classes, pretrained=None, vad=False, dim=256, hidden=128, dropout=0.4):
        super().__init__()
        self.num_classes = num_classes
        self.vad = vad
        self.weights_sha256 = None

        backbone = msceleb_resnet18()
        if pretrained is not None:
            self.weights_sha256 = load_msceleb_weights(backbone, pretrained)
        width = as_feature_extractor(backbone)

        self.encoder = Encoder(backbone, width, dim, dropout, flip_bgr=False)
        self.classifier = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
        self.vad_head = (nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 3))
                         if vad else None)

    def forward(self, x):
        p = self.encoder(x)
        out = {"p": p, "logits": self.classifier(p)}
        if self.vad_head is not None:
            out["vad"] = self.vad_head(p)
        return out
