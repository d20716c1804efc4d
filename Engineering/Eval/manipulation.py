"""Latent manipulation of a DiffAE: move z_sem along a linear predictor's direction and render.

The method of Preechakul et al. (Diffusion Autoencoders, CVPR 2022, attribute
manipulation): a linear model is trained on standardised z_sem, its weight
vector (normalised to unit length) is the direction of the attribute, and

    z' = mean + std * ((z - mean) / std + scale * w / ||w||)

so ``scale`` is in standard deviations of the standardised latents. The image
is rendered by deterministic DDIM from the subject's *own* stochastic code x_T
(DDIM inversion of the input with its original z_sem), so what changes between
renders is the semantic code only; scale 0 is the autoencoder's reconstruction.

For a categorical target the direction of class k is its logit's weight minus
the mean over classes (softmax is unchanged by a common shift): moving along it
makes class k more likely against the others.

This module takes the network and sampler as arguments and loads nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch

from Engineering.data.layout import KEY_COLUMNS, SAMPLE_COLUMNS, SampleKey
from Engineering.data.transforms import invert_affine
from Engineering.errors import UserError
from Engineering.io.atomic import atomic_path


def parse_scales(text: str) -> list[float]:
    try:
        scales = [float(s) for s in str(text).replace(" ", "").split(",") if s]
    except ValueError:
        raise UserError(f"--scales {text!r}: expected comma-separated numbers such as -2,-1,0,1,2") from None
    if not scales:
        raise UserError("--scales is empty")
    return scales


def unit_direction(weights: np.ndarray, classes: Sequence[str], wanted: str | None) -> tuple[np.ndarray, str]:
    """Unit direction (L,) in standardised latent space from a target's linear weights (width, L), and its label."""
    weights = np.asarray(weights, dtype=np.float64)
    if len(classes):
        cls = wanted if wanted is not None else classes[-1]
        if cls not in classes:
            raise UserError(f"--manipulate: class {cls!r} is not one of {', '.join(classes)}")
        k = list(classes).index(cls)
        w, label = weights[k] - weights.mean(axis=0), f"towards class {cls}"
    else:
        if wanted is not None:
            raise UserError("--manipulate TARGET:CLASS is for categorical targets only")
        w, label = weights[0], "increasing"
    norm = np.linalg.norm(w)
    if not np.isfinite(norm) or norm == 0:
        raise UserError("--manipulate: the linear head's direction for this target is zero")
    return w / norm, label


def shifted_codes(
    z: torch.Tensor, mean: np.ndarray, std: np.ndarray, direction: np.ndarray, scales: Sequence[float]
) -> torch.Tensor:
    """(n, n_scales, L) semantic codes: each z moved by every scale along the unit direction (see module doc)."""
    as_t = {"dtype": z.dtype, "device": z.device}
    mean, std = torch.tensor(np.array(mean), **as_t), torch.tensor(np.array(std), **as_t)
    step = torch.tensor(np.asarray(scales)[:, None] * np.asarray(direction)[None, :], **as_t)  # (S, L)
    return ((z - mean) / std)[:, None, :].add(step[None]) * std + mean


@torch.no_grad()
def render(
    diffusion,
    net,
    x0: torch.Tensor,
    z0: torch.Tensor,
    codes: torch.Tensor,
    t_inv: int,
    t_step: int,
    clip: tuple[float, float] | None = None,
) -> torch.Tensor:
    """(n, n_scales, C, ...) renders from each subject's own x_T (DDIM inversion with its own z_sem).

    All scales of a subject are rendered as one batch (the same x_T, one code each).
    """
    x_T = diffusion.ddim_invert(net, x0, z0, t_inv, clip=clip)  # clipped as the engine inverts (DiffAE)
    n, n_scales = codes.shape[:2]
    x_T = x_T[:, None].expand(n, n_scales, *x_T.shape[1:]).reshape(n * n_scales, *x_T.shape[1:])
    out = diffusion.ddim_sample(net, x_T, codes.reshape(n * n_scales, -1), t_step, clip=clip)
    return out.reshape(n, n_scales, *out.shape[1:])


def _plane(img: np.ndarray) -> np.ndarray:
    """First channel, central slice/frame of any axis before the last two."""
    img = img[0]
    while img.ndim > 2:
        img = img[img.shape[0] // 2]
    return img


def write_strip(path: str | Path, image: np.ndarray, renders: np.ndarray, scales: Sequence[float], title: str) -> None:
    """One PNG row: the input, then the render at every scale, all on the input's grey scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [_plane(image)] + [_plane(r) for r in renders]
    lo, hi = float(panels[0].min()), float(panels[0].max())  # renders compared with the input, not each other
    fig, axes = plt.subplots(1, len(panels), figsize=(1.8 * len(panels), 2.2), squeeze=False)
    for ax, img, name in zip(axes[0], panels, ["input"] + [f"{s:+g}" for s in scales]):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_renders_h5(
    path: str | Path, items: list[dict], scales: Sequence[float], direction: np.ndarray, attrs: dict
) -> None:
    """``<patientID>/<fieldID>/<instanceID>/<key>/{input, renders}``: (C, ...) and (n_scales, C, ...)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update({k: ("" if v is None else v) for k, v in attrs.items()})
        h5.create_dataset("scales", data=np.asarray(scales, dtype=np.float64))
        h5.create_dataset("direction", data=np.asarray(direction, dtype=np.float64))
        for item in items:
            grp = h5.require_group(SampleKey(*(item[k] for k in KEY_COLUMNS)).path)
            grp.attrs.update({k: -1 if item[k] is None else int(item[k]) for k in ("c", "t", "s")})
            grp.create_dataset("input", data=item["input"].astype(np.float32))
            grp.create_dataset("renders", data=item["renders"].astype(np.float32))


@torch.no_grad()
def manipulate(
    net,
    diffusion,
    t_inv: int,
    t_step: int,
    samples: list[dict],
    direction: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    scales: Sequence[float],
    out_dir: str | Path,
    attrs: dict,
    clip: tuple[float, float] | None = None,
) -> Path:
    """Encode, move and render every sample; write one PNG strip per sample and ``renders.h5`` into ``out_dir``.

    ``samples``: dicts with the normalised input ``inp`` (C, ...), its ``affine`` (C, 2) and the IDs
    (patientID, fieldID, instanceID, key, c, t, s). Images are written in original intensity units.
    """
    out_dir = Path(out_dir)
    items = []
    for sample in samples:  # one at a time: rendering holds n_scales images of activations
        x0 = sample["inp"][None].float()
        z0 = net.encode(x0)
        codes = shifted_codes(z0, mean, std, direction, scales)
        renders = render(diffusion, net, x0, z0, codes, t_inv, t_step, clip)[0]
        affine = sample["affine"].float()
        item = {k: sample[k] for k in SAMPLE_COLUMNS}
        item["input"] = invert_affine(x0[0], affine).numpy()
        item["renders"] = invert_affine(renders, affine[None]).numpy()
        items.append(item)
        name = "_".join(str(item[k]) for k in KEY_COLUMNS)
        where = "".join(f" {k}={item[k]}" for k in ("c", "t", "s") if item[k] is not None)
        write_strip(
            out_dir / f"{name}.png",
            item["input"],
            item["renders"],
            scales,
            f"{attrs.get('target', '')} ({attrs.get('direction_label', '')}): {name}{where}",
        )
    h5_path = out_dir / "renders.h5"
    write_renders_h5(h5_path, items, scales, direction, attrs)
    return h5_path
