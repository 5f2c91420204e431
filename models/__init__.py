"""Backbones, loaders and the two CRPN networks."""
