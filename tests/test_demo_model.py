"""The shipped demo model (examples/demo_model/, written by `make demo-model`): an export as
Executors/export_hf.py writes it (its files, its config keys, plain safetensors weights that fit the DiffAE the
config describes, a size bound), loaded by the API, whose latents of demo data are the table Executors/embed.py
writes. Fast (a few seconds): a few patients of the bundled demo cohort; the whole cohort through the command, timed,
is benchmarks/bench_demo_model.py."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from Engineering.config.loader import resolve
from Engineering.data.demo import ensure_named_demo
from Engineering.Engines import registry
from Engineering.io.export import EXPORT_FILES
from Engineering.io.hub import FORMAT, export_config
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

DEMO_MODEL = REPO / "examples" / "demo_model"
MAX_BYTES = 5 * 2**20  # "a few MB": the repository ships it
KEYS = ["patientID", "fieldID", "instanceID", "key", "c", "t", "s"]


def test_the_shipped_files_are_an_export_of_a_small_diffae():
    assert sorted(p.name for p in DEMO_MODEL.iterdir()) == sorted(EXPORT_FILES)
    config = json.loads((DEMO_MODEL / "config.json").read_text())
    # the keys the exporter writes (export_config of a DiffAE run) and the checkpoint it came from
    expected = set(export_config(resolve([], registry.get("diffAE")).cfg, 1, "ema")) | {"source_checkpoint"}
    assert set(config) == expected
    assert config["format"] == FORMAT and config["drive"] == "DiffAE" and config["weights"] == "ema"
    assert config["is3D"] is False and config["in_channels"] == 1 and config["axes"] == "C x X x Y"
    size = (DEMO_MODEL / "model.safetensors").stat().st_size
    assert size <= MAX_BYTES, f"the demo model is {size / 2**20:.1f} MB"
    # plain tensors (safetensors: nothing is unpickled), the exporter's metadata, finite float32 weights
    with safe_open(str(DEMO_MODEL / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "imlatent", "drive": "DiffAE"}
    weights = load_file(str(DEMO_MODEL / "model.safetensors"))
    floats = [w for w in weights.values() if w.is_floating_point()]  # (BatchNorm's counter is an integer)
    assert floats and all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in floats)
    # ... and exactly the parameters and buffers of the DiffAE that config.json describes
    from Engineering.Engines.WarpDrives.DiffAE.network import DiffAE, DiffAEConfig

    arch = {k: v for k, v in config["architecture"].items() if k in DiffAEConfig.__dataclass_fields__}
    net = DiffAE(
        DiffAEConfig(
            **arch, is3D=False, in_channels=1, input_shape=tuple(config["input_shape"]), latent_dim=config["latent_dim"]
        )
    )
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {k: tuple(v.shape) for k, v in weights.items()}
    card = (DEMO_MODEL / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: imlatent") and "make demo-model" in card


def _demo_subset(tmp_path, n_patients: int = 3):
    """The first patients of the bundled demo cohort, as their own HDF5 file (same groups, same datasets)."""
    out = tmp_path / "demo_subset.h5"
    with h5py.File(ensure_named_demo("@demo") / "data.h5", "r") as src, h5py.File(out, "w") as dst:
        for pid in sorted(src)[:n_patients]:
            src.copy(src[pid], dst, name=pid)
    return out


def _embed_cli(*args: str) -> int:
    """Executors/embed.py in-process (a subprocess costs seconds of imports)."""
    from Engineering.errors import run_cli

    spec = importlib.util.spec_from_file_location("embed_cli", REPO / "Executors" / "embed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = run_cli(module.main, list(args))
    assert code == 0, err.getvalue()
    return code


def test_the_api_embeds_demo_data_as_embed_py_writes_it(tmp_path):
    from Engineering import api

    data = _demo_subset(tmp_path)
    model = api.load(str(DEMO_MODEL))
    df = model.embed(data)
    _embed_cli("--model", str(DEMO_MODEL), "--input", str(data), "--out", str(tmp_path / "x.tsv"))
    table = pd.read_csv(tmp_path / "x.tsv", sep="\t", dtype={"patientID": str, "fieldID": str, "instanceID": str})
    z_cols = [c for c in df.columns if c.startswith("Z")]
    assert len(z_cols) == 32 and df["patientID"].nunique() == 3 and len(df) >= 3 * 16  # every frame of 3 patients
    assert list(table.columns) == list(df.columns)
    pd.testing.assert_frame_equal(table[KEYS].astype(str), df[KEYS].astype(str))
    np.testing.assert_allclose(table[z_cols].to_numpy(), df[z_cols].to_numpy(), rtol=0, atol=1e-5)
    z = df[z_cols].to_numpy()
    assert np.isfinite(z).all() and (z.std(axis=0) > 1e-3).all()  # trained latents that tell the frames apart


def test_the_web_page_embeds_demo_data_with_it(tmp_path):
    """What Executors/app.py --model examples/demo_model shows after an HDF5 upload: the API's latents."""
    from Engineering import api, webapp

    data = _demo_subset(tmp_path, n_patients=2)
    model = api.load(str(DEMO_MODEL))
    result = webapp.embed_upload(model, data, tmp_path / "work")
    assert not result.status.startswith("error"), result.status
    expected = model.embed(data)
    pd.testing.assert_frame_equal(
        result.table.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False, atol=1e-5, rtol=0
    )
    assert result.images  # the preprocessed input is shown
