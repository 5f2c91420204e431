"""Backbones by name (models.backbones), the conceptual pathway (models.concept) and the perceptual
network (models.percept)."""
