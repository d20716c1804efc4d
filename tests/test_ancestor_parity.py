"""Ancestor parity end to end: the ancestor's HDF5 layout, its dataNpath JSON unchanged and a checkpoint in the
published cardiac layout give the latents, x_T and reconstructions of the ancestor's documented chain.

The reference here is written from the ancestor's code as documented (ImLatent's dataset reader and
transforms, DiffAE's guided-diffusion sampler), independently of our data layer and sampler:
axis swap (DS_slice_dim 1: time as slices) -> crop-or-pad (pad (d//2, d - d//2) with zeros, crop from
d//2) -> per-sample min-max -> (x - 0.5) / 0.5 -> the EMA encoder. The network itself is our DiffAE, whose
equality with the reference architecture is tested against published reference outputs in
test_diffae_published.py.
"""

from __future__ import annotations

import json
import re
import shutil

import h5py
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from Engineering.Engines import registry
from Engineering.Engines.MainEngine import run
from Engineering.Engines.WarpDrives.DiffAE.network import DiffAE, DiffAEConfig
from tests.conftest import REPO, run_executor

KEY = "primary_LAX_4Ch_transverse_0"
FRAMES, X, Y = 50, 80, 90  # the cine as the ancestor's converter writes it: (1, 50, 1, X, Y) int16
MODEL_SHAPE = (50, 128, 64)  # X is padded 80 -> 128, Y cropped 90 -> 64; attention where the resolution is 16
# inversion + rendering run 40 UNet passes per sample: a shorter, smaller cine and model keep that to seconds
SMALL_FRAMES, SMALL_XY, SMALL_SHAPE = 20, (40, 45), (20, 64, 32)
PATIENTS = ("1000001", "1000002", "1000003")
REPO_ID = "GlastonburyGroup/UKBBLatent_Cardiac_20208_DiffAE3D_L128_S1701"
ANCESTOR_JSON = {  # Configs/UKBB208/dataNpath_F20208_time2slc_4ChTransverse_Crop128.json of the ancestor
    "run_prefix": "F20208_heart_1Ses_time2slc_MskCrop128",
    "datadir": "../datasets/ukbbH5s/F20208_Long_axis_heart_images_DICOM_H5v1_LAX_4Ch_transverse_cropped_128_128",
    "foldCSV": "5folds_1Ses_100DS_60Trn_10Val_30Tst_1701seed.csv",
    "tblog_path": "../Out/TBLogs",
    "save_path": "../Results",
    "is_complexDS": False,
    "DS_selected_primaries": ["LAX_4Ch_transverse"],
    "DS_sanity_filters": {"dim1": 50},
    "DS_multi_channel": False,
    "DS_split_volume": False,
    "DS_split_time": False,
    "DS_channel_dim": 0,
    "DS_slice_dim": 1,
}
ARCH = dict(
    is3D=True,
    in_channels=1,
    latent_dim=16,
    net_ch=4,
    ch_mult=(1, 1, 2, 3, 4),
    enc_ch_mult=(1, 1, 2, 3, 4, 4),
    num_res_blocks=2,
    enc_num_res_blocks=2,
    attn_res=(16,),
)


def _cine(rng, frames=FRAMES, size=(X, Y)):
    """A beating blob on noise, int16 like the DICOM converter's output."""
    xx, yy = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    out = np.empty((1, frames, 1, *size), np.int16)
    for f in range(frames):
        r = size[0] / 4 + size[0] / 12 * np.sin(2 * np.pi * f / frames)
        blob = 900.0 * np.exp(-((xx - size[0] / 2) ** 2 + (yy - size[1] / 2) ** 2) / (2 * r**2))
        out[0, f, 0] = np.clip(blob + rng.normal(60, 25, size), 0, None).astype(np.int16)
    return out


def _write_cohort(d, patients, size, extras: bool, frames=FRAMES):
    """data.h5 as the ancestor writes it; with ``extras`` also what its JSON must not select (a repeat
    acquisition, an auxiliary series, a 30-frame cine that DS_sanity_filters {"dim1": 50} drops)."""
    rng = np.random.default_rng(0)
    with h5py.File(d / "data.h5", "w") as h5:
        for n, pid in enumerate(patients + (("1000004",) if extras else ())):
            g = h5.create_group(f"{pid}/20208/2")
            g.attrs.update(
                {
                    "patientDICOMID": pid,
                    "studyDICOMID": "1.2.840.1",
                    "studyDesc": "CARDIAC_MRI",
                    "aet": "AET1",
                    "host": "scanner",
                    "date": "20190101",
                    "n_series": 1,
                }
            )
            cine = _cine(rng, frames if pid != "1000004" else 30, size)
            extra = (
                {"auxiliary_seg_0": cine // 2, "primary_LAX_4Ch_transverse_1": cine[:, ::-1]}
                if n == 0 and extras
                else {}
            )
            for key, data in {KEY: cine, **extra}.items():
                ds = g.create_dataset(key, data=data)
                ds.attrs.update(
                    {
                        "seriesID": "1.2.3",
                        "DICOMHeader": json.dumps({"Modality": "MR"}),
                        "seriesDesc": "CINE_segmented_LAX_4Ch",
                        "min_val": int(data.min()),
                        "max_val": int(data.max()),
                    }
                )
    return d


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return _write_cohort(tmp_path_factory.mktemp("ukbb"), PATIENTS, (X, Y), extras=True)


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    return _write_cohort(tmp_path_factory.mktemp("ukbb_small"), PATIENTS[1:2], SMALL_XY, False, SMALL_FRAMES)


def _write_published(d, shape):
    """A checkpoint in the published layout (random weights, full net.*/ema_net.*/x_T layout, small widths),
    with the published config.json (its auto_map names remote code that must never be imported)."""
    torch.manual_seed(1701)
    net = DiffAE(DiffAEConfig(**ARCH, input_shape=shape))
    ema = DiffAE(DiffAEConfig(**ARCH, input_shape=shape)).eval()
    with torch.no_grad():
        for pe, pn in zip(ema.parameters(), net.parameters()):
            pe.copy_(pn + 0.02 * torch.randn_like(pn))  # the EMA differs from the raw weights
    tensors = {
        **{f"net.{k}": v.contiguous() for k, v in net.state_dict().items()},
        **{f"ema_net.{k}": v.contiguous() for k, v in ema.state_dict().items()},
        "x_T": torch.randn(2, 1, *shape),
    }
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["DiffAEModel"],
                "auto_map": {
                    "AutoConfig": "configuration_diffae.DiffAEConfig",
                    "AutoModel": "modeling_diffae.DiffAEModel",
                },
                "input_shape": list(shape),
                "is3D": True,
                "in_channels": 1,
                "latent_dim": 16,
                "net_ch": 4,
                "sample_size": 2,
                "ampmode": "16-mixed",
            }
        )
    )
    marker = d / "REMOTE_CODE_RAN"
    for name in ("modeling_diffae.py", "configuration_diffae.py"):
        (d / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (d / "README.md").write_text("# DiffAE 3D (test double of the published model card)\n")
    return d, ema


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return _write_published(tmp_path_factory.mktemp("hub"), MODEL_SHAPE)


@pytest.fixture(scope="module")
def small_published(tmp_path_factory):
    return _write_published(tmp_path_factory.mktemp("hub_small"), SMALL_SHAPE)


def _ancestor_json(path, datadir, frames=FRAMES):
    path.write_text(json.dumps({**ANCESTOR_JSON, "datadir": str(datadir), "DS_sanity_filters": {"dim1": frames}}))
    return path


# --- the reference chain -----------------------------------------------------------------------------------


def _crop_or_pad(x, size):
    """The ancestor's CropOrPad: pad each short axis with zeros (d//2 before, the rest after), then crop
    each long axis from d//2."""
    pads = [(0, 0)] * (x.ndim - len(size))
    for have, want in zip(x.shape[-len(size) :], size):
        d = max(want - have, 0)
        pads.append((d // 2, d - d // 2))
    x = np.pad(x, pads)
    index = [slice(None)] * (x.ndim - len(size))
    for have, want in zip(x.shape[-len(size) :], size):
        start = (have - want) // 2
        index.append(slice(start, start + want))
    return x[tuple(index)]


def reference_raw(h5file, pid, shape=MODEL_SHAPE):
    """What the model sees before normalisation: DS_slice_dim 1 swaps time and slice; channel 0 (C=1);
    the time axis (length 1 after the swap) is the model's channel; crop-or-pad."""
    with h5py.File(h5file, "r") as h5:
        raw = h5[f"{pid}/20208/2/{KEY}"][()]
    return _crop_or_pad(np.transpose(raw, (0, 2, 1, 3, 4))[0].astype(np.float64), shape)


def reference_input(h5file, pid, shape=MODEL_SHAPE):
    x = reference_raw(h5file, pid, shape)
    x = (x - x.min()) / (x.max() - x.min())  # per-sample min-max of what the model sees
    return (x - 0.5) / 0.5  # zscore with the fixed mean/std 0.5


def reference_latents(h5file, ema):
    with torch.no_grad():
        return {
            pid: ema.encode(torch.from_numpy(reference_input(h5file, pid))[None].float())[0].numpy() for pid in PATIENTS
        }


def reference_ddim(model, z, x, invert: bool, steps=20, T=1000):
    """guided-diffusion's ddim_reverse_sample / ddim_sample (eta 0) on DiffAE's "ddim20" respacing, clip_denoised,
    with the respaced chain's alphas_cumprod, alphas_cumprod_prev (1 first) and _next (0 last), in float64."""
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T, dtype=np.float64))
    use = list(range(0, T, T // steps))
    ab = abar[use]
    ab_prev, ab_next = np.append(1.0, ab[:-1]), np.append(ab[1:], 0.0)
    x = x.double()
    for i in range(steps) if invert else reversed(range(steps)):
        t = torch.full((x.shape[0],), use[i], dtype=torch.long)
        with torch.no_grad():
            eps_model = model(x.float(), t, z).double()
        x0 = (np.sqrt(1.0 / ab[i]) * x - np.sqrt(1.0 / ab[i] - 1.0) * eps_model).clamp(-1, 1)
        eps = (np.sqrt(1.0 / ab[i]) * x - x0) / np.sqrt(1.0 / ab[i] - 1.0)
        nxt = ab_next[i] if invert else ab_prev[i]
        x = x0 * np.sqrt(nxt) + np.sqrt(1.0 - nxt) * eps
    return x


def _emb(path):
    out = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _check_latents(emb_path, expected):
    emb = _emb(emb_path)
    assert sorted(emb) == sorted(f"{pid}/20208/2/{KEY}" for pid in PATIENTS)  # no repeat, auxiliary, 30-frame cine
    worst = 0.0
    for pid, z in expected.items():
        got = emb[f"{pid}/20208/2/{KEY}"]
        assert got.shape == (1, 1, 1, 16)
        worst = max(worst, float(np.abs(got[0, 0, 0] - z).max()))
    assert worst <= 1e-4, f"max |dz| = {worst}"


# --- the tests ---------------------------------------------------------------------------------------------


def test_ancestor_files_and_published_weights_give_the_ancestors_latents(cohort, published, tmp_path):
    folder, ema = published
    js = _ancestor_json(tmp_path / "dataNpath_F20208_time2slc_4ChTransverse_Crop128.json", cohort)
    proc = run_executor(
        "main_diffAE.py",
        "--load_hf",
        str(folder),
        "--datajson_path",
        str(js),
        "--run_mode",
        "2",
        "--test_emb_only",
        "--output_suffix",
        "fullDS",
        "--json§foldCSV",
        "0",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # an inference with --load_hf gets its own run folder, named after the weights (and 3D: not the task's default)
    run_dir = (
        tmp_path.parent / "Results" / (f"{ANCESTOR_JSON['run_prefix']}_demofold0_prec32_DiffAE_3D_hf-{folder.name}")
    )
    _check_latents(run_dir / "Output_fullDS" / "emb.h5", reference_latents(cohort / "data.h5", ema))
    assert not (folder / "REMOTE_CODE_RAN").exists()
    # what the published model needs is recorded with the run
    cfg = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())
    assert cfg["model"]["input_shape"] == list(MODEL_SHAPE) and cfg["data"]["interp_fact"] == 1.0
    assert (cfg["data"]["norm_type"], cfg["data"]["norm_range"]) == ("minmax", "symmetric")
    assert {k: cfg["model"]["DiffAE"][k] for k in ("T_eval", "T_inv", "T_step", "spacing")} == {
        "T_eval": 20,
        "T_inv": 20,
        "T_step": 20,
        "spacing": "ddim",
    }
    with h5py.File(run_dir / "Output_fullDS" / "emb.h5") as h5:
        assert bool(h5.attrs["ema"]) is True


def test_inversion_and_rendering_match_diffae_formulas(small_cohort, small_published, tmp_path):
    folder, ema = small_published
    js = _ancestor_json(tmp_path / "dn.json", small_cohort, SMALL_FRAMES)
    run(
        [
            "--load_hf",
            str(folder),
            "--datajson_path",
            str(js),
            "--run_mode",
            "2",
            "--json§foldCSV",
            "0",
            "--json§save_path",
            str(tmp_path),
            "--fulltrainID",
            "inv",
            "--save_recon_subs",
            PATIENTS[1],
            "--no-progress_bar",
            "--no-tbactive",
        ],
        registry.get("diffAE"),
    )
    x = torch.from_numpy(reference_input(small_cohort / "data.h5", PATIENTS[1], SMALL_SHAPE))[None].float()
    with torch.no_grad():
        z = ema.encode(x)
    x_T = reference_ddim(ema, z, x, invert=True)
    with h5py.File(tmp_path / "inv" / "Output" / "recon.h5") as h5:
        grp = h5[f"{PATIENTS[1]}/20208/2/{KEY}"]
        assert sorted(grp) == ["input_c0_tall_sall", "recon_c0_tall_sall", "xT_c0_tall_sall"]
        got_xT, got_rec, got_in = (grp[f"{k}_c0_tall_sall"][()] for k in ("xT", "recon", "input"))
    np.testing.assert_allclose(got_xT, x_T[0].numpy(), atol=1e-4, rtol=0)
    # rendering is compared on the same x_T (ours as written): each map against its reference, so the
    # inversion's float32 rounding is not amplified a second time through 20 steps of a random network
    rec = reference_ddim(ema, z, torch.from_numpy(got_xT)[None], invert=False)
    # recon.h5 holds original units: map back with the sample's own min/max (the reference chain's)
    raw = reference_raw(small_cohort / "data.h5", PATIENTS[1], SMALL_SHAPE)
    lo, hi = raw.min(), raw.max()
    np.testing.assert_allclose(got_in, raw, atol=1e-5 * (hi - lo))
    np.testing.assert_allclose(2 * (got_rec - lo) / (hi - lo) - 1, rec[0].numpy(), atol=1e-4, rtol=0)


def _readme_recipe() -> list[str]:
    text = (REPO / "docs" / "how-to" / "hub.md").read_text()  # the published-weights recipe (moved from the README)
    block = text.split("<!-- PUBLISHED-RECIPE:BEGIN -->")[1].split("<!-- PUBLISHED-RECIPE:END -->")[0]
    command = re.search(r"```bash\n(.*?)```", block, re.S).group(1).replace("\\\n", " ")
    return command.split()


def test_readme_recipe_verbatim_gives_the_same_latents(cohort, published, tmp_path):
    """The docs' published-weights command (docs/how-to/hub.md), run as written (the Hub repo from an offline
    cache, the data folder substituted for its placeholder), on the ancestor's layout."""
    folder, ema = published
    argv = _readme_recipe()
    assert argv[:2] == ["python", "Executors/main_diffAE.py"] and REPO_ID in argv and "/my/data" in argv
    home = tmp_path / "hf"
    snap = home / "hub" / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / ("a" * 40)
    shutil.copytree(folder, snap)
    (snap / "REMOTE_CODE_RAN").unlink(missing_ok=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("a" * 40)
    args = [str(cohort) if a == "/my/data" else a for a in argv[2:]]
    proc = run_executor(
        "main_diffAE.py",
        *args,
        "--json§save_path",
        str(tmp_path / "Results"),
        cwd=REPO,
        env={"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    emb = next((tmp_path / "Results").glob("*/Output_fullDS/emb.h5"))
    _check_latents(emb, reference_latents(cohort / "data.h5", ema))
    assert not (snap / "REMOTE_CODE_RAN").exists()


def _padding_args(small_cohort, small_published, tmp_path):
    folder, _ = small_published
    js = tmp_path / "frames.json"
    js.write_text(
        json.dumps(
            {
                **ANCESTOR_JSON,
                "datadir": str(small_cohort),
                "DS_slice_dim": 2,
                "DS_split_time": True,
                "DS_sanity_filters": {"dim1": SMALL_FRAMES},
            }
        )
    )
    args = [
        "--load_hf",
        str(folder),
        "--datajson_path",
        str(js),
        "--run_mode",
        "2",
        "--test_emb_only",
        "--json§foldCSV",
        "0",
        "--json§save_path",
        str(tmp_path / "R"),
        "--fulltrainID",
        "pad",
    ]
    return args


def test_padding_guard_names_axis_and_fix(small_cohort, small_published, tmp_path):
    """Without DS_slice_dim 1 each cine frame is a sample of 1 slice: padding it to the model's 20 is refused."""
    proc = run_executor("main_diffAE.py", *_padding_args(small_cohort, small_published, tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "axis S from 1 to the model's 20 (95% padding)" in line and "--json§DS_slice_dim 1" in line
    assert "Traceback" not in proc.stderr and not (tmp_path / "R" / "pad").exists()


@pytest.mark.slow  # default suite < 10 min: runs in make test-slow
def test_allow_pad_embeds_the_padded_frames(small_cohort, small_published, tmp_path):
    args = _padding_args(small_cohort, small_published, tmp_path)
    proc = run_executor("main_diffAE.py", *args, "--allow_pad", "--no-progress_bar", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with h5py.File(tmp_path / "R" / "pad" / "Output" / "emb.h5") as h5:
        assert h5[f"{PATIENTS[1]}/20208/2/{KEY}"].shape == (1, SMALL_FRAMES, 1, 16)
