"""Complex-valued autoencoders (issue 36: complex_ae, complex_vae, complex_factor_vae), the family of the ancestor's
complex models (GlastonburyGroup/ImLatent), for complex data kept complex (MRI: complex series, or magnitude/phase).

Today: the pure-torch building blocks (``network``) and the complex reconstruction loss (``loss.crecon``). The
engines and the task registration come later; nothing here is registered yet.
"""
from .loss import crecon
from .network import (ComplexAEConfig, ComplexAEError, ComplexBatchNorm, ComplexConv, ComplexConvTranspose,
                      ComplexDecoder, ComplexEncoder, ComplexEncoding, CReLU, ModReLU)

__all__ = ["CReLU", "ComplexAEConfig", "ComplexAEError", "ComplexBatchNorm", "ComplexConv", "ComplexConvTranspose",
           "ComplexDecoder", "ComplexEncoder", "ComplexEncoding", "ModReLU", "crecon"]
