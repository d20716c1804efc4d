"""The complex autoencoder's pure-torch networks: complex (transposed) convolution, complex batch normalisation,
CReLU / modReLU, and the encoder (complex image -> real latent) and decoder (real latent -> complex image)."""
from .activations import CReLU, ModReLU
from .autoencoder import ComplexDecoder, ComplexEncoder, ComplexEncoding
from .batchnorm import ComplexBatchNorm, inverse_sqrt_2x2
from .checks import ComplexAEError
from .config import ComplexAEConfig
from .conv import ComplexConv, ComplexConvTranspose

__all__ = ["CReLU", "ComplexAEConfig", "ComplexAEError", "ComplexBatchNorm", "ComplexConv", "ComplexConvTranspose",
           "ComplexDecoder", "ComplexEncoder", "ComplexEncoding", "ModReLU", "inverse_sqrt_2x2"]
