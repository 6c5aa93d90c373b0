"""Duotone's router: one OpenAI-compatible endpoint that splits traffic between the two tiers.

Its own deployable (router/Dockerfile, `duotone-router`): it imports the contracts and no other
Duotone program, and no torch or diffusers, so router pods start in a second and need no GPU.
"""

__version__ = "0.1.0"
