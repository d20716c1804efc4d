"""The ancestor's own models beside stock pythae (GlastonburyGroup/ImLatent registers them as
``--pythae_model custom_<name>``; plain ``<name>`` works too): pythae-style configs and models, one module per
model family, each exporting ``SPECS`` (its :class:`~..spec.ModelSpec` entries). ``CUSTOM_MODELS`` is what the
registry adds to its table.

The batch entries these models read besides the image (phenotypes, confounders, auxiliary variables) and the
config fields the engine fills from the data are named in :mod:`.aux`.
"""

from __future__ import annotations

from ..spec import ModelSpec
from . import cevae, complex, ivae, ultra

CUSTOM_MODELS: tuple[ModelSpec, ...] = (*ultra.SPECS, *cevae.SPECS, *ivae.SPECS, *complex.SPECS)
