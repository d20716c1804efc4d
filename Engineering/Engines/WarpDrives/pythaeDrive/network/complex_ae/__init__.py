"""The complex autoencoder's pure-torch networks: complex (transposed) convolution, complex batch normalisation,
CReLU / modReLU, the encoder (complex image -> real latent) and decoder (real latent -> complex image), and the
complex reconstruction loss (``loss.crecon``): the layers of the complex models (``custom_models/complex.py``, issue
36),
the ancestor's complex family (GlastonburyGroup/ImLatent) for complex data kept complex."""

from .activations import CReLU, ModReLU
from .autoencoder import ComplexDecoder, ComplexEncoder, ComplexEncoding
from .batchnorm import ComplexBatchNorm, inverse_sqrt_2x2
from .checks import ComplexAEError
from .config import ComplexAEConfig
from .conv import ComplexConv, ComplexConvTranspose
from .loss import crecon

__all__ = [
    "CReLU",
    "ComplexAEConfig",
    "ComplexAEError",
    "ComplexBatchNorm",
    "ComplexConv",
    "ComplexConvTranspose",
    "ComplexDecoder",
    "ComplexEncoder",
    "ComplexEncoding",
    "ModReLU",
    "crecon",
    "inverse_sqrt_2x2",
]
