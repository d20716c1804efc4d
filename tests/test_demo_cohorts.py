"""The bundled demo cohorts: @demo (the 1-channel cardiac phantom) and @demo_mc (its 3-channel, stain-like
variant with per-site stain gains, the IID pipeline's default data)."""

from __future__ import annotations

from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd

from Engineering.data.datamodule import data_dir, resolve_data_path
from Engineering.data.demo import CHANNEL_NAMES, KEY, SITES, STAIN_GAINS


def _images(demo):
    out = {}
    with h5py.File(demo / "data.h5") as h5:
        for pid in h5:
            for field in h5[pid]:
                for inst in h5[pid][field]:
                    out[(pid, inst)] = h5[pid][field][inst][KEY][()]
    return out


def test_demo_cohorts_have_their_channels(tiny_demo, tiny_demo_mc):
    one, three = _images(tiny_demo), _images(tiny_demo_mc)
    assert one.keys() == three.keys()  # the same subjects, instances and factors
    for key, arr in one.items():
        assert arr.shape == (1, 4, 1, 32, 32) and three[key].shape == (3, 4, 1, 32, 32)
        np.testing.assert_array_equal(three[key][:1], arr)  # channel 0 is the 1-channel demo's image
    assert (tiny_demo / "folds.csv").read_text() == (tiny_demo_mc / "folds.csv").read_text()
    one_ph, mc_ph = (pd.read_csv(d / "phenotypes.tsv", sep="\t") for d in (tiny_demo, tiny_demo_mc))
    pd.testing.assert_frame_equal(mc_ph.drop(columns="wall_class"), one_ph)  # plus a label one frame shows
    assert (mc_ph["wall_class"] == np.where(mc_ph["wall_thickness"] >= 3.75, "thick", "thin")).all()
    with h5py.File(tiny_demo_mc / "data.h5") as h5:
        pid = next(iter(h5))
        ds = next(iter(next(iter(h5[pid].values())).values()))[KEY]
        assert ds.attrs["channels"] == '["phantom", "membrane", "nucleus"]'
    covs = pd.read_csv(tiny_demo_mc / "covariates.tsv", sep="\t")
    assert {"gain_membrane", "gain_nucleus"} <= set(covs.columns)


def test_sites_differ_in_stain_balance(tiny_demo_mc):
    """Each channel is the phantom's pool and ring in known amounts, so per subject the phantom channel is a
    linear function of the stain channels whose coefficients are 0.45 / membrane gain and 1 / nucleus gain: a
    pixel regression recovers every site's stain gains (the batch effect a classifier should not rely on)."""
    covs = pd.read_csv(tiny_demo_mc / "covariates.tsv", sep="\t", dtype={"FID": str}).set_index("FID")["site"]
    fits = {}
    for (pid, _), arr in _images(tiny_demo_mc).items():
        x = arr.reshape(3, -1).astype(np.float64)
        design = np.stack([x[1], x[2], np.ones_like(x[1])], 1)
        coef = np.linalg.lstsq(design, x[0], rcond=None)[0]
        fits.setdefault(covs[pid], []).append(coef[:2])
    assert set(fits) == {name for name, *_ in SITES}
    for site, coefs in fits.items():
        gm, gn = STAIN_GAINS[site]
        np.testing.assert_allclose(np.median(coefs, 0), [0.45 / gm, 1 / gn], rtol=0.1, err_msg=site)
    assert len(CHANNEL_NAMES) == 3


def test_demo_names_resolve_to_their_own_folders(_isolated_cache):
    mc = data_dir(SimpleNamespace(datadir="@demo_mc"))
    assert mc.name == "demo_mc" and (mc / "data.h5").is_file()
    cfg = SimpleNamespace(paths=SimpleNamespace(datadir="@demo"))
    assert resolve_data_path(cfg, "@demo_mc/covariates.tsv") == mc / "covariates.tsv"
    with h5py.File(mc / "data.h5") as h5:
        pid = next(iter(h5))
        assert next(iter(next(iter(h5[pid].values())).values()))[KEY].shape[0] == 3
