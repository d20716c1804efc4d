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
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Dict, Mapping, Optional, Union

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


class MaskedMSE(nn.Module):
    """mask * (recon - target)^2: only voxels inside the mask count (a mask is required).

    The mask comes from the batch (``mask_key`` of the drive config, the data mask of
    ``data_mask_mode`` 2); 0/1 or soft weights, broadcastable to the image.
    """

    def forward(self, recon: T, target: T, mask: Optional[T] = None) -> T:
        if mask is None:
            raise ValueError(f"{type(self).__name__} needs a mask in the batch (see mask_key)")
        return mask * (recon - target) ** 2


class MaskedL1(nn.Module):
    """mask * |recon - target| (a mask is required)."""

    def forward(self, recon: T, target: T, mask: Optional[T] = None) -> T:
        if mask is None:
            raise ValueError(f"{type(self).__name__} needs a mask in the batch (see mask_key)")
        return mask * (recon - target).abs()


BUILTIN_CUSTOM_LOSSES: Dict[str, type] = {"masked_mse": MaskedMSE, "masked_l1": MaskedL1}


class ElementwiseLoss(nn.Module):
    """Calls a user/built-in loss with or without the mask and checks it is element-wise."""

    def __init__(self, loss: Callable, name: str):
        super().__init__()
        self.loss, self.name = loss, name
        fn = loss.forward if isinstance(loss, nn.Module) else loss
        try:
            self.takes_mask = "mask" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            self.takes_mask = False

    def forward(self, recon: T, target: T, mask: Optional[T] = None) -> T:
        out = self.loss(recon, target, mask=mask) if self.takes_mask else self.loss(recon, target)
        if not isinstance(out, torch.Tensor) or out.shape != torch.broadcast_shapes(out.shape, recon.shape) \
                or out.numel() != recon.numel():
            shape = getattr(out, "shape", type(out).__name__)
            raise ValueError(f"reconstruction loss {self.name} must return an element-wise loss of shape "
                             f"{tuple(recon.shape)}, got {shape} (for torch.nn losses use reduction='none')")
        return out


def _import(path: str) -> Any:
    module, sep, name = path.replace(":", ".").rpartition(".")
    if not sep:
        raise ValueError(f"custom_loss_class {path!r} is neither a built-in "
                         f"({', '.join(BUILTIN_CUSTOM_LOSSES)}) nor a dotted path 'package.module.Class'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import custom_loss_class {path!r}: {exc}") from None


def build_elementwise_loss(kind: str, custom_class: Union[str, type, None] = None,
                           custom_params: Optional[Mapping[str, Any]] = None) -> ElementwiseLoss:
    """The element-wise loss for ``kind`` in {'l1', 'bce', 'custom'} ('custom' uses the class + params)."""
    if kind == "l1":
        return ElementwiseLoss(L1(), "l1")
    if kind == "bce":
        return ElementwiseLoss(BCE(), "bce")
    if kind != "custom":
        raise ValueError(f"no element-wise loss for reconstruction_loss={kind!r}")
    if custom_class is None:
        raise ValueError("reconstruction_loss='custom' needs custom_loss_class "
                         f"(a built-in: {', '.join(BUILTIN_CUSTOM_LOSSES)}, or 'package.module.Class')")
    cls = custom_class
    if isinstance(cls, str):
        cls = BUILTIN_CUSTOM_LOSSES.get(cls) or _import(cls)
    params = dict(custom_params or {})
    if isinstance(cls, type):
        try:
            if "reduction" in inspect.signature(cls).parameters and "reduction" not in params:
                params["reduction"] = "none"
        except (TypeError, ValueError):
            pass
        try:
            loss = cls(**params)
        except TypeError as exc:
            raise ValueError(f"cannot build custom loss {cls.__name__} with custom_loss_params {params}: {exc}") from None
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
    T.reshape, T.view, T.flatten, T.unsqueeze, T.squeeze, T.repeat, T.expand, T.__getitem__,
    T.contiguous, T.clone, T.reshape_as, T.view_as, T.permute, T.transpose, T.index_select,
    T.repeat_interleave, T.detach, T.expand_as,
    torch.reshape, torch.flatten, torch.unsqueeze, torch.squeeze, torch.permute, torch.transpose,
    torch.index_select, torch.repeat_interleave,
}
_RECON_LOSSES = {F.mse_loss, F.binary_cross_entropy, F.l1_loss}


class ReconTarget(torch.Tensor):
    """The data tensor given to pythae; pythae's recon loss calls on it use ``recon_loss`` (see module doc)."""

    recon_loss: ElementwiseLoss
    mask: Optional[T]

    @staticmethod
    def wrap(x: T, recon_loss: ElementwiseLoss, mask: Optional[T] = None) -> "ReconTarget":
        if mask is not None:
            try:
                mask = mask.to(dtype=x.dtype, device=x.device).expand_as(x)
            except RuntimeError:
                raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the data "
                                 f"shape {tuple(x.shape)}") from None
        return ReconTarget._make(x, recon_loss, mask)

    @staticmethod
    def _make(x: T, recon_loss: ElementwiseLoss, mask: Optional[T]) -> "ReconTarget":
        with torch._C.DisableTorchFunctionSubclass():
            out = x.as_subclass(ReconTarget)
        out.recon_loss, out.mask = recon_loss, mask
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RECON_LOSSES:
            return _recon_term(func, args, kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
            src = args[0] if args else None
            if func in _SHAPE_OPS and isinstance(src, ReconTarget) and isinstance(out, torch.Tensor) \
                    and out is not src:
                mask = None if src.mask is None else func(src.mask, *args[1:], **kwargs)
                return ReconTarget._make(out, src.recon_loss, mask)
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
        out = target.recon_loss(pred, plain, target.mask)
        if reduction == "none":
            return out
        if reduction == "sum":
            return out.sum()
        return out.mean()
