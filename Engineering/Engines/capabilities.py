"""What an engine can do beyond ``embed``: one runtime-checkable protocol per capability.

Every engine embeds (LatentEngine); a family that also reconstructs, decodes a latent alone, renders x with other
latents or outputs a pose defines that method, and a family that cannot simply does not define it. Callers ask
``isinstance(engine, Decodes)`` rather than calling and catching a refusal. A method whose answer depends on the
run's configuration (a pythae model without a decoder of z alone, DGCNN's missing pose) stays defined and returns
the None its protocol documents. ``use_ema``: use the EMA weights where the engine keeps them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Reconstructs(Protocol):
    def reconstruct(self, x: torch.Tensor, z: torch.Tensor, use_ema: bool) -> torch.Tensor:
        """x's reconstruction from its latent ``z = embed(x)`` (x for what else the decoder takes, such as DiffAE's
        x_T): a tensor of x's shape in the model's input units."""


@runtime_checkable
class ReconstructsWithCode(Protocol):
    def reconstruct_with_code(
        self, x: torch.Tensor, z: torch.Tensor, use_ema: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(reconstruction as ``reconstruct`` gives it, a per-sample code beyond z that recon.h5 keeps, such as
        DiffAE's x_T or a pythae anomaly map, or None)."""


@runtime_checkable
class Decodes(Protocol):
    def decode(self, z: torch.Tensor, use_ema: bool) -> torch.Tensor | None:
        """The decoder's output for latents alone, (B, ...) (for latent interpolations), or None when this
        configuration has no decoder that needs only z."""


@runtime_checkable
class Renders(Protocol):
    def render(self, x: torch.Tensor, codes: list[torch.Tensor], use_ema: bool) -> list[torch.Tensor] | None:
        """x's reconstruction with its latent replaced by each of ``codes`` (latent usage, Eval/latent_usage.py),
        one tensor per code; whatever else the decoder takes (DiffAE's x_T, a pose) stays x's own. None when this
        configuration has no such decoder."""


@runtime_checkable
class Poses(Protocol):
    def pose(self, x: torch.Tensor, use_ema: bool) -> torch.Tensor | None:
        """(B, dim, dim) rotation matrices with pose(R x) = R pose(x), or None when this configuration has no pose
        output."""


CAPABILITIES = (Reconstructs, ReconstructsWithCode, Decodes, Renders, Poses)


def reconstruction_and_code(
    engine, x: torch.Tensor, z: torch.Tensor, use_ema: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The test phase's (reconstruction, code): the engine's own pair where it has one, else (reconstruct, None)."""
    if isinstance(engine, ReconstructsWithCode):
        return engine.reconstruct_with_code(x, z, use_ema)
    return engine.reconstruct(x, z, use_ema), None
