"""Configuration of the DiffAE WarpDrive (Diffusion Autoencoders, Preechakul et al., CVPR 2022).

The defaults are the published cardiac configuration's architecture (BeatGANs
"autoencoder" UNet); only ``input_shape``, ``latent_dim``, ``net_ch`` and
``is3D`` usually change. ``latent_dim`` has no default here: the task sets it (the
published 128 is Configs/config_diffAE_ukbb.yaml's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from Engineering.Engines.WarpDrives.described import described, required
from Engineering.Engines.WarpDrives.errors import DriveError, positive_int

LATENT_NORMS = ("none", "batch")
ENC_POOLS = ("avg", "flatten")


class DiffAEConfigError(DriveError):
    """A DiffAE configuration value the user can fix."""


def _int_tuple(name: str, value: Sequence[int] | int, allow_empty: bool = False) -> tuple[int, ...]:
    # YAML/JSON give lists; a single int is accepted where a tuple is expected
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise DiffAEConfigError(f"{name} must be a sequence of positive integers, got {value!r}") from None
    if not allow_empty and not out:
        raise DiffAEConfigError(f"{name} must not be empty")
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DiffAEConfigError(f"{name} must hold positive integers, got {value!r}")
    return out


@dataclass
class DiffAEConfig:
    """Architecture of a DiffAE: a conditional UNet plus its semantic encoder (each field says what it is)."""

    is3D: bool = described(False, "3D convolutions on (S, X, Y) volumes instead of 2D on (X, Y) images.")
    in_channels: int = described(1, "image channels (the UNet predicts noise with as many channels).")
    input_shape: tuple[int, ...] = described(
        (64, 64),
        "spatial size, (X, Y) for 2D or (S, X, Y) for 3D. It decides where attention sits (see "
        "``attn_res``) and which sizes are valid; the weights do not depend on it otherwise.",
    )
    latent_dim: int = required(
        "size of the semantic code z_sem; also the width of the time and condition "
        "embeddings, as in the published model."
    )
    net_ch: int = described(32, "base channel count of UNet and encoder.")
    ch_mult: tuple[int, ...] = described((1, 1, 2, 3, 4), "channel multiplier per resolution level of UNet / encoder.")
    enc_ch_mult: tuple[int, ...] = described(
        (1, 1, 2, 3, 4, 4), "channel multiplier per resolution level of UNet / encoder."
    )
    num_res_blocks: int = described(2, "residual blocks per level.")
    enc_num_res_blocks: int = described(2, "residual blocks per level.")
    attn_res: tuple[int, ...] = described(
        (16,),
        "running resolutions with self-attention; the running resolution "
        "starts at max(input_shape) and halves at each downsampling level.",
    )
    num_heads: int = described(1, "attention heads.")
    dropout: float = described(0.1, "dropout inside the UNet's residual blocks.")
    isotropic: bool = described(
        False,
        "3D only. False (published model): down/upsample in-plane only, the first "
        "spatial axis (frames or slices) keeps its length. True: all three axes.",
    )
    enc_pool: str = described(
        "avg",
        'how the encoder\'s last feature map becomes z_sem. "avg" (published model): global average '
        "pooling, then a 1x1 convolution (nearly translation invariant: what sits where is lost unless the "
        'convolutions encode it in channels). "flatten": every position of the map into one linear layer '
        "(keeps the layout, so position-dependent content such as the tissue at the image centre is linearly "
        "available; ties the encoder to ``input_shape``).",
    )
    latent_norm: str = described(
        "none",
        '"none" (published model): z_sem is the encoder head\'s output. "batch": z_sem is standardised '
        "per dimension over the batch (BatchNorm without affine; running statistics at evaluation), so it "
        "cannot collapse to a constant that the UNet learns to ignore (see docs/results/quality.md).",
    )

    def __post_init__(self) -> None:
        for name in ("is3D", "isotropic"):
            v = getattr(self, name)
            if isinstance(v, int) and v in (0, 1):  # CLI passes 0/1
                setattr(self, name, bool(v))
            else:
                raise DiffAEConfigError(f"{name} must be a boolean (or 0/1), got {v!r}")
        for name in ("in_channels", "latent_dim", "net_ch", "num_res_blocks", "enc_num_res_blocks", "num_heads"):
            positive_int(name, getattr(self, name), DiffAEConfigError)
        if self.enc_pool not in ENC_POOLS:
            raise DiffAEConfigError(f"enc_pool must be one of {', '.join(ENC_POOLS)}, got {self.enc_pool!r}")
        if self.latent_norm not in LATENT_NORMS:
            raise DiffAEConfigError(f"latent_norm must be one of {', '.join(LATENT_NORMS)}, got {self.latent_norm!r}")
        self.input_shape = _int_tuple("input_shape", self.input_shape)
        self.ch_mult = _int_tuple("ch_mult", self.ch_mult)
        self.enc_ch_mult = _int_tuple("enc_ch_mult", self.enc_ch_mult)
        self.attn_res = _int_tuple("attn_res", self.attn_res, allow_empty=True)
        try:
            self.dropout = float(self.dropout)
        except (TypeError, ValueError):
            raise DiffAEConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}") from None
        if not 0.0 <= self.dropout < 1.0:
            raise DiffAEConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")

        dims = 3 if self.is3D else 2
        if len(self.input_shape) != dims:
            want = "(S, X, Y)" if self.is3D else "(X, Y)"
            raise DiffAEConfigError(
                f"input_shape must have {dims} entries {want} for is3D={self.is3D}, got {self.input_shape}"
            )

        g = self.norm_groups
        if self.net_ch % g:
            raise DiffAEConfigError(
                f"net_ch={self.net_ch} must be a multiple of its GroupNorm group count min(32, net_ch)={g}"
            )

        for name, mult in (("ch_mult", self.ch_mult), ("enc_ch_mult", self.enc_ch_mult)):
            for lvl in self.attention_levels(mult):
                if (self.net_ch * mult[lvl]) % self.num_heads:
                    raise DiffAEConfigError(
                        f"num_heads={self.num_heads} must divide the {self.net_ch * mult[lvl]} channels "
                        f"of the attention at {name} level {lvl}"
                    )

        # the UNet concatenates skip connections, so every downsampled axis must halve exactly
        need = 2 ** (len(self.ch_mult) - 1)
        bad = [s for s in self.downsampled(self.input_shape) if s % need]
        if bad:
            raise DiffAEConfigError(
                f"input_shape {self.input_shape}: {self.downsampled_axes_text()} must be multiples of "
                f"2**(len(ch_mult)-1) = {need} for the UNet's {len(self.ch_mult) - 1} downsampling levels"
            )
        # the encoder ends in global average pooling, so it only needs every level to be non-empty
        enc_need = 2 ** (len(self.enc_ch_mult) - 1)
        small = [s for s in self.downsampled(self.input_shape) if s < enc_need]
        if small:
            raise DiffAEConfigError(
                f"input_shape {self.input_shape}: {self.downsampled_axes_text()} must be at least "
                f"2**(len(enc_ch_mult)-1) = {enc_need} for the encoder's {len(self.enc_ch_mult) - 1} "
                f"downsampling levels"
            )

    # ---- derived values -------------------------------------------------------------
    @property
    def dims(self) -> int:
        return 3 if self.is3D else 2

    @property
    def embed_dim(self) -> int:
        """Width of the time and semantic-condition embeddings (= latent_dim, as published)."""
        return self.latent_dim

    @property
    def norm_groups(self) -> int:
        """GroupNorm groups everywhere: min(32, net_ch), as the published model."""
        return min(32, self.net_ch)

    @property
    def in_plane_only(self) -> bool:
        """3D and not isotropic: resample (X, Y) only, keep the first spatial axis."""
        return self.is3D and not self.isotropic

    def downsampled(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The spatial sizes of ``shape`` that down/upsampling changes."""
        return tuple(shape[1:]) if self.in_plane_only else tuple(shape)

    def downsampled_axes_text(self) -> str:
        return "the in-plane sizes (X, Y)" if self.in_plane_only else "all spatial sizes"

    def encoder_map_shape(self) -> tuple[int, ...]:
        """Spatial shape of the encoder's last feature map for ``input_shape`` (average pooling floors)."""
        n = len(self.enc_ch_mult) - 1
        shape = [s // 2**n for s in self.downsampled(self.input_shape)]
        return (self.input_shape[0], *shape) if self.in_plane_only else tuple(shape)

    def attention_levels(self, mult: Sequence[int] | None = None) -> tuple[int, ...]:
        """Levels (0 = full resolution) whose running resolution is in ``attn_res``."""
        mult = self.ch_mult if mult is None else mult
        res = max(self.input_shape)
        out = []
        for lvl in range(len(mult)):
            if res in self.attn_res:
                out.append(lvl)
            res //= 2
        return tuple(out)

    def to_dict(self) -> dict:
        """Plain, JSON-ready values (tuples become lists)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}
