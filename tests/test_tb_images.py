"""TensorBoard image grids (--tb_image_every, Engines/image_grids.py): a tiny training run with TensorBoard writes
image events with the expected tags and shapes (2D DiffAE: inputs and reconstructions; 3D rotation-invariant
autoencoder: middle slices; StyleGAN2: inputs and samples); with --tb_image_every 0 none; without TensorBoard the
flag is refused. The grids are read back from the event files with TensorBoard's own EventAccumulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from Engineering.data.cells import CellSpec, write_cells
from Engineering.Engines import registry
from Engineering.Engines.image_grids import PAD, display_range, grid, middle_slice
from Engineering.Engines.MainEngine import run
from Engineering.errors import UserError
from tests.conftest import TINY_DIFFAE
from tests.test_flags_honoured import TINY_GAN, TINY_RECON, TINY_SSL

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(run_dir: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {run_dir}"
    out: dict[str, list] = {}
    for path in events:
        acc = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["images"]:
            out.setdefault(tag, []).extend(acc.Images(tag))
    return out


def _scalars(run_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = []
    for path in (run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(path))
        acc.Reload()
        tags += acc.Tags()["scalars"]
    return tags


def _size(n_samples: int, n_channels: int, side: int) -> tuple[int, int]:
    """(width, height) of a grid: a column per sample, a row per channel, PAD pixels between tiles."""
    return n_samples * (side + PAD) - PAD, n_channels * (side + PAD) - PAD


def _decoded(event) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    return np.asarray(Image.open(BytesIO(event.encoded_image_string)))


def test_grid_layout_and_display_range():
    x = np.zeros((3, 2, 4, 5), np.float32)
    x[:, 0] = np.arange(3)[:, None, None]  # channel 0: sample i is constant i
    x[:, 1] = -1.0
    x[1, 1, 0, 0] = 1.0
    lo, hi = display_range(x)
    assert lo.tolist() == [0, -1] and hi.tolist() == [2, 1]
    g = grid(x, lo, hi)
    assert g.shape == (1, 2 * (4 + PAD) - PAD, 3 * (5 + PAD) - PAD) and g.dtype == np.float32
    assert g[0, 0, 0] == 0 and g[0, 0, 5 + PAD] == 0.5 and g[0, 0, 2 * (5 + PAD)] == 1  # samples along a row
    assert g[0, 4 + PAD, 0] == 0 and g[0, 4 + PAD, 5 + PAD] == 1  # channel 1 in the second row
    assert g[0, 4, 0] == 1 and g[0, 0, 5] == 1  # white padding between tiles
    # reconstructions outside the inputs' range are clipped into it; a 3D batch shows its middle slice
    assert grid(x * 10, lo, hi).max() == 1 and grid(x - 10, lo, hi).min() == 0
    vol = np.arange(2 * 1 * 5 * 3 * 3, dtype=np.float32).reshape(2, 1, 5, 3, 3)
    assert np.array_equal(middle_slice(vol), vol[:, :, 2]) and middle_slice(x) is x


def test_diffae_logs_inputs_and_reconstructions_every_n_epochs(tiny_demo, tmp_path):
    base = [
        *TINY_DIFFAE,
        "--interp_fact",
        "1",
        "--json§datadir",
        str(tiny_demo),
        "--json§save_path",
        str(tmp_path),
        "--run_mode",
        "1",
        "--tbactive",
        "--num_epochs",
        "2",
    ]
    run([*base, "--fulltrainID", "on", "--tb_image_every", "1"], registry.get("diffAE"))
    images = _images(tmp_path / "on")
    assert sorted(images) == ["images/inputs", "images/reconstructions"]
    for tag, events in images.items():
        assert len(events) == 2, (tag, [e.step for e in events])  # epochs 1 and 2
        assert events[0].step < events[1].step
        # the first validation batch (4 samples, 1 channel, 32x32) as one greyscale row
        assert all((e.width, e.height) == _size(4, 1, 32) for e in events), tag
        pixels = _decoded(events[-1])
        assert pixels.shape[:2] == (events[-1].height, events[-1].width) and pixels.std() > 0, tag

    run([*base, "--fulltrainID", "every2", "--tb_image_every", "2"], registry.get("diffAE"))
    assert {tag: len(e) for tag, e in _images(tmp_path / "every2").items()} == {
        "images/inputs": 1,
        "images/reconstructions": 1,
    }

    # no validation (train and val merged, --run_mode 0): the first training batch of the epoch
    run([*base, "--fulltrainID", "merged", "--run_mode", "0", "--num_epochs", "1"], registry.get("diffAE"))
    merged = _images(tmp_path / "merged")
    assert sorted(merged) == ["images/inputs", "images/reconstructions"]
    assert [(e.width, e.height) for e in merged["images/inputs"]] == [_size(4, 1, 32)]  # (--batch_size 4)

    run([*base, "--fulltrainID", "off", "--tb_image_every", "0"], registry.get("diffAE"))
    assert _images(tmp_path / "off") == {} and "val_loss" in _scalars(tmp_path / "off")  # TensorBoard still on


@pytest.mark.parametrize("model", ["vae", "rhvae"])  # (rhvae: a model that needs gradients to evaluate)
def test_pythae_vaes_log_inputs_and_reconstructions(model, tiny_demo, tmp_path):
    run(
        [
            *TINY_RECON,
            "--interp_fact",
            "1",
            "--json§datadir",
            str(tiny_demo),
            "--json§save_path",
            str(tmp_path),
            "--fulltrainID",
            model,
            "--num_epochs",
            "1",
            "--run_mode",
            "1",
            "--tbactive",
            "--model§pythae§model",
            model,
        ],
        registry.get("recon"),
    )
    images = _images(tmp_path / model)
    assert sorted(images) == ["images/inputs", "images/reconstructions"]
    assert [(e.width, e.height) for e in images["images/reconstructions"]] == [_size(4, 1, 32)]


def test_3d_grids_show_the_middle_slice(tmp_path):
    cells = write_cells(tmp_path / "cells", CellSpec(n_cells=12, n_puncta=6, n_points=32))
    run(
        [
            "--batch_size",
            "4",
            "--n_train_batches",
            "2",
            "--n_val_batches",
            "1",
            "--no-progress_bar",
            "--tbactive",
            "--latent_dim",
            "8",
            "--model§RotInv§width",
            "2",
            "--model§RotInv§depth",
            "2",
            "--num_epochs",
            "1",
            "--run_mode",
            "1",
            "--json§datadir",
            str(cells),
            "--json§save_path",
            str(tmp_path / "runs"),
            "--json§DS_covariates§path",
            str(cells / "covariates.tsv"),
            "--fulltrainID",
            "r",
        ],
        registry.get("rotinv"),
    )
    images = _images(tmp_path / "runs" / "r")
    assert sorted(images) == ["images/inputs", "images/reconstructions"]
    for tag, events in images.items():  # (2 channels, 32x32x32 volumes: one 32x32 slice of each validation cell)
        assert len(events) == 1 and events[0].height == _size(1, 2, 32)[1], tag
        assert (events[0].width + PAD) % (32 + PAD) == 0, tag


def test_gan_logs_inputs_and_samples(tiny_demo_mc, tmp_path):
    run(
        [
            *TINY_GAN,
            "--interp_fact",
            "1",
            "--json§datadir",
            str(tiny_demo_mc),
            "--json§save_path",
            str(tmp_path),
            "--fulltrainID",
            "g",
            "--n_train_batches",
            "2",
            "--n_val_batches",
            "1",
            "--num_epochs",
            "1",
            "--run_mode",
            "1",
            "--tbactive",
        ],
        registry.get("stylegan"),
    )
    images = _images(tmp_path / "g")
    assert sorted(images) == ["images/inputs", "images/samples"]
    # 3 channels, 32x32: the validation batch's 4 images and the generator's 4 fixed samples (n_samples 4)
    assert [(e.width, e.height) for e in images["images/samples"]] == [_size(4, 3, 32)]
    assert [(e.width, e.height) for e in images["images/inputs"]] == [_size(4, 3, 32)]


def test_the_flag_is_refused_where_it_would_do_nothing(tiny_demo, tmp_path, capsys):
    args = [*TINY_DIFFAE, "--json§datadir", str(tiny_demo), "--json§save_path", str(tmp_path), "--fulltrainID", "x"]
    with pytest.raises(UserError, match="--tb_image_every 2 is not honoured by task 'diffAE'.*--tbactive"):
        run([*args, "--tb_image_every", "2"], registry.get("diffAE"))  # (TINY_DIFFAE turns TensorBoard off)
    with pytest.raises(UserError, match="--tb_image_every 2 is not honoured.*--run_mode 2"):
        run([*args, "--tbactive", "--tb_image_every", "2", "--run_mode", "2"], registry.get("diffAE"))
    with pytest.raises(UserError, match="--tb_image_every is not honoured by task 'ssl': it has no decoder"):
        run(
            ["--json§datadir", str(tiny_demo), "--json§save_path", str(tmp_path), "--tb_image_every", "1"],
            registry.get("ssl"),
        )
    assert not (tmp_path / "x").exists()


def test_a_task_without_decoder_or_generator_logs_no_grids(tiny_demo, tmp_path):
    """SSL with TensorBoard on (the default --tb_image_every 1 is not honoured by it): scalars, no images."""
    run(
        [
            *TINY_SSL,
            "--interp_fact",
            "1",
            "--json§datadir",
            str(tiny_demo),
            "--json§save_path",
            str(tmp_path),
            "--fulltrainID",
            "s",
            "--n_train_batches",
            "2",
            "--num_epochs",
            "1",
            "--run_mode",
            "1",
            "--tbactive",
            "--knn_label",
            "ef_class",
        ],
        registry.get("ssl"),
    )
    assert _images(tmp_path / "s") == {} and "val_loss" in _scalars(tmp_path / "s")


NOISE = (
    "💡",
    "litlogger",
    "LeafSpec",
    "module(s) in eval mode",
    "smaller than the logging interval",
    "does not have many workers",
)


def _console_of_a_run(tiny_demo, tmp_path, name: str) -> tuple[list[str], list[str]]:
    """(every warning that would be shown, every record of Lightning's loggers) of a tiny DiffAE training run."""
    import logging
    import warnings

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    keep = Keep()
    logging.getLogger("lightning").addHandler(keep)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # (the run's own filters go in front of this one)
            run(
                [
                    *TINY_DIFFAE,
                    "--tbactive",
                    "--run_mode",
                    "1",
                    "--json§datadir",
                    str(tiny_demo),
                    "--json§save_path",
                    str(tmp_path),
                    "--fulltrainID",
                    name,
                ],
                registry.get("diffAE"),
            )
    finally:
        logging.getLogger("lightning").removeHandler(keep)
    return [str(w.message) for w in caught], records


def test_the_console_is_quiet(tiny_demo, tmp_path, monkeypatch):
    """A training run shows none of the third-party tips and warnings Engines/console.py silences, each of which a
    run without its filters shows (the litlogger tip, LeafSpec's deprecation, the EMA copy in eval mode, the
    logging interval longer than the epoch, few loader workers on a machine with more cores); Lightning's other lines
    still reach its logger."""
    import logging
    import warnings

    from lightning.pytorch.trainer.connectors import data_connector

    from Engineering.Engines import console, trainer_factory

    # as on a machine with more than two cores, where Lightning asks for more loader workers
    monkeypatch.setattr(data_connector, "suggested_max_num_workers", lambda n: 4)
    shown, records = _console_of_a_run(tiny_demo, tmp_path, "quiet")
    for noise in NOISE:
        assert not any(noise in line for line in shown + records), noise
    assert any("max_epochs=1" in r for r in records)  # ("`Trainer.fit` stopped: `max_epochs=1` reached.")

    # without the filters (the same run in a fresh warnings state): each silenced message is there
    with warnings.catch_warnings():
        monkeypatch.setattr(trainer_factory, "quiet", lambda: None)
        for name in console.TIP_LOGGERS:
            monkeypatch.setattr(logging.getLogger(name), "filters", [])
        shown, records = _console_of_a_run(tiny_demo, tmp_path, "loud")
    for noise in (
        "💡",
        "LeafSpec",
        "module(s) in eval mode",
        "smaller than the logging interval",
        "does not have many workers",
    ):
        assert any(noise in line for line in shown + records), noise
