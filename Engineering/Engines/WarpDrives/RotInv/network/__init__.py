from .config import RotInvConfig, RotInvConfigError
from .groups import GROUPS, GridGroup, c4, octahedral
from .model import CanonicalDecoder, RotInvAE, RotInvEncoder, inscribed_mask

__all__ = [
    "CanonicalDecoder",
    "GROUPS",
    "GridGroup",
    "RotInvAE",
    "RotInvConfig",
    "RotInvConfigError",
    "RotInvEncoder",
    "c4",
    "inscribed_mask",
    "octahedral",
]
