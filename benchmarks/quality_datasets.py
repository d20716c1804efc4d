"""Real images that ship inside Python packages, written into our 5D HDF5 contract for bench_quality.py.

* ``digits``: scikit-learn's handwritten digits (UCI optdigits, 1797 images of 8x8 grey levels, 10 classes),
  bilinearly upsampled to 64x64 so the demo recipe (``--interp_fact 0.5`` -> 32x32) applies unchanged.
* ``mri_tissue``: 64x64 axial patches (1 mm) of the MNI ICBM152 2009a T1 template that nilearn ships, labelled by
  the tissue at the patch centre from the template's own grey/white-matter probability maps: ``gm`` (p_GM > 0.7),
  ``wm`` (p_WM > 0.9) or ``csf`` (inside the filled brain mask with p_GM + p_WM < 0.1: ventricles and sulci).
  Patches keep the template's intensity scale (min_val/max_val = the volume's range), so ``--norm_type
  minmaxvol`` compares them on one scale, as a radiologist would. One volume would leak between overlapping
  patches, so the split is by axial slab: 4 mm slabs cycle train, train, train, gap, test, gap, so every test
  slice is at least 5 mm from every training slice (validation is 15 % of the training slabs' patches).

Each image is one subject ``<id>/F0/2/primary_img_0`` of shape (1, 1, 1, 64, 64); ``labels.tsv`` holds the class,
``folds.csv`` one stratified train/val/test split, ``dataNpath.json`` the selection. Deterministic from the seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

SIZE = 64
KEY = "primary_img_0"
FIELD = "F0"
DATASETS = ("digits", "mri_tissue")


def _digits(rng: np.random.Generator, n_per_class: int | None):
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.arange(len(d.target))
    if n_per_class:
        idx = np.concatenate([rng.permutation(np.flatnonzero(d.target == c))[:n_per_class] for c in range(10)])
    imgs = np.stack([zoom(d.images[i], SIZE / 8, order=1, mode="nearest", grid_mode=True) for i in idx])
    labels = np.char.add("digit", d.target[idx].astype(str))
    return np.round(np.clip(imgs, 0, 16) * 60).astype(np.int16), labels, 960.0, None


def _mri_tissue(rng: np.random.Generator, n_per_class: int | None):
    import nibabel as nib
    from scipy.ndimage import binary_fill_holes

    try:
        from nilearn.datasets import data as nilearn_data
    except ImportError:
        raise SystemExit("mri_tissue needs nilearn (it ships the MNI152 template): pip install nilearn") from None
    root = Path(nilearn_data.__file__).parent

    def vol(kind: str) -> np.ndarray:
        return np.asarray(
            nib.load(root / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz").dataobj, dtype=np.float32
        )

    t1, gm, wm = vol("t1"), vol("gm") / 255.0, vol("wm") / 255.0
    brain = binary_fill_holes(gm + wm > 0.3)
    h = SIZE // 2
    inner = np.zeros_like(brain)
    inner[h:-h, h:-h, 40:150] = True  # centres whose 64x64 axial patch fits and whose slice shows brain
    classes = {"gm": (gm > 0.7), "wm": (wm > 0.9), "csf": brain & (gm + wm < 0.1)}
    slab = (np.arange(t1.shape[2]) // 4) % 6
    part = {"train": np.isin(slab, (0, 1, 2)), "test": slab == 4}
    n = n_per_class or 600
    imgs, labels, splits = [], [], []
    for split, in_slab in part.items():
        n_split = int(round(n * (0.75 if split == "train" else 0.25)))
        for name, mask in classes.items():
            centres = np.argwhere(mask & inner & in_slab[None, None, :])
            pick = centres[rng.choice(len(centres), size=min(n_split, len(centres)), replace=False)]
            for x, y, z in pick:
                imgs.append(t1[x - h : x + h, y - h : y + h, z])
                labels.append(name)
                splits.append(split)
    order = rng.permutation(len(imgs))
    return (
        np.stack(imgs)[order].astype(np.int16),
        np.asarray(labels)[order],
        float(t1.max()),
        np.asarray(splits)[order],
    )


def write_dataset(
    name: str,
    out_dir: str | Path,
    seed: int = 0,
    n_per_class: int | None = None,
    split: tuple[float, float] = (0.6, 0.1),
) -> Path:
    """Write ``data.h5``, ``labels.tsv``, ``folds.csv`` and ``dataNpath.json`` for dataset ``name`` into out_dir."""
    if name not in DATASETS:
        raise SystemExit(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    imgs, labels, vmax, fixed = (_digits if name == "digits" else _mri_tissue)(rng, n_per_class)
    ids = [str(1000001 + i) for i in range(len(imgs))]
    tmp = out / "data.h5.tmp"
    with h5py.File(tmp, "w") as h5:
        for pid, img in zip(ids, imgs):
            ds = h5.create_group(f"{pid}/{FIELD}/2").create_dataset(KEY, data=img[None, None, None])
            # the range of the volume the image came from (minmaxvol): one intensity scale for every subject
            ds.attrs.update({"min_val": 0.0, "max_val": vmax})
    tmp.replace(out / "data.h5")
    pd.DataFrame({"FID": ids, "label": labels}).to_csv(out / "labels.tsv", sep="\t", index=False)
    # one stratified split: every class in train, val and test in the same proportions (within the dataset's own
    # train/test partition if it has one)
    train, val, test = [], [], []
    for c in np.unique(labels):
        members = [ids[i] for i in rng.permutation(np.flatnonzero(labels == c))]
        if fixed is not None:
            is_test = {ids[i] for i in np.flatnonzero(fixed == "test")}
            rest = [m for m in members if m not in is_test]
            n_va = int(round(0.15 * len(rest)))
            val += rest[:n_va]
            train += rest[n_va:]
            test += [m for m in members if m in is_test]
            continue
        n_tr, n_va = int(round(split[0] * len(members))), int(round(split[1] * len(members)))
        train += members[:n_tr]
        val += members[n_tr : n_tr + n_va]
        test += members[n_tr + n_va :]
    pd.DataFrame([{"train": str(train), "val": str(val), "test": str(test)}]).to_csv(out / "folds.csv", index=False)
    (out / "dataNpath.json").write_text(
        json.dumps(
            {
                "run_prefix": name,
                "datadir": str(out.resolve()),
                "datafile": "data.h5",
                "foldCSV": "folds.csv",
                "save_path": str((out / "runs").resolve()),
                "is_complexDS": False,
                "DS_selected_primaries": ["primary_img"],
                "DS_selected_auxiliaries": [],
                "DS_multi_channel": True,
                "DS_channel_dim": 0,
                "DS_slice_dim": 2,
                "DS_phenotypes": {"path": str((out / "labels.tsv").resolve()), "columns": []},
            },
            indent=1,
        )
    )
    return out
