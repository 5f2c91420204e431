"""Backbones, loaders and the two CRPN networks."""
from models.backbones import (as_feature_extractor, load_msceleb_weights, load_vggface2_weights,
                              msceleb_resnet18, sha256_file, vggface2_resnet50)
from models.concept import ConceptNet, ConfidenceClassifier, Encoder
from models.percept import PerceptNet

__all__ = ["ConceptNet", "ConfidenceClassifier", "Encoder", "PerceptNet", "as_feature_extractor",
           "load_msceleb_weights", "load_vggface2_weights", "msceleb_resnet18", "sha256_file",
           "vggface2_resnet50"]
