"""Duotone runtime: a diffusers text-to-image pipeline served by Triton's Python backend."""

__version__ = "0.1.0"
