from .config import ReStyleConfig, ReStyleConfigError
from .model import ReStyleEncoder, ReStyleNet

__all__ = ["ReStyleConfig", "ReStyleConfigError", "ReStyleEncoder", "ReStyleNet"]
