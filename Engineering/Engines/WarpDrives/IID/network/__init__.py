from .config import IIDConfig, IIDConfigError
from .model import IIDNet

__all__ = ["IIDConfig", "IIDConfigError", "IIDNet"]
