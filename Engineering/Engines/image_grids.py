"""TensorBoard image grids: what users of a generative autoencoder look at first (``--tb_image_every N``).

Every N epochs (after the epoch's validation) the callback logs to the run's TensorBoard logger:

- ``images/inputs``: up to 8 samples of the first validation batch (the first training batch of a run without
  validation), on the first rank, beside their reconstructions or the samples;
- ``images/reconstructions``: the engine's reconstructions of those samples (``reconstruct(x, embed(x), ema)``:
  DiffAE's DDIM inversion and rendering, a VAE's decoder, ...), where the family reconstructs;
- ``images/samples``: a generator's images of its fixed latents (``samples(fixed_z)``, the GANs).

One grid per tag, greyscale: a row per channel, a column per sample; a 3D sample shows its middle slice. Inputs
and reconstructions share one display range per channel (the inputs' minimum and maximum), so that they compare;
a generator's samples use the inputs' range too when inputs were seen. A family that neither reconstructs nor
generates logs nothing (its task does not honour the flag, config/honour.py: its runs have no grids). Plain
numpy: torchvision is not a dependency.

The engine runs in evaluation mode without gradients (with them for the engines that need them to evaluate) and
goes back to the mode of each of its modules afterwards.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from Engineering.Engines import registry
from Engineering.Engines.capabilities import Reconstructs

N_IMAGES = 8  # samples per grid (at most the validation batch, which fits in memory)
PAD = 2  # pixels between tiles (white)
FLAG = "tb_image_every"
TAGS = ("images/inputs", "images/reconstructions", "images/samples")


def middle_slice(x: np.ndarray) -> np.ndarray:
    """(B, C, X, Y) from a 2D batch or (B, C, S, X, Y) from a 3D one (its middle slice)."""
    if x.ndim == 5:
        return x[:, :, x.shape[2] // 2]
    if x.ndim != 4:
        raise ValueError(f"an image batch is (B, C, X, Y) or (B, C, S, X, Y), got shape {x.shape}")
    return x


def grid(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(1, H, W) float32 in [0, 1] from a (B, C, X, Y) batch: a row of tiles per channel, a column per sample,
    each channel scaled by its display range [lo[c], hi[c]] (values outside are clipped)."""
    b, c, h, w = x.shape
    out = np.ones((c * (h + PAD) - PAD, b * (w + PAD) - PAD), np.float32)
    for j in range(c):
        span = float(hi[j] - lo[j]) or 1.0
        tiles = np.clip((x[:, j] - lo[j]) / span, 0.0, 1.0)
        for i in range(b):
            out[j * (h + PAD) : j * (h + PAD) + h, i * (w + PAD) : i * (w + PAD) + w] = tiles[i]
    return out[None]


def display_range(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel minimum and maximum of a (B, C, X, Y) batch (non-finite values ignored)."""
    finite = np.where(np.isfinite(x), x, np.nan)
    lo, hi = np.nanmin(finite, axis=(0, 2, 3)), np.nanmax(finite, axis=(0, 2, 3))
    return np.nan_to_num(lo, nan=0.0), np.nan_to_num(hi, nan=1.0)


def _numpy(x: torch.Tensor) -> np.ndarray:
    x = x.detach()
    return middle_slice((x.abs() if x.is_complex() else x).float().cpu().numpy())  # complex: the magnitude


class ImageGrids(L.Callback):
    """Logs ``TAGS`` to the TensorBoard logger every ``every`` epochs (MainEngine adds it with --tbactive and
    --tb_image_every > 0)."""

    def __init__(self, every: int, n_images: int = N_IMAGES):
        if every < 1:
            raise ValueError(f"ImageGrids every {every}: give a positive epoch count (0 = no callback)")
        self.every, self.n_images = int(every), int(n_images)
        self._inputs: torch.Tensor | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        # on for the tasks that declare the flag honoured (they reconstruct or generate: config/honour.py); the
        # others (ssl, erm, iid, ...) run with TensorBoard's default grids off, as if --tb_image_every 0
        drive = getattr(getattr(getattr(pl_module, "cfg", None), "model", None), "drive", None)
        spec = next((t for t in registry.tasks().values() if t.drive == drive), None)
        self.active = spec is None or spec.honours is None or FLAG in spec.honours

    def _due(self, trainer) -> bool:
        return (
            getattr(self, "active", True)
            and (trainer.current_epoch + 1) % self.every == 0
            and not trainer.sanity_checking
        )

    def _keep(self, batch) -> None:
        x = batch.get("inp") if isinstance(batch, dict) else None
        if isinstance(x, torch.Tensor) and x.ndim in (4, 5):  # images (point clouds have no grid)
            self._inputs = x[: self.n_images].detach()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._inputs = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0 and self._due(trainer) and not getattr(pl_module, "has_val", True):
            self._keep(batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and self._due(trainer):
            self._keep(batch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._due(trainer):
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        # every rank computes (a sharded model runs its forward on all of them); the first one logs
        images = self.images(trainer, pl_module)
        self._inputs = None
        if not trainer.is_global_zero:
            return
        for logger in loggers:
            for tag, image in images.items():
                logger.experiment.add_image(tag, image, global_step=trainer.global_step, dataformats="CHW")

    def images(self, trainer, pl_module) -> dict[str, np.ndarray]:
        """{tag: (1, H, W) grid} of this epoch: inputs and reconstructions and/or samples."""
        out, x = {}, self._inputs
        if x is None and not self._generates(pl_module):  # no images seen (point clouds, latent tables)
            return out
        evaluation = getattr(getattr(pl_module, "cfg", None), "eval", None)
        use_ema = bool(getattr(evaluation, "test_ema", False)) and hasattr(pl_module, "ema_net")
        modes = {m: m.training for m in pl_module.modules()}
        grad = torch.enable_grad() if getattr(pl_module, "needs_grad_in_eval", False) else torch.no_grad()
        pl_module.eval()
        try:
            with grad, trainer.strategy.precision_plugin.forward_context():
                generates = self._generates(pl_module)
                rec = (
                    self._reconstruct(pl_module, x.to(pl_module.device), use_ema)
                    if x is not None and not generates
                    else None
                )
                samples = pl_module.samples(pl_module.fixed_z) if generates else None
        finally:
            for m, training in modes.items():
                m.train(training)
        if rec is None and samples is None:  # a family that neither reconstructs nor generates shows nothing
            return out
        lo = hi = None
        if x is not None:
            inputs = _numpy(x)
            lo, hi = display_range(inputs)
            out["images/inputs"] = grid(inputs, lo, hi)
            if rec is not None:
                out["images/reconstructions"] = grid(_numpy(rec), lo, hi)
        if samples is not None:
            s = _numpy(samples[: self.n_images])
            if lo is None or len(lo) != s.shape[1]:
                lo, hi = display_range(s)
            out["images/samples"] = grid(s, lo, hi)
        return out

    @staticmethod
    def _reconstruct(pl_module, x: torch.Tensor, use_ema: bool) -> torch.Tensor | None:
        if not isinstance(pl_module, Reconstructs):  # a family without a decoder
            return None
        return pl_module.reconstruct(x, pl_module.embed(x, use_ema), use_ema)

    @staticmethod
    def _generates(pl_module) -> bool:
        return callable(getattr(pl_module, "samples", None)) and isinstance(
            getattr(pl_module, "fixed_z", None), torch.Tensor
        )
