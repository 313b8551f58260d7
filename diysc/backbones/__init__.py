"""Feature backbones: DINOv2, Stable Diffusion, the tiny and stand-in models, and their registry."""
