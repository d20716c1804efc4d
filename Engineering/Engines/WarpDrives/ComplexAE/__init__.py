"""Complex-valued autoencoders (issue 36: complex_ae, complex_vae, complex_factor_vae), the family of the ancestor's
complex models (GlastonburyGroup/ImLatent), for complex data kept complex (MRI: complex series, or magnitude/phase).

Here: the pure-torch building blocks (``network``) and the complex reconstruction loss (``loss.crecon``). The models
are pythae-style pairs on the pythae drive (``pythaeDrive/custom_models/complex.py``, which builds these networks
through ``ModelSpec.networks``), trained by ``Executors/main_recon.py --pythae_model complex_vae --complex_mode
complex``.
"""
from .loss import crecon
from .network import (ComplexAEConfig, ComplexAEError, ComplexBatchNorm, ComplexConv, ComplexConvTranspose,
                      ComplexDecoder, ComplexEncoder, ComplexEncoding, CReLU, ModReLU)

__all__ = ["CReLU", "ComplexAEConfig", "ComplexAEError", "ComplexBatchNorm", "ComplexConv", "ComplexConvTranspose",
           "ComplexDecoder", "ComplexEncoder", "ComplexEncoding", "ModReLU", "crecon"]
