from .config import StyleGAN2Config, StyleGAN2ConfigError
from .model import Discriminator, Generator, MappingNetwork

__all__ = ["StyleGAN2Config", "StyleGAN2ConfigError", "Generator", "Discriminator", "MappingNetwork"]
