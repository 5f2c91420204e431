"""Shared library under the three CRPN stage scripts."""
