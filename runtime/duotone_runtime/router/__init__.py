"""The router: one OpenAI-compatible endpoint that splits traffic between the two tiers.

It imports no torch or diffusers: router pods start in a second and need no GPU.
"""
