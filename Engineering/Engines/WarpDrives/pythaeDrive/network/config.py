"""Configuration of the pythae WarpDrive (pythae: Chadebec et al., NeurIPS 2022).

Model parameters follow pythae's own default config of the chosen model (e.g.
``BetaVAEConfig.beta = 1.0``; where pythae's default does not train, the registry's
``defaults``, e.g. vqvae's EMA codebook), overridden by ``model_params`` -- the engine passes the
``--pythae_config`` JSON merged with the YAML ``model§pythae§models§<name>§<field>`` values.
An unknown field is an error naming the valid fields; fields that pythae writes into its
saved configs for bookkeeping (``name``, ``uses_default_*``) are accepted and ignored, and
``input_dim`` / ``latent_dim`` / ``reconstruction_loss``, which this config owns, may appear
only with the same value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from Engineering.Engines.WarpDrives.described import described, required
from Engineering.Engines.WarpDrives.errors import positive_int

from .registry import ModelSpec, get_spec
from .spec import PythaeDriveConfigError  # (defined beside the model table's types: no import cycle)

NN_FAMILIES = ("conv", "resnet")
RECON_LOSSES = ("mse", "l1", "bce", "smooth_l1", "ssim", "ms_ssim", "masked", "perceptual", "custom")
# losses built without parameters (custom_loss_params are not theirs, as before the named losses came)
_PARAMLESS = ("l1", "bce")
OUTPUT_ACTIVATIONS = ("auto", "identity", "sigmoid", "tanh")

# set by the drive from this config, never by model_params
DRIVE_OWNED = ("input_dim", "latent_dim", "reconstruction_loss")
# pythae bookkeeping written into saved configs; accepted in model_params and ignored
BOOKKEEPING = (
    "name",
    "uses_default_encoder",
    "uses_default_decoder",
    "uses_default_discriminator",
    "uses_default_metric",
    "discriminator_input_dim",
)


def editable_fields(model: str) -> tuple[str, ...]:
    """pythae config fields of ``model`` that ``model_params`` may set."""
    spec = get_spec(model)
    return tuple(f.name for f in fields(spec.config_cls) if f.name not in DRIVE_OWNED + BOOKKEEPING)


def pythae_defaults(model: str) -> dict[str, Any]:
    """The default values of the editable fields of ``model``: pythae's, with ours where they differ."""
    spec = get_spec(model)
    cfg = spec.config_cls()
    return {**{name: getattr(cfg, name) for name in editable_fields(spec.name)}, **dict(spec.defaults)}


@dataclass
class PythaeDriveConfig:
    """What to build: a pythae model with our 2D/3D encoder and decoder."""

    model: str = described("vae", "registry name (see ``registry.MODELS``), e.g. 'vae', 'beta_vae', 'vqvae'.")
    is3D: bool = described(False, "volumes B x C x S x X x Y (3D convs) instead of images B x C x X x Y.")
    in_channels: int = described(1, "image channels C.")
    input_shape: tuple[int, ...] = described(
        (64, 64), "spatial size, (X, Y) or (S, X, Y); any size (padded inside, cropped back)."
    )
    latent_dim: int = required("size of the latent code; embed() returns (B, latent_dim).")
    nn: str = described("conv", "network family, 'conv' or 'resnet'.")
    n_features: int = described(32, "width of the first stage (doubles per level, capped at 8x).")
    n_levels: int = described(3, "downsampling stages (an axis stops halving at length 1).")
    reconstruction_loss: str = described(
        "mse",
        "'mse' / 'bce' (pythae's own; bce needs data in [0, 1] and makes the decoder end in a sigmoid), 'l1', "
        "'smooth_l1', 'ssim', 'ms_ssim', 'masked' (the ancestor's MaskedReconLoss over the batch mask), "
        "'perceptual' (a local network file), or 'custom' (``custom_loss_class`` built with "
        "``custom_loss_params``; built-ins 'masked_mse', 'masked_l1', 'masked' use the batch mask). See "
        "recon_losses.py for how they replace the squared error inside pythae, and for each loss's "
        "parameters.",
    )
    custom_loss_class: str | type | None = described(
        None, "built-in name, 'package.module.Class', or a class/function."
    )
    custom_loss_params: dict[str, Any] = described(
        {},
        "keyword arguments of the loss: of ``custom_loss_class``, or of the named loss (smooth_l1: beta; "
        "ssim/ms_ssim: data_range, sigma, ...; masked: loss_fn, mode; perceptual: network, n_level, "
        "feature_loss). Ignored by 'l1' and 'bce', which take none.",
    )
    model_params: dict[str, Any] = described({}, "pythae config fields of the model (see module docstring).")
    output_activation: str = described("auto", "decoder output; 'auto' = sigmoid for bce, identity otherwise.")
    vq_code_dim: int = described(
        1,
        "vqvae only: size of each code vector; latent_dim / vq_code_dim codes. 1 "
        "quantises each latent scalar separately, as pythae does for a flat embedding.",
    )
    data_key: str = described("inp", "batch-dict key of the image.")
    mask_key: str = described("mask", "batch-dict key of the optional mask.")

    def __post_init__(self):
        try:
            self.model = get_spec(self.model).name
        except ValueError as exc:
            raise PythaeDriveConfigError(str(exc)) from None
        shape = (self.input_shape,) if isinstance(self.input_shape, int) else self.input_shape
        try:
            self.input_shape = tuple(int(n) for n in shape)
        except (TypeError, ValueError):
            raise PythaeDriveConfigError(f"input_shape must be a list of sizes, got {self.input_shape!r}") from None
        want = 3 if self.is3D else 2
        if len(self.input_shape) != want or min(self.input_shape) < 1:
            raise PythaeDriveConfigError(
                f"input_shape must hold {want} positive sizes "
                f"({'S, X, Y' if self.is3D else 'X, Y'}), got {list(self.input_shape)}"
            )
        for name in ("in_channels", "latent_dim", "n_features", "n_levels", "vq_code_dim"):
            positive_int(name, getattr(self, name), PythaeDriveConfigError)
        if self.nn not in NN_FAMILIES:
            raise PythaeDriveConfigError(f"nn must be one of {', '.join(NN_FAMILIES)}, got {self.nn!r}")
        if self.reconstruction_loss not in RECON_LOSSES:
            raise PythaeDriveConfigError(
                f"reconstruction_loss must be one of {', '.join(RECON_LOSSES)}, got {self.reconstruction_loss!r}"
            )
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise PythaeDriveConfigError(
                f"output_activation must be one of {', '.join(OUTPUT_ACTIVATIONS)}, got {self.output_activation!r}"
            )
        spec = self.spec
        if not spec.custom_recon and self.reconstruction_loss != "mse":
            raise PythaeDriveConfigError(
                f"{self.model}: reconstruction_loss must be 'mse' (its reconstruction "
                f"term is its own: {spec.notes.split(';')[0]})"
            )
        if self.vq_code_dim != 1 and self.model != "vqvae":
            raise PythaeDriveConfigError("vq_code_dim applies to vqvae only")
        if self.latent_dim % self.vq_code_dim:
            raise PythaeDriveConfigError(f"vq_code_dim ({self.vq_code_dim}) must divide latent_dim ({self.latent_dim})")
        if self.model in ("svae", "pvae") and self.latent_dim < 2:
            raise PythaeDriveConfigError(f"{self.model} needs latent_dim >= 2")
        if not isinstance(self.model_params, Mapping) or not isinstance(self.custom_loss_params, Mapping):
            raise PythaeDriveConfigError("model_params and custom_loss_params must be mappings")
        if self.wraps_reconstruction or self.custom_loss_class is not None:
            loss = self.elementwise_loss()  # fail now, not at the first batch
            check = getattr(getattr(loss, "loss", None), "check_shape", None)
            if check is not None and self.reconstruction_loss != "custom":  # image size vs window / scales / levels
                try:
                    check(self.input_shape, self.in_channels, self.is3D)
                except ValueError as exc:
                    raise PythaeDriveConfigError(str(exc)) from None
        self.model_params = dict(self.model_params)
        self.pythae_config()  # validates model_params

    @property
    def spec(self) -> ModelSpec:
        return get_spec(self.model)

    @property
    def input_dim(self) -> tuple[int, ...]:
        """pythae's ``input_dim``: (C, X, Y) or (C, S, X, Y)."""
        return (self.in_channels,) + tuple(self.input_shape)

    @property
    def native_reconstruction_loss(self) -> str:
        """What pythae's own ``reconstruction_loss`` field is set to."""
        return "bce" if self.reconstruction_loss == "bce" and self.spec.native_bce else "mse"

    @property
    def wraps_reconstruction(self) -> bool:
        """True when the recon term goes through a ReconTarget (l1, custom, bce on AE-type models)."""
        return self.reconstruction_loss != self.native_reconstruction_loss

    @property
    def decoder_activation(self) -> str:
        if self.output_activation != "auto":
            return self.output_activation
        return "sigmoid" if self.reconstruction_loss == "bce" else "identity"

    def elementwise_loss(self):
        """The element-wise loss that replaces pythae's squared error, or None for pythae's own."""
        from .recon_losses import build_elementwise_loss

        if self.reconstruction_loss != "custom" and self.custom_loss_class is not None:
            raise PythaeDriveConfigError(
                f"custom_loss_class is set but reconstruction_loss is {self.reconstruction_loss!r}, not 'custom'"
            )
        if not self.wraps_reconstruction:
            return None
        try:
            params = None if self.reconstruction_loss in _PARAMLESS else self.custom_loss_params
            return build_elementwise_loss(self.reconstruction_loss, self.custom_loss_class, params)
        except ValueError as exc:
            raise PythaeDriveConfigError(str(exc)) from None

    def pythae_config(self):
        """A fresh pythae config instance (pythae models mutate theirs) with defaults < model_params."""
        spec = self.spec
        valid = editable_fields(spec.name)
        params: dict[str, Any] = dict(spec.defaults)
        owned = {
            "input_dim": self.input_dim,
            "latent_dim": self.latent_dim,
            "reconstruction_loss": self.native_reconstruction_loss,
        }
        for key, value in self.model_params.items():
            if key in BOOKKEEPING:
                if key == "name" and value not in (spec.config_cls.__name__, None):
                    raise PythaeDriveConfigError(
                        f"model_params are for {spec.config_cls.__name__} (model {spec.name!r}), not {value}"
                    )
                continue
            if key in DRIVE_OWNED:
                mine = self.reconstruction_loss if key == "reconstruction_loss" else owned[key]
                theirs = tuple(value) if isinstance(value, list) else value
                if theirs is not None and theirs != mine:
                    raise PythaeDriveConfigError(
                        f"model_params§{key}={value!r} conflicts with the drive's "
                        f"{key} ({mine!r}); set it there instead"
                    )
                continue
            if key not in valid:
                raise PythaeDriveConfigError(
                    f"unknown {spec.name} parameter {key!r}; valid fields of "
                    f"{spec.config_cls.__name__}: {', '.join(valid) or '(none)'}"
                )
            params[key] = value
        if "reconstruction_loss" not in {f.name for f in fields(spec.config_cls)}:
            owned.pop("reconstruction_loss")
        try:
            return spec.config_cls(**owned, **params)
        except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            msg = " ".join(str(exc).split())
            raise PythaeDriveConfigError(f"invalid {spec.name} parameters {params}: {msg}") from None
