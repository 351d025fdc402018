"""The SD 1.5 UNet, from scratch: `UNetConfig` (config.py), `UNetModel` (model.py)."""
from .config import UNetConfig
from .model import UNetModel

__all__ = ["UNetConfig", "UNetModel"]
