"""Reconstruction losses beyond pythae's own mse/bce, without forking pythae.

pythae (Chadebec et al., NeurIPS 2022) writes the reconstruction term of every model
inline, always as ``F.mse_loss(recon, x, reduction="none")`` (or ``F.binary_cross_entropy``)
on the data tensor ``x = inputs["data"]`` -- possibly reshaped, repeated over importance
samples (IWAE family) or indexed (FactorVAE's half batches) first -- and then applies its
own constants (0.5 for Gaussian likelihoods, ``reconstruction_loss_scale``, ...).

So the drive hands pythae its data as a :class:`ReconTarget`: a ``torch.Tensor`` subclass
that carries an element-wise loss and an optional mask. Through ``__torch_function__``
(PyTorch's documented extension point, nothing global is patched):

- shape operations on it (reshape, unsqueeze, repeat, indexing, ...) return a ReconTarget
  again, with the mask put through the same operation, so the mask stays aligned with
  every view pythae makes of the data;
- ``F.mse_loss`` / ``F.binary_cross_entropy`` / ``F.l1_loss`` with it as an argument
  compute *our* element-wise loss instead, then apply the requested reduction;
- every other operation (convolutions, ``autograd.grad``, ...) runs on the plain data and
  returns plain tensors, so nothing downstream of the encoder ever sees the subclass.

Consequently our loss replaces the element-wise squared error *inside* pythae's own
formula: pythae's constants, sums over pixels and importance weighting stay as they are.
With ``reconstruction_loss='mse'`` the drive does not wrap anything (pure pythae).

Element-wise loss protocol (built-ins below; ``custom_loss_class`` names your own)::

    class MyLoss(torch.nn.Module):
        def forward(self, recon, target, mask=None):   # ``mask`` argument optional
            return ...   # element-wise loss, same shape as ``recon``

torch.nn losses work too (``reduction`` is set to 'none' unless given).

Built-in losses (``reconstruction_loss`` names; their parameters go in ``custom_loss_params``):
``l1``, ``bce``, ``smooth_l1`` (Huber-style, ``beta``), ``ssim``, ``ms_ssim``, ``masked`` (the
ancestor's MaskedReconLoss: ``loss_fn``, ``mode``) and ``perceptual`` (a local network file).
SSIM, MS-SSIM and the perceptual loss compare whole images while pythae hands over
flattened, repeated or indexed views; the ReconTarget therefore carries the per-sample shape
(C, [S,] X, Y) of the data and such losses (``needs_image = True``) get their inputs reshaped
to (N, C, [S,] X, Y) and their element-wise result reshaped back. LPIPS (the ancestor's lossID -2) is not
offered: its weights are downloaded when it is built, which this pipeline never does (``perceptual`` with a local
file is the alternative; Engineering/config/ancestor.py refuses ``--lossID -2`` saying so).
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

T = torch.Tensor


class L1(nn.Module):
    """|recon - target| element-wise."""

    def forward(self, recon: T, target: T) -> T:
        return (recon - target).abs()


class BCE(nn.Module):
    """Binary cross-entropy element-wise; ``recon`` must be probabilities in [0, 1]."""

    def forward(self, recon: T, target: T) -> T:
        return F.binary_cross_entropy(recon, target, reduction="none")


class SmoothL1(nn.Module):
    """torch's smooth L1 element-wise: 0.5 d^2 / beta where |d| < beta, |d| - 0.5 beta elsewhere
    (Girshick, Fast R-CNN, ICCV 2015); the ancestor's lossID 2."""

    def __init__(self, beta: float = 1.0):
        super().__init__()
        if not float(beta) > 0:
            raise ValueError(f"smooth_l1: beta must be > 0, got {beta!r}")
        self.beta = float(beta)

    def forward(self, recon: T, target: T) -> T:
        return F.smooth_l1_loss(recon, target, reduction="none", beta=self.beta)


class MaskedMSE(nn.Module):
    """mask * (recon - target)^2: only voxels inside the mask count (a mask is required).

    The mask comes from the batch (``mask_key`` of the drive config, the data mask of
    ``data_mask_mode`` 2); 0/1 or soft weights, broadcastable to the image.
    """

    def forward(self, recon: T, target: T, mask: T | None = None) -> T:
        if mask is None:
            raise ValueError(f"{type(self).__name__} needs a mask in the batch (see mask_key)")
        return mask * (recon - target) ** 2


class MaskedL1(nn.Module):
    """mask * |recon - target| (a mask is required)."""

    def forward(self, recon: T, target: T, mask: T | None = None) -> T:
        if mask is None:
            raise ValueError(f"{type(self).__name__} needs a mask in the batch (see mask_key)")
        return mask * (recon - target).abs()


class MaskedRecon(nn.Module):
    """The ancestor's MaskedReconLoss (its ``custom_loss_params {loss_fn, mode}``), element-wise.

    ``loss_fn`` 'mse' or 'l1' (alias 'mae') of ``mask*recon - mask*target`` (the ancestor masks both images, so a
    soft mask weighs by mask^2); ``mode`` 0: that masked loss only; mode 1: masked loss + the same loss on the
    whole image (inside the mask twice, outside once). Per sample, pythae's sum over the elements equals the
    ancestor's per-sample sum. The mask is the batch's (``data_mask_mode`` 2 puts meta_mask.h5 there).
    """

    def __init__(self, loss_fn: str = "mse", mode: int | str = 0):
        super().__init__()
        fn = str(loss_fn).lower()
        if fn not in ("mse", "l1", "mae"):
            raise ValueError(f"masked loss: loss_fn must be 'mse' or 'l1' (or 'mae'), got {loss_fn!r}")
        if str(mode) not in ("0", "1"):
            raise ValueError(f"masked loss: mode must be 0 (masked only) or 1 (masked + unmasked), got {mode!r}")
        self.loss_fn, self.mode = ("l1" if fn == "mae" else fn), int(str(mode))

    def _err(self, d: T) -> T:
        return d**2 if self.loss_fn == "mse" else d.abs()

    def forward(self, recon: T, target: T, mask: T | None = None) -> T:
        if mask is None:
            raise ValueError("masked loss needs a mask in the batch (data§data_mask_mode 2; see mask_key)")
        out = self._err(mask * target - mask * recon)
        return out + self._err(target - recon) if self.mode == 1 else out


def _gauss_size(sigma: float) -> int:
    """torchmetrics' Gaussian window size for ``sigma`` (what it pads by and convolves with)."""
    return int(3.5 * sigma + 0.5) * 2 + 1


class _SSIMParams(nn.Module):
    """Window and constants shared by SSIM and MS-SSIM (torchmetrics' names and defaults)."""

    needs_image = True
    label = "ssim"

    def __init__(
        self,
        data_range: float = 1.0,
        gaussian_kernel: bool = True,
        sigma: float = 1.5,
        kernel_size: int = 11,
        k1: float = 0.01,
        k2: float = 0.03,
    ):
        super().__init__()
        if not float(data_range) > 0 or not float(sigma) > 0:
            raise ValueError(f"{self.label}: data_range and sigma must be > 0, got {data_range!r}, {sigma!r}")
        if int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
            raise ValueError(f"{self.label}: kernel_size must be odd and positive, got {kernel_size!r}")
        # with a Gaussian window torchmetrics pads by the window that sigma implies but pads the depth axis of
        # volumes by kernel_size: pass the implied size so the SSIM map keeps the image's shape in 2D and 3D
        size = _gauss_size(float(sigma)) if gaussian_kernel else int(kernel_size)
        self.kw = dict(
            data_range=float(data_range),
            gaussian_kernel=bool(gaussian_kernel),
            sigma=float(sigma),
            kernel_size=size,
            k1=float(k1),
            k2=float(k2),
        )

    @property
    def pad(self) -> int:
        return (self.kw["kernel_size"] - 1) // 2

    def min_size(self, axis: int, n_axes: int) -> int:
        """Smallest length of spatial ``axis`` (of ``n_axes``) that the loss accepts."""
        return self.pad + 1  # reflection padding needs pad < length

    def check_shape(self, input_shape: Sequence[int], in_channels: int = 1, is3D: bool = False) -> None:
        """Refuse (one line) an image size too small for the window / the scales."""
        n = len(input_shape)
        need = [self.min_size(i, n) for i in range(n)]
        if any(s < m for s, m in zip(input_shape, need)):
            raise ValueError(
                f"reconstruction_loss {self.label} needs input_shape of at least {need} with "
                f"{self.describe()}, got {list(input_shape)}"
            )

    def describe(self) -> str:
        return f"a {self.kw['kernel_size']}-wide window"


class SSIM(_SSIMParams):
    """1 - the SSIM map (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004), element-wise, 2D or 3D.

    torchmetrics computes the local SSIM at every pixel/voxel (reflection-padded, so the map has the image's
    shape); its SSIM is the map's mean, so each sample's sum of this loss is n_elements * (1 - SSIM). The
    ancestor's lossID 4. Parameters (``custom_loss_params``, torchmetrics' names and defaults): ``data_range``
    (default 1, as the ancestor: the span of the intensities), ``sigma`` of the Gaussian window (its width follows
    sigma, as in torchmetrics), ``gaussian_kernel`` (false: a uniform ``kernel_size`` window), ``k1``, ``k2``.
    An ``input_shape`` narrower than the window's half-width + 1 is refused.
    """

    label = "ssim"

    def forward(self, recon: T, target: T) -> T:
        from torchmetrics.functional.image import structural_similarity_index_measure as ssim

        _, full = ssim(recon, target, reduction="none", return_full_image=True, **self.kw)
        if full.shape != recon.shape:  # a torchmetrics that crops its map would break the element-wise contract
            raise ValueError(
                f"ssim: torchmetrics returned a map of shape {tuple(full.shape)} for images of shape "
                f"{tuple(recon.shape)}"
            )
        return 1 - full


class MSSSIM(_SSIMParams):
    """(1 - MS-SSIM) (Wang, Simoncelli & Bovik, Asilomar 2003) via torchmetrics, 2D or 3D; the ancestor's lossID 3.

    MS-SSIM is one number per image (a product over scales), with no map: each sample's (1 - MS-SSIM) is spread
    evenly over its elements, so pythae's per-sample sum of the element-wise loss equals it (and its gradient
    is the gradient of 1 - MS-SSIM). That sum lies in [0, 1], far smaller than a sum of squared errors over
    the pixels: weigh the model's other terms accordingly (e.g. beta). Each of the ``len(betas)`` scales halves
    the image, so MS-SSIM needs large enough inputs: a smaller ``input_shape`` is refused with the minimum;
    fewer ``betas`` or a smaller ``sigma`` / ``kernel_size`` lower it. Parameters: SSIM's, plus ``betas`` (one
    exponent per scale, default Wang et al.'s five) and ``normalize`` (torchmetrics': 'relu' keeps the per-scale
    terms non-negative, so fractional powers stay real).
    """

    label = "ms_ssim"

    def __init__(
        self, betas: Sequence[float] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), normalize: str | None = "relu", **kw
    ):
        super().__init__(**kw)
        self.betas = tuple(float(b) for b in betas)
        if not self.betas:
            raise ValueError("ms_ssim: betas must hold one weight per scale")
        if normalize not in ("relu", "simple", None):
            raise ValueError(f"ms_ssim: normalize must be 'relu', 'simple' or null, got {normalize!r}")
        self.normalize = normalize

    def min_size(self, axis: int, n_axes: int) -> int:
        n = len(self.betas)
        # every scale reflection-pads (length > pad) and is then halved (length >= 2), n - 1 halvings before the last
        need = max(self.pad + 1, 2) * 2 ** (n - 1)
        if axis >= n_axes - 2:  # torchmetrics' own checks on the last two axes
            div = max(1, n - 1) ** 2
            need = max(need, 2**n, self.kw["kernel_size"] * div)
        return need

    def describe(self) -> str:
        return (
            f"{len(self.betas)} scales and a {self.kw['kernel_size']}-wide window "
            "(fewer betas or a smaller sigma lower it)"
        )

    def forward(self, recon: T, target: T) -> T:
        from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim

        per_sample = msssim(recon, target, reduction="none", betas=self.betas, normalize=self.normalize, **self.kw)
        n = recon[0].numel()
        return ((1 - per_sample) / n).reshape(-1, *([1] * (recon.dim() - 1))).expand_as(recon)


class Perceptual(nn.Module):
    """Perceptual (feature) loss (Johnson, Alahi & Fei-Fei, ECCV 2016) over a local network file; the ancestor's
    lossID -1. Nothing is downloaded: ``network`` names a file on disk, and without one the loss is refused.

    The file (``network``): ``.safetensors`` (preferred), or ``.pt``/``.pth`` read with
    ``torch.load(weights_only=True)`` (tensors only, never an arbitrary pickle), holding a plain convolutional
    feature extractor in VGG's layout (Simonyan & Zisserman, 2015), described by its tensor names alone:
    ``<level>.<layer>.weight`` and ``.bias`` -- level 0, 1, ..., layers in order; each weight a convolution
    kernel (out, in, k, k) for 2D or (out, in, k, k, k) for 3D, applied with stride 1 and padding k // 2 and
    followed by a ReLU; 2x max-pooling between levels. Optional ``mean`` and ``std`` tensors (one value per
    input channel) normalise the images first. torchvision's VGG-16 ``features`` become such a file by
    grouping its convolutions at its pooling layers (``0.0.weight`` = ``features.0.weight``, ...); a 3D network
    of the same layout works the same way. A network with 3 input channels takes single-channel images
    repeated three times.

    Loss: the sum over the first ``n_level`` levels of the mean ``feature_loss`` ('l1', the ancestor's default,
    or 'mse') between the features of reconstruction and image; the network is frozen (evaluation mode, no
    gradients to its weights) and is not part of the model's weights or checkpoints. Like MS-SSIM it is one
    number per image, spread evenly over the image's elements so pythae's per-sample sum equals it.
    """

    needs_image = True

    def __init__(self, network: str | None = None, n_level: int | None = None, feature_loss: str = "l1"):
        super().__init__()
        if not network:
            raise ValueError(
                "perceptual loss needs a local network file: custom_loss_params§network PATH "
                "(.safetensors or a torch weights file; nothing is downloaded)"
            )
        if feature_loss not in ("l1", "mse"):
            raise ValueError(f"perceptual loss: feature_loss must be 'l1' or 'mse', got {feature_loss!r}")
        self.feature_loss = feature_loss
        levels, self.mean, self.std = _read_feature_net(Path(str(network)).expanduser())
        # None or inf (the ancestor's default): every level of the file
        if n_level is not None and not (
            isinstance(n_level, (int, float))
            and not isinstance(n_level, bool)
            and n_level >= 1
            and (math.isinf(n_level) or n_level == int(n_level))
        ):
            raise ValueError(f"perceptual loss: n_level must be a positive integer, got {n_level!r}")
        keep = len(levels) if n_level is None or n_level >= len(levels) else int(n_level)
        self.levels = levels[:keep]
        self.is3D = self.levels[0][0].weight.dim() == 5
        self.in_channels = self.levels[0][0].in_channels
        # kept outside the module tree: not in the model's state_dict, never trained, not moved by the optimiser
        self._frozen = [nn.ModuleList(nn.Sequential(*layers) for layers in self.levels).eval().requires_grad_(False)]

    def check_shape(self, input_shape: Sequence[int], in_channels: int, is3D: bool) -> None:
        """Refuse (one line) data the network cannot take: other dimensionality, channels, too small."""
        if is3D != self.is3D:
            raise ValueError(
                f"perceptual loss: the network file holds {'3D' if self.is3D else '2D'} convolutions, "
                f"the data is {'3D' if is3D else '2D'}"
            )
        if in_channels != self.in_channels and not (in_channels == 1 and self.in_channels == 3):
            raise ValueError(
                f"perceptual loss: the network takes {self.in_channels} input channels, the data has {in_channels}"
            )
        need = 2 ** (len(self.levels) - 1)
        if min(input_shape) < need:
            raise ValueError(
                f"perceptual loss: {len(self.levels)} levels halve the image {len(self.levels) - 1} "
                f"times: input_shape must be at least {need} on every axis (or lower n_level), got "
                f"{list(input_shape)}"
            )

    def forward(self, recon: T, target: T) -> T:
        net = self._frozen[0]
        ref = net[0][0].weight
        if ref.device != recon.device or ref.dtype != recon.dtype:
            net.to(device=recon.device, dtype=recon.dtype)
        x, y = recon, target
        if x.shape[1] == 1 and self.in_channels == 3:
            x, y = x.expand(-1, 3, *x.shape[2:]), y.expand(-1, 3, *y.shape[2:])
        if self.mean is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            mean, std = self.mean.to(x).reshape(shape), self.std.to(x).reshape(shape)
            x, y = (x - mean) / std, (y - mean) / std
        pool = F.max_pool3d if self.is3D else F.max_pool2d
        total = recon.new_zeros(recon.shape[0])
        for i, level in enumerate(net):
            if i:
                x, y = pool(x, 2), pool(y, 2)
            x, y = level(x), level(y)
            d = x - y
            err = d.abs() if self.feature_loss == "l1" else d**2
            total = total + err.reshape(err.shape[0], -1).mean(dim=1)
        n = recon[0].numel()
        return (total / n).reshape(-1, *([1] * (recon.dim() - 1))).expand_as(recon)


def _read_feature_net(path: Path) -> tuple[list[list[nn.Module]], T | None, T | None]:
    """The conv levels of a perceptual network file (see :class:`Perceptual`), every problem one line."""
    if not path.is_file():
        raise ValueError(f"perceptual loss: network file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
                state = state["state_dict"]
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is the same user error
        why = " ".join(str(exc).split())[:200]
        raise ValueError(f"perceptual loss: cannot read network file {path}: {why}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"perceptual loss: {path} must hold a mapping of tensor names to tensors")
    convs: dict[tuple[int, int], dict[str, T]] = {}
    extra = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() and parts[2] in ("weight", "bias"):
            convs.setdefault((int(parts[0]), int(parts[1])), {})[parts[2]] = value
        elif key in ("mean", "std"):
            extra[key] = value.float().flatten()
        else:
            raise ValueError(
                f"perceptual loss: {path}: unexpected tensor {key!r} (expected '<level>.<layer>.weight' "
                "/ '.bias', 'mean', 'std')"
            )
    if not convs:
        raise ValueError(f"perceptual loss: {path} holds no '<level>.<layer>.weight' convolution kernels")
    levels: list[list[nn.Module]] = []
    prev_out = None
    for lv in sorted({lv for lv, _ in convs}):
        if lv != len(levels):
            raise ValueError(f"perceptual loss: {path}: levels must be numbered 0, 1, ... without gaps")
        layers: list[nn.Module] = []
        for (_, _), p in sorted((k, v) for k, v in convs.items() if k[0] == lv):
            w = p.get("weight")
            if w is None or w.dim() not in (4, 5) or len(set(w.shape[2:])) != 1 or w.shape[2] % 2 == 0:
                raise ValueError(
                    f"perceptual loss: {path}: level {lv} needs odd square convolution kernels "
                    "(out, in, k, k) or (out, in, k, k, k)"
                )
            if prev_out is not None and w.shape[1] != prev_out:
                raise ValueError(f"perceptual loss: {path}: level {lv} takes {w.shape[1]} channels after {prev_out}")
            conv_cls = nn.Conv3d if w.dim() == 5 else nn.Conv2d
            conv = conv_cls(w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2, bias="bias" in p)
            with torch.no_grad():
                conv.weight.copy_(w)
                if "bias" in p:
                    conv.bias.copy_(p["bias"])
            layers += [conv, nn.ReLU()]
            prev_out = w.shape[0]
        levels.append(layers)
    if ("mean" in extra) != ("std" in extra):
        raise ValueError(f"perceptual loss: {path}: give both 'mean' and 'std', or neither")
    return levels, extra.get("mean"), extra.get("std")


BUILTIN_CUSTOM_LOSSES: dict[str, type] = {"masked_mse": MaskedMSE, "masked_l1": MaskedL1, "masked": MaskedRecon}
# reconstruction_loss names with their own class here (custom_loss_params are their keyword arguments)
NAMED_LOSSES: dict[str, type] = {
    "l1": L1,
    "bce": BCE,
    "smooth_l1": SmoothL1,
    "ssim": SSIM,
    "ms_ssim": MSSSIM,
    "masked": MaskedRecon,
    "perceptual": Perceptual,
}


class ElementwiseLoss(nn.Module):
    """Calls a user/built-in loss with or without the mask and checks it is element-wise.

    A loss with ``needs_image = True`` gets (N, C, [S,] X, Y) images rebuilt from pythae's view with the
    per-sample shape the ReconTarget carries; its element-wise result is put back into pythae's view.
    """

    def __init__(self, loss: Callable, name: str):
        super().__init__()
        self.loss, self.name = loss, name
        self.needs_image = bool(getattr(loss, "needs_image", False))
        fn = loss.forward if isinstance(loss, nn.Module) else loss
        try:
            self.takes_mask = "mask" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            self.takes_mask = False

    def forward(self, recon: T, target: T, mask: T | None = None, sample_shape: tuple[int, ...] | None = None) -> T:
        view = recon.shape
        if self.needs_image:
            n = math.prod(sample_shape) if sample_shape else 0
            if not n or recon.numel() % n or recon.shape != target.shape:
                raise ValueError(
                    f"reconstruction loss {self.name} compares whole images of shape {sample_shape}; "
                    f"got views of shape {tuple(recon.shape)} and {tuple(target.shape)}"
                )
            recon, target = recon.reshape(-1, *sample_shape), target.reshape(-1, *sample_shape)
            mask = None if mask is None else mask.reshape(-1, *sample_shape)
        out = self.loss(recon, target, mask=mask) if self.takes_mask else self.loss(recon, target)
        if (
            not isinstance(out, torch.Tensor)
            or out.shape != torch.broadcast_shapes(out.shape, recon.shape)
            or out.numel() != recon.numel()
        ):
            shape = getattr(out, "shape", type(out).__name__)
            raise ValueError(
                f"reconstruction loss {self.name} must return an element-wise loss of shape "
                f"{tuple(recon.shape)}, got {shape} (for torch.nn losses use reduction='none')"
            )
        return out.reshape(view) if self.needs_image else out


def _import(path: str) -> Any:
    module, sep, name = path.replace(":", ".").rpartition(".")
    if not sep:
        raise ValueError(
            f"custom_loss_class {path!r} is neither a built-in "
            f"({', '.join(BUILTIN_CUSTOM_LOSSES)}) nor a dotted path 'package.module.Class'"
        )
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import custom_loss_class {path!r}: {exc}") from None


def _build(cls: type, params: Mapping[str, Any], what: str):
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"cannot build {what} with custom_loss_params {dict(params)}: {exc}") from None


def build_elementwise_loss(
    kind: str, custom_class: str | type | None = None, custom_params: Mapping[str, Any] | None = None
) -> ElementwiseLoss:
    """The element-wise loss for ``kind``: a name of :data:`NAMED_LOSSES` (``custom_params`` are its keyword
    arguments) or 'custom' (``custom_class`` built with ``custom_params``)."""
    params = dict(custom_params or {})
    if kind in NAMED_LOSSES:
        return ElementwiseLoss(_build(NAMED_LOSSES[kind], params, f"reconstruction_loss {kind}"), kind)
    if kind != "custom":
        raise ValueError(f"no element-wise loss for reconstruction_loss={kind!r}")
    if custom_class is None:
        raise ValueError(
            "reconstruction_loss='custom' needs custom_loss_class "
            f"(a built-in: {', '.join(BUILTIN_CUSTOM_LOSSES)}, or 'package.module.Class')"
        )
    cls = custom_class
    if isinstance(cls, str):
        cls = BUILTIN_CUSTOM_LOSSES.get(cls) or _import(cls)
    if isinstance(cls, type):
        try:
            if "reduction" in inspect.signature(cls).parameters and "reduction" not in params:
                params["reduction"] = "none"
        except (TypeError, ValueError):
            pass
        loss = _build(cls, params, f"custom loss {cls.__name__}")
        name = cls.__name__
    elif callable(cls):
        if params:
            raise ValueError("custom_loss_params need a class, not a function, as custom_loss_class")
        loss, name = cls, getattr(cls, "__name__", repr(cls))
    else:
        raise ValueError(f"custom_loss_class must be a class, a function or a name, got {cls!r}")
    return ElementwiseLoss(loss, name)


# Operations that only move/select elements: the result is still "the data", so it stays a
# ReconTarget and the mask goes through the same operation.
_SHAPE_OPS = {
    T.reshape,
    T.view,
    T.flatten,
    T.unsqueeze,
    T.squeeze,
    T.repeat,
    T.expand,
    T.__getitem__,
    T.contiguous,
    T.clone,
    T.reshape_as,
    T.view_as,
    T.permute,
    T.transpose,
    T.index_select,
    T.repeat_interleave,
    T.detach,
    T.expand_as,
    torch.reshape,
    torch.flatten,
    torch.unsqueeze,
    torch.squeeze,
    torch.permute,
    torch.transpose,
    torch.index_select,
    torch.repeat_interleave,
}
_RECON_LOSSES = {F.mse_loss, F.binary_cross_entropy, F.l1_loss}


class ReconTarget(torch.Tensor):
    """The data tensor given to pythae; pythae's recon loss calls on it use ``recon_loss`` (see module doc)."""

    recon_loss: ElementwiseLoss
    mask: T | None
    sample_shape: tuple[int, ...]  # (C, [S,] X, Y) of one sample of the wrapped data, kept through every view

    @staticmethod
    def wrap(x: T, recon_loss: ElementwiseLoss, mask: T | None = None) -> ReconTarget:
        if mask is not None:
            try:
                mask = mask.to(dtype=x.dtype, device=x.device).expand_as(x)
            except RuntimeError:
                raise ValueError(
                    f"mask of shape {tuple(mask.shape)} does not broadcast to the data shape {tuple(x.shape)}"
                ) from None
        return ReconTarget._make(x, recon_loss, mask, tuple(x.shape[1:]))

    @staticmethod
    def _make(x: T, recon_loss: ElementwiseLoss, mask: T | None, sample_shape: tuple[int, ...]) -> ReconTarget:
        with torch._C.DisableTorchFunctionSubclass():
            out = x.as_subclass(ReconTarget)
        out.recon_loss, out.mask, out.sample_shape = recon_loss, mask, sample_shape
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RECON_LOSSES:
            return _recon_term(func, args, kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
            src = args[0] if args else None
            if func in _SHAPE_OPS and isinstance(src, ReconTarget) and isinstance(out, torch.Tensor) and out is not src:
                mask = None if src.mask is None else func(src.mask, *args[1:], **kwargs)
                return ReconTarget._make(out, src.recon_loss, mask, src.sample_shape)
        return out  # plain tensors (in-place ops return the ReconTarget itself)


def _recon_term(func, args, kwargs):
    kwargs = dict(kwargs)
    args = list(args)
    pred = args.pop(0) if args else kwargs.pop("input")
    target = args.pop(0) if args else kwargs.pop("target")
    reduction = kwargs.get("reduction", "mean")
    if isinstance(target, ReconTarget) == isinstance(pred, ReconTarget):  # not (recon, data): leave it alone
        with torch._C.DisableTorchFunctionSubclass():
            return func(pred, target, *args, **kwargs)
    if isinstance(pred, ReconTarget):  # pythae passes (recon, data), but be symmetric
        pred, target = target, pred
    with torch._C.DisableTorchFunctionSubclass():
        plain = target.as_subclass(torch.Tensor)
        out = target.recon_loss(pred, plain, target.mask, target.sample_shape)
        if reduction == "none":
            return out
        if reduction == "sum":
            return out.sum()
        return out.mean()
