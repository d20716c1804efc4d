"""Reconstruction quality per sample and channel (torchmetrics): SSIM, PSNR, NRMSE."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def recon_metrics(target: torch.Tensor, pred: torch.Tensor) -> list[dict]:
    """One row per channel of a single sample (C, *spatial); data range from the target channel."""
    rows = []
    for c in range(target.shape[0]):
        t, p = target[c].float(), pred[c].float()
        rng = float(t.max() - t.min()) or 1.0
        batch = (1, 1) + tuple(t.shape)
        kernel = min(7, *[s if s % 2 else s - 1 for s in t.shape])  # small volumes need a smaller window
        ssim = (
            structural_similarity_index_measure(
                p.reshape(batch), t.reshape(batch), data_range=rng, kernel_size=max(kernel, 3), gaussian_kernel=False
            )
            if min(t.shape) >= 3
            else torch.tensor(float("nan"))
        )
        psnr = peak_signal_noise_ratio(p, t, data_range=rng)
        nrmse = torch.sqrt(torch.mean((p - t) ** 2)) / rng
        rows.append({"channel": c, "SSIM": float(ssim), "PSNR": float(psnr), "NRMSE": float(nrmse)})
    return rows
