"""The bundled demo cohort: a synthetic cardiac-cine-like phantom in the 5D HDF5 contract.

Each subject is a beating ring (myocardium) around a bright blood pool, seen as
a 2D+time cine ``primary_cine_0`` of shape (1, T, 1, X, Y). Per-patient factors
(cavity radius, wall thickness, ejection fraction, cardiac phase, centre offset,
intensity) are known and written to ``phenotypes.tsv``; per-site acquisition
effects (gain, noise, blur) to ``covariates.tsv`` and the group attributes. It
lets every executor run with no arguments and makes the benchmark meaningful:
the latents should recover the factors and, ideally, not the site.

``@demo_complex`` is a complex-valued variant (the complex models' cohort, ``--complex_mode complex``): each subject
is a stack of short-axis slices of the phantom over the cycle, (1, T, S, X, Y) complex64, whose magnitude is the
phantom and whose phase carries structure of its own: a smooth background ramp (off-resonance, per subject), a
velocity-encoded phase in the blood pool that follows the cycle (peak ``flow_phase`` per subject, a phenotype the
magnitude does not show) and a per-site global phase offset (a confounder). 2D models read its slices, 3D models
its volumes.

``@demo_mc`` is its multi-channel variant, a stand-in for a stained microscopy plate: three channels per image
(the whole phantom, the ring alone as a "membrane" stain, the pool alone as a "nucleus" stain), each with its own
per-site gain, so that the sites differ in stain balance as plates and experiments do. Seed 000's IID pipeline
(main_stylegan -> main_restyle -> main_iid) runs on it with the sites as the held-out groups.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

from Engineering.io.atomic import replace_dir, staging_dir

FIELD_ID = "20208"  # UK Biobank's long-axis cardiac cine field, as in the ancestor's data
KEY = "primary_cine_0"
SITES = (  # (name, gain, noise sd, blur sigma): deliberately different scanners
    ("siteA", 1.00, 0.02, 0.0),
    ("siteB", 1.25, 0.05, 0.6),
    ("siteC", 0.80, 0.03, 1.2),
)
# per-site gain of each extra channel of the multi-channel demo (channel 0 keeps the site's gain alone)
STAIN_GAINS = {"siteA": (1.0, 1.0), "siteB": (0.7, 1.3), "siteC": (1.4, 0.75)}
CHANNEL_NAMES = ("phantom", "membrane", "nucleus")


@dataclass(frozen=True)
class DemoSpec:
    n_patients: int = 64
    n_frames: int = 16
    size: int = 64
    seed: int = 1701
    n_folds: int = 3
    channels: int = 1  # 1: the cardiac phantom; 2 or 3: add the stain channels (CHANNEL_NAMES)

    def __post_init__(self) -> None:
        if not 1 <= self.channels <= len(CHANNEL_NAMES):
            raise ValueError(f"demo channels must be 1 to {len(CHANNEL_NAMES)}, got {self.channels}")


def _write_cells(out_dir: Path) -> Path:
    from Engineering.data.cells import write_cells

    return write_cells(out_dir)


# the named demo cohorts a dataNpath JSON can use as datadir (or as a path prefix): cache folder and writer;
# @cells is the synthetic 3D cell cohort of the rotation-invariant and point-cloud models (data/cells.py)
DEMOS = {
    "@demo": ("demo", lambda out: write_demo(out, DemoSpec())),
    "@demo_mc": ("demo_mc", lambda out: write_demo(out, DemoSpec(channels=3))),
    "@demo_complex": ("demo_complex", lambda out: write_complex_demo(out, ComplexDemoSpec())),
    "@cells": ("cells_v2", _write_cells),
}  # v2: the outlier column


def default_demo_dir(folder: str = "demo") -> Path:
    """Where a demo cohort is cached: $IMLATENT_CACHE/<folder> or ~/.cache/imlatent/<folder>."""
    root = os.environ.get("IMLATENT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "imlatent")
    return Path(root) / folder


def split_demo_ref(ref: str) -> tuple[str, str] | None:
    """``@demo_mc/x.tsv`` -> ("@demo_mc", "x.tsv"); None if ``ref`` names no demo cohort."""
    head, _, rest = str(ref).partition("/")
    return (head, rest) if head in DEMOS else None


def ensure_named_demo(name: str) -> Path:
    """The folder of the demo cohort ``name`` (a key of DEMOS), written on first use."""
    folder, write = DEMOS[name]
    return _ensure(default_demo_dir(folder), write)


def _ensure(out_dir: Path, write) -> Path:
    """``out_dir``, written by ``write(out_dir)`` on first use (a complete folder or none: the writers stage)."""
    if not (out_dir / "data.h5").exists():
        print(f"Writing the demo dataset to {out_dir} (first use) ...")
        write(out_dir)
    return out_dir


def _render(
    rng_factors: dict, spec: DemoSpec, site, noise_rng: np.random.Generator, stain_rng: np.random.Generator
) -> np.ndarray:
    """One cine (C, T, X, Y) of the ring phantom, float in roughly [0, 1.3]. The stain channels' noise comes from
    its own generator, so the subjects and channel 0 are those of the 1-channel demo."""
    name, gain, noise_sd, blur = site
    yy, xx = np.mgrid[0 : spec.size, 0 : spec.size].astype(np.float32)
    cx = spec.size / 2 + rng_factors["centre_dx"]
    cy = spec.size / 2 + rng_factors["centre_dy"]
    dist = np.hypot(xx - cx, yy - cy)
    r_ed = rng_factors["cavity_radius"]
    r_es = r_ed * np.sqrt(1.0 - rng_factors["ejection_fraction"])  # EF of the 2D cavity area
    frames = []
    for t in range(spec.n_frames):
        # Contraction follows a raised cosine over the cycle, shifted by the patient's phase.
        c = 0.5 * (1 - np.cos(2 * np.pi * t / spec.n_frames + rng_factors["phase"]))
        r_in = r_ed + (r_es - r_ed) * c
        wall = rng_factors["wall_thickness"] * (1 + 0.3 * c)  # the wall thickens as it contracts
        pool = 1.0 / (1.0 + np.exp((dist - r_in) * 2.0))
        ring = 1.0 / (1.0 + np.exp((dist - r_in - wall) * 2.0)) - pool
        amp = rng_factors["intensity"]
        chans = [amp * (pool + 0.45 * ring) + 0.08, amp * ring + 0.05, amp * pool + 0.05][: spec.channels]
        out = []
        for c, img in enumerate(chans):
            if blur:
                img = gaussian_filter(img, blur)
            g = gain * (STAIN_GAINS[name][c - 1] if c else 1.0)
            out.append(img * g + (stain_rng if c else noise_rng).normal(0, noise_sd, img.shape))
        frames.append(out)
    # (T, C, X, Y) -> (C, T, X, Y)
    return np.clip(np.stack(frames).transpose(1, 0, 2, 3), 0, None).astype(np.float32)


def render_phantom(
    factors: dict, site: tuple, rng: np.random.Generator, size: int = 32, n_frames: int = 1
) -> np.ndarray:
    """One (1, T, X, Y) phantom cine from given factors (the keys of a demo patient's) and site (an entry of
    SITES): for cohorts with a planted signal, such as benchmarks/gwas_planted.py."""
    return _render(factors, DemoSpec(n_frames=n_frames, size=size), site, rng, rng)


def _write_staged(out_dir: str | Path, fill) -> Path:
    """``fill(tmp)`` writes a cohort into a staging folder that then replaces ``out_dir`` (a complete folder or
    none)."""
    out_dir = Path(out_dir)
    tmp = staging_dir(out_dir)
    try:
        fill(tmp)
    except BaseException:  # a stop signal or an error mid-write: no half-written staging folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        replace_dir(tmp, out_dir)  # the previous copy stays until the new one is complete
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def write_demo(out_dir: str | Path, spec: DemoSpec = DemoSpec()) -> Path:
    """Write data.h5, phenotypes.tsv, covariates.tsv and folds.csv into ``out_dir`` (atomically, as a folder)."""
    return _write_staged(out_dir, lambda tmp: _fill_demo(tmp, spec))


def _fill_demo(tmp: Path, spec: DemoSpec) -> None:
    rng = np.random.default_rng(spec.seed)
    stain_rng = np.random.default_rng(spec.seed + 2)  # seed + 1 draws the folds
    phenos, covs = [], []
    with h5py.File(tmp / "data.h5", "w") as h5:
        for i in range(spec.n_patients):
            pid = str(1000001 + i)
            site = SITES[i % len(SITES)]
            f = {
                "cavity_radius": rng.uniform(8, 14),
                "wall_thickness": rng.uniform(2.5, 5.0),
                "ejection_fraction": rng.uniform(0.35, 0.70),
                "phase": rng.uniform(0, 2 * np.pi),
                "centre_dx": rng.uniform(-4, 4),
                "centre_dy": rng.uniform(-4, 4),
                "intensity": rng.uniform(0.7, 1.2),
            }
            n_inst = 1 + int(rng.random() < 0.5)
            for inst in range(n_inst):
                iid = str(2 + inst)
                cine = _render(f, spec, site, rng, stain_rng)
                # Stored as int16 like scanner output, scaled to a typical MR range.
                arr = np.round(cine * 1000).astype(np.int16)[:, :, None]  # (C, T, S=1, X, Y)
                grp = h5.create_group(f"{pid}/{FIELD_ID}/{iid}")
                grp.attrs.update(
                    {
                        "patientDICOMID": f"DEMO{pid}",
                        "studyDICOMID": f"1.2.826.{pid}.{iid}",
                        "studyDesc": "CARDIAC CINE (synthetic)",
                        "aet": site[0],
                        "host": f"{site[0]}-mr",
                        "date": "20240101",
                        "n_series": 1,
                    }
                )
                ds = grp.create_dataset(KEY, data=arr, chunks=(spec.channels, 1, 1, spec.size, spec.size))
                ds.attrs.update(
                    {
                        "seriesID": f"{pid}.{iid}.1",
                        "seriesDesc": "CINE_segmented_LAX_4Ch",
                        "DICOMHeader": json.dumps({"Modality": "MR", "Manufacturer": "phantom"}),
                        "channels": json.dumps(list(CHANNEL_NAMES[: spec.channels])),
                        "min_val": float(arr.min()),
                        "max_val": float(arr.max()),
                    }
                )
            phenos.append(
                {
                    "FID": pid,
                    **{k: round(float(v), 5) for k, v in f.items()},
                    "ef_class": "reduced" if f["ejection_fraction"] < 0.5 else "normal",
                }
            )
            if spec.channels > 1:  # a label that one frame shows (EF needs two): the IID pipeline's default
                phenos[-1]["wall_class"] = "thick" if f["wall_thickness"] >= 3.75 else "thin"
            covs.append(
                {
                    "FID": pid,
                    "site": site[0],
                    "gain": site[1],
                    "noise": site[2],
                    "blur": site[3],
                    "n_instances": n_inst,
                    **{f"gain_{CHANNEL_NAMES[c]}": STAIN_GAINS[site[0]][c - 1] for c in range(1, spec.channels)},
                }
            )
    pd.DataFrame(phenos).to_csv(tmp / "phenotypes.tsv", sep="\t", index=False)
    pd.DataFrame(covs).to_csv(tmp / "covariates.tsv", sep="\t", index=False)
    _write_folds(tmp / "folds.csv", [p["FID"] for p in phenos], spec)


COMPLEX_KEY = "primary_flow_0"  # a phase-contrast-like series: the phase carries flow
SITE_PHASE = {"siteA": 0.0, "siteB": 0.5, "siteC": -0.4}  # per-site global phase offset (radians): a confounder


@dataclass(frozen=True)
class ComplexDemoSpec:
    """The complex demo: n_slices short-axis slices of n_frames frames, size x size, complex64."""

    n_patients: int = 24
    n_frames: int = 4
    n_slices: int = 8
    size: int = 32
    seed: int = 1701
    n_folds: int = 3


def render_complex(f: dict, spec: ComplexDemoSpec, site: tuple, rng: np.random.Generator) -> np.ndarray:
    """One complex series (1, T, S, X, Y): magnitude = the ring phantom (the cavity narrowing towards the apex),
    phase = background ramp + pool velocity over the cycle + site offset; complex Gaussian noise of the site's sd."""
    name, gain, noise_sd, blur = site
    yy, xx = np.mgrid[0 : spec.size, 0 : spec.size].astype(np.float32)
    cx, cy = spec.size / 2 + f["centre_dx"], spec.size / 2 + f["centre_dy"]
    dist = np.hypot(xx - cx, yy - cy)
    ramp = 2 * np.pi * (f["ramp_x"] * (xx - cx) + f["ramp_y"] * (yy - cy)) / spec.size
    out = np.zeros((1, spec.n_frames, spec.n_slices, spec.size, spec.size), np.complex64)
    for t in range(spec.n_frames):
        cycle = 2 * np.pi * t / spec.n_frames + f["phase"]
        c = 0.5 * (1 - np.cos(cycle))
        for s in range(spec.n_slices):
            taper = 1.0 - 0.45 * s / max(1, spec.n_slices - 1)  # base to apex
            r_ed = f["cavity_radius"] * taper
            r_in = r_ed + (r_ed * np.sqrt(1.0 - f["ejection_fraction"]) - r_ed) * c
            wall = f["wall_thickness"] * (1 + 0.3 * c)
            pool = 1.0 / (1.0 + np.exp((dist - r_in) * 2.0))
            ring = 1.0 / (1.0 + np.exp((dist - r_in - wall) * 2.0)) - pool
            mag = f["intensity"] * (pool + 0.45 * ring) + 0.08
            if blur:
                mag = gaussian_filter(mag, blur)
            phase = ramp + f["flow_phase"] * pool * np.sin(cycle) + SITE_PHASE[name]
            noise = rng.normal(0, noise_sd, (2, spec.size, spec.size))
            out[0, t, s] = gain * mag * np.exp(1j * phase) + noise[0] + 1j * noise[1]
    return out


def write_complex_demo(out_dir: str | Path, spec: ComplexDemoSpec = ComplexDemoSpec()) -> Path:
    """The complex demo cohort (data.h5 with complex64 series, phenotypes.tsv, covariates.tsv, folds.csv)."""
    return _write_staged(out_dir, lambda tmp: _fill_complex_demo(tmp, spec))


def _fill_complex_demo(tmp: Path, spec: ComplexDemoSpec) -> None:
    rng = np.random.default_rng(spec.seed)
    phenos, covs = [], []
    with h5py.File(tmp / "data.h5", "w") as h5:
        for i in range(spec.n_patients):
            pid, site = str(1000001 + i), SITES[i % len(SITES)]
            f = {
                "cavity_radius": rng.uniform(6, 10),
                "wall_thickness": rng.uniform(2.0, 3.5),
                "ejection_fraction": rng.uniform(0.35, 0.70),
                "phase": rng.uniform(0, 2 * np.pi),
                "centre_dx": rng.uniform(-2, 2),
                "centre_dy": rng.uniform(-2, 2),
                "intensity": rng.uniform(0.7, 1.2),
                "flow_phase": rng.uniform(0.3, 0.9) * np.pi,  # peak velocity-encoded phase in the pool
                "ramp_x": rng.uniform(-0.5, 0.5),
                "ramp_y": rng.uniform(-0.5, 0.5),
            }  # cycles across the field
            arr = render_complex(f, spec, site, rng)
            grp = h5.create_group(f"{pid}/{FIELD_ID}/2")
            grp.attrs.update(
                {
                    "patientDICOMID": f"DEMO{pid}",
                    "studyDICOMID": f"1.2.826.{pid}.2",
                    "studyDesc": "CARDIAC FLOW (synthetic, complex)",
                    "aet": site[0],
                    "host": f"{site[0]}-mr",
                    "date": "20240101",
                    "n_series": 1,
                }
            )
            ds = grp.create_dataset(COMPLEX_KEY, data=arr, chunks=(1, 1, spec.n_slices, spec.size, spec.size))
            mag = np.abs(arr)
            ds.attrs.update(
                {
                    "seriesID": f"{pid}.2.1",
                    "seriesDesc": "FLOW_SAX_stack (complex)",
                    "DICOMHeader": json.dumps({"Modality": "MR", "Manufacturer": "phantom"}),
                    # the data contract: min/max of the magnitude for complex data
                    "min_val": float(mag.min()),
                    "max_val": float(mag.max()),
                }
            )
            phenos.append({"FID": pid, **{k: round(float(v), 5) for k, v in f.items()}})
            covs.append(
                {
                    "FID": pid,
                    "site": site[0],
                    "gain": site[1],
                    "noise": site[2],
                    "blur": site[3],
                    "phase_offset": SITE_PHASE[site[0]],
                }
            )
    pd.DataFrame(phenos).to_csv(tmp / "phenotypes.tsv", sep="\t", index=False)
    pd.DataFrame(covs).to_csv(tmp / "covariates.tsv", sep="\t", index=False)
    _write_folds(tmp / "folds.csv", [p["FID"] for p in phenos], spec)


def _write_folds(path: Path, pids: list[str], spec: DemoSpec | ComplexDemoSpec) -> None:
    """k folds with disjoint test sets; validation is a seeded 15% of the rest."""
    rng = np.random.default_rng(spec.seed + 1)
    order = [str(p) for p in rng.permutation(pids)]
    rows = []
    for k in range(spec.n_folds):
        test = order[k :: spec.n_folds]
        rest = [p for p in order if p not in test]
        n_val = max(1, int(round(0.15 * len(rest))))
        rows.append({"train": str(rest[n_val:]), "val": str(rest[:n_val]), "test": str(test)})
    pd.DataFrame(rows).to_csv(path, index=False)


def ensure_demo(out_dir: str | Path | None = None, spec: DemoSpec = DemoSpec()) -> Path:
    """The demo folder, written on first use (a complete folder or none: see write_demo)."""
    return _ensure(Path(out_dir) if out_dir else default_demo_dir(), lambda out: write_demo(out, spec))
