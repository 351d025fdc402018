"""minitome: Stable Diffusion 1.5 from scratch in plain PyTorch, with Token Merging (ToMe-SD) inline."""
from .tome import ToMeConfig

__all__ = ["ToMeConfig"]
