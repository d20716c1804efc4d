"""The output contract of a test/inference run (emb.h5, emb.tsv/parquet, recon.h5, metrics.csv, preview).

emb.h5 mirrors the input layout: patientID/fieldID/instanceID/<key> holds a
float32 array (n_channel, n_time, n_slice, latent_dim) indexed by the sample's
(c, t, s); an axis that is not split has length 1; NaN where not computed.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from Engineering.data.layout import SAMPLE_COLUMNS, SampleInfo
from Engineering.io.atomic import atomic_path


def _attrs(obj, attrs: dict | None) -> None:
    for k, v in (attrs or {}).items():
        obj.attrs[k] = "" if v is None else v


def write_emb_h5(path: str | Path, infos: list[SampleInfo], z: np.ndarray, attrs: dict | None = None) -> None:
    latent = z.shape[1]
    arrays: dict[tuple[str, str], np.ndarray] = {}
    for info, vec in zip(infos, z):
        arr = arrays.get((info.group, info.key))
        if arr is None:
            arr = arrays[(info.group, info.key)] = np.full((info.n_c, info.n_t, info.n_s, latent), np.nan, np.float32)
        arr[info.index] = vec
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        _attrs(h5, {**(attrs or {}), "latent_dim": latent, "axes": "Channel x Time x Slice x Latent"})
        for (group, key), arr in arrays.items():
            h5.require_group(group).create_dataset(key, data=arr)


def emb_table(infos: list[SampleInfo], z: np.ndarray) -> pd.DataFrame:
    ids = pd.DataFrame([i.row() for i in infos], columns=list(SAMPLE_COLUMNS))
    zs = pd.DataFrame(z.astype(np.float32), columns=[f"Z{j}" for j in range(z.shape[1])])
    return pd.concat([ids, zs], axis=1)


def write_emb_tables(out_dir: str | Path, infos: list[SampleInfo], z: np.ndarray) -> None:
    table = emb_table(infos, z)
    with atomic_path(Path(out_dir) / "emb.tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False, chunksize=1024)  # text formatted a block at a time
    with atomic_path(Path(out_dir) / "emb.parquet") as tmp:
        table.to_parquet(tmp, index=False)


def write_recon_h5(
    path: str | Path,
    infos: list[SampleInfo],
    recon: list[np.ndarray],
    inputs: list[np.ndarray],
    attrs: dict | None = None,
    codes: list[np.ndarray | None] | None = None,
    code_name: str = "xT",
) -> None:
    """Reconstructions (original intensity units; complex64 for complex data kept complex, float32 otherwise) per
    sample: <group>/<key>/recon_c{c}_t{t}_s{s}, with the input (``input_...``) and a per-sample map beside them
    (``<code_name>_...``): for DiffAE the stochastic code x_T in the model's normalised units (``xT_...``), for the
    context-encoding VAE its anomaly map (``anomaly_...``)."""
    codes = codes or [None] * len(infos)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        _attrs(h5, attrs)
        for info, rec, inp, code in zip(infos, recon, inputs, codes):
            grp = h5.require_group(f"{info.group}/{info.key}")
            name = (
                f"c{info.c if info.c is not None else 'all'}_t{info.t if info.t is not None else 'all'}"
                f"_s{info.s if info.s is not None else 'all'}"
            )
            grp.create_dataset(f"recon_{name}", data=_stored(rec))
            grp.create_dataset(f"input_{name}", data=_stored(inp))
            if code is not None:
                grp.create_dataset(f"{code_name}_{name}", data=code.astype(np.float32))


def _stored(arr: np.ndarray) -> np.ndarray:
    """float32, or complex64 for complex data kept complex (its reconstructions stay complex)."""
    return arr.astype(np.complex64 if np.iscomplexobj(arr) else np.float32)


def write_table(path: str | Path, df: pd.DataFrame, sep: str = ",") -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep=sep, index=False)


def write_preview(path: str | Path, inputs: list[np.ndarray], recons: list[np.ndarray], titles: list[str]) -> None:
    """A PNG grid: inputs (top) against reconstructions (bottom), first channel, central frame/slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(inputs)
    if n == 0:
        return
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), squeeze=False)
    for j, (inp, rec, title) in enumerate(zip(inputs, recons, titles)):
        for row, img in enumerate((inp, rec)):
            img = img[0]
            while img.ndim > 2:
                img = img[img.shape[0] // 2]
            axes[row, j].imshow(img, cmap="gray")
            axes[row, j].set_axis_off()
        axes[0, j].set_title(title, fontsize=7)
    axes[0, 0].text(-0.1, 0.5, "input", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, "recon", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_sample_grid(path: str | Path, images: np.ndarray, ncol: int = 8) -> None:
    """Generated images (N, C, H, W) as one PNG grid: channel 0 in grey (each image scaled to its own range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, min(n, ncol), figsize=(1.2 * min(n, ncol), 1.2 * nrow), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, img in zip(axes.flat, images):
        ax.imshow(img[0], cmap="gray")
    fig.tight_layout(pad=0.1)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
