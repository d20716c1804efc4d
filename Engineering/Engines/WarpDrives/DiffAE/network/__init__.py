"""DiffAE WarpDrive: Diffusion Autoencoders (Preechakul et al., CVPR 2022), 2D and 3D.

``DiffAEConfig`` + ``DiffAE`` (pure torch); ``load_published_state`` maps the
published ImLatent checkpoints (``net.*`` / ``ema_net.*``) onto ``DiffAE``.
"""

from .config import DiffAEConfig, DiffAEConfigError
from .model import DiffAE
from .published import WeightsMismatchError, load_published_state

__all__ = ["DiffAEConfig", "DiffAEConfigError", "DiffAE", "load_published_state", "WeightsMismatchError"]
