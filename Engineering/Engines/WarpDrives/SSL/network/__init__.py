from .config import SSLConfig, SSLConfigError
from .model import ResNetEncoder, SSLNet

__all__ = ["SSLConfig", "SSLConfigError", "SSLNet", "ResNetEncoder"]
