"""Raw input pixels behind each latent row, for the PCA-of-pixels baseline.

Pixels come from the input data file of the data contract
(``data.h5/<patientID>/<fieldID>/<instanceID>/<key>``, 5D C x T x S x X x Y).
A latent row (c, t, s) indexes that array; an axis along which the latents of
a key never go beyond index 0 while the data has several entries (e.g. one
latent per whole cine) is taken whole, so the pixel vector is what the encoder
saw. Complex data is reduced to its magnitude. The latents' (c, t, s) are logical
axes: with ``DS_channel_dim``/``DS_slice_dim`` swaps (e.g. time as slices) the
stored array is transposed the same way first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from Engineering.data.layout import KEY_COLUMNS, SampleKey
from Engineering.data.transforms import axis_perm
from Engineering.errors import UserError
from Engineering.io.read_budget import check_bytes, check_read, nbytes


def read_pixels(path: str | Path, rows: pd.DataFrame, channel_dim: int = 0, slice_dim: int = 2) -> np.ndarray:
    """(len(rows), n_pixels) float32 pixel vectors for the sample rows (flat-table ID columns); the axis
    swaps are those of the run's dataNpath JSON (json§DS_channel_dim / DS_slice_dim)."""
    perm = axis_perm(channel_dim, slice_dim)
    import h5py  # only needed when a pixel file is given

    path = Path(path)
    if not path.is_file():
        raise UserError(f"pixels file not found: {path}")
    if path.suffix.lower() not in (".h5", ".hdf5"):
        raise UserError(f"pixels must be an HDF5 data file in the 5D data contract, got {path.name}")
    rows = rows.reset_index(drop=True)  # index = output position
    out: list[np.ndarray | None] = [None] * len(rows)
    total = 0
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"cannot read pixels {path}: {exc}") from exc
    with h5:
        for item, part in rows.groupby(list(KEY_COLUMNS), sort=False):
            name = SampleKey(*map(str, item)).path
            if name not in h5:
                raise UserError(f"pixels file {path.name} has no dataset {name}")
            ds = h5[name]
            if ds.ndim != 5:
                raise UserError(f"{path.name}:{name} has shape {ds.shape}; expected C x T x S x X x Y")
            check_read(ds.shape, ds.dtype, f"pixels {path.name}:{name}", copies=2)  # the read and its float32 rows
            arr = np.transpose(ds[()], perm)
            whole = [bool(arr.shape[a] > 1 and (part[ax] == 0).all()) for a, ax in enumerate("cts")]
            # every row's float32 vector is kept, and np.stack copies them all once more
            per_row = [n for n, w in zip(arr.shape, whole) if w] + list(arr.shape[3:])
            total += 2 * len(part) * nbytes(per_row, np.float32)
            check_bytes(total, f"the pixel vectors of {len(rows)} latent rows from {path.name} (up to {name})")
            for pos, (c, t, s) in zip(part.index, part[["c", "t", "s"]].to_numpy()):
                index = tuple(slice(None) if w else int(i) for w, i in zip(whole, (c, t, s)))
                try:
                    vec = arr[index]
                except IndexError as exc:
                    raise UserError(
                        f"{path.name}:{name} has shape {arr.shape} (axes swapped as json§DS_channel_dim="
                        f"{channel_dim}, DS_slice_dim={slice_dim}); latent row c={c} t={t} s={s} "
                        "is outside it"
                    ) from exc
                out[pos] = (
                    np.abs(vec).ravel().astype(np.float32) if np.iscomplexobj(vec) else vec.ravel().astype(np.float32)
                )
    sizes = {v.size for v in out}
    if len(sizes) > 1:
        raise UserError(
            f"pixel vectors differ in size ({sorted(sizes)[:5]}); the PCA baseline needs inputs of one shape"
        )
    return np.stack(out)
