"""Lightning engine of the ReStyle encoder (Alaluf et al., ICCV 2021) with the noise head of Wu et al. (MIDL 2022):
stage 2 of seed 000's IID pipeline, inverting a frozen ``main_stylegan`` generator (its EMA weights, from the
run's last checkpoint unless a checkpoint file is given).

Training: ``n_iters`` refinements per batch from the generator's average latent; the loss (L2 + SSIM) of every
refinement, each on detached inputs, so one backward pass and one optimiser step per batch train every
iteration as ReStyle does. Validation: the same loss (``val_loss``). Test: the latents are the W+ style codes
flattened (n_latent x style_dim: emb.h5 and the tables), with their mean over layers as a second output
(``Output/style_mean/``); reconstructions and their SSIM/PSNR unless ``--test_emb_only``; with ``--write_noise``
the noise head's maps of every test sample (``Output/noise_maps.h5``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, create_model
from torchmetrics.functional.image import structural_similarity_index_measure

from Engineering.config import Config
from Engineering.config.flags import Flag
from Engineering.config.schema import Keys, drive_config, keys_from_dataclass
from Engineering.data.transforms import normalised_range
from Engineering.Engines.latent_engine import LatentEngine
from Engineering.Engines.saved_runs import upstream_engine
from Engineering.errors import UserError

from .network import ReStyleConfig, ReStyleNet

ReStyleKeys = keys_from_dataclass(
    "ReStyleKeys",
    ReStyleConfig,
    doc="model§ReStyle",
    overrides={"blocks": list[int]},
    generator=(
        str,
        Field(
            "",
            description="--generator: the main_stylegan run folder (its last checkpoint) or a "
            "checkpoint file whose EMA generator is inverted.",
        ),
    ),
    l2_weight=(float, Field(1.0, ge=0, description="Weight of the pixel L2 loss.")),
    ssim_weight=(float, Field(0.5, ge=0, description="Weight of 1 - SSIM (torchmetrics, the data's range).")),
    write_noise=(
        bool,
        Field(
            False,
            description="--write_noise: also write the noise head's maps of every test sample to Output/noise_maps.h5.",
        ),
    ),
)
ReStyleModelKeys = create_model("ReStyleModelKeys", __base__=Keys, ReStyle=(ReStyleKeys, ReStyleKeys()))


def frozen_generator(path: str, in_channels: int, input_shape) -> torch.nn.Module:
    """The EMA generator of a main_stylegan run, checked against this run's images."""
    engine = upstream_engine(path, "--generator", "stylegan", "main_restyle inverts a trained generator")
    g = engine.ema_net
    want = (in_channels, *[int(s) for s in input_shape])
    have = (g.cfg.channels, g.cfg.size, g.cfg.size)
    if want != have:
        raise UserError(
            f"--generator {path} makes {have[0]}-channel {have[1]}x{have[2]} images but this run's data "
            f"gives {want[0]}-channel {'x'.join(map(str, want[1:]))} (set --input_shape / the data "
            "selection as the generator's run did)"
        )
    return g


class ReStyleEngine(LatentEngine):
    def __init__(self, cfg: Config, in_channels: int):
        super().__init__(cfg, in_channels)
        k = cfg.model.ReStyle
        generator = frozen_generator(k.generator, in_channels, cfg.model.input_shape)
        self.re_cfg = drive_config(ReStyleConfig, k)
        self.net = ReStyleNet(self.re_cfg, generator)
        self.k = k
        d = cfg.data
        rng = normalised_range(d.norm_type, d.prenorm, d.zscore_mean, d.zscore_std, d.norm_range)
        self.data_range = (rng[1] - rng[0]) if rng else None  # None: SSIM uses each batch's own range

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"l2": F.mse_loss(y, x)}
        if self.k.ssim_weight:
            rng = self.data_range or float(x.max() - x.min()) or 1.0
            out["ssim"] = structural_similarity_index_measure(y, x, data_range=rng)
        out["loss"] = self.k.l2_weight * out["l2"] + self.k.ssim_weight * (1 - out.get("ssim", 1.0))
        return out

    def _step_losses(self, x):
        steps = self.net.invert(x)
        per_iter = [self.losses(x, y) for _, _, y in steps]
        return sum(p["loss"] for p in per_iter), per_iter[-1]

    def training_step(self, batch, batch_idx):
        x = batch["inp"]
        loss, last = self._step_losses(x)
        b = x.shape[0]
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=b, sync_dist=True)
        for name in ("l2", "ssim"):
            if name in last:
                self.log(
                    f"train_{name}", last[name].detach(), on_step=False, on_epoch=True, batch_size=b, sync_dist=True
                )
        return loss

    def validation_step(self, batch, batch_idx):
        x = batch["inp"]
        loss, last = self._step_losses(x)
        b = x.shape[0]
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=b, sync_dist=True)
        if "ssim" in last:
            self.log("val_ssim", last["ssim"], on_epoch=True, batch_size=b, sync_dist=True)

    def embed(self, x, use_ema: bool) -> torch.Tensor:
        codes, _, _ = self.net.invert(x)[-1]
        return codes.flatten(1)

    def reconstruct(self, x, z, use_ema: bool) -> torch.Tensor:
        return self.net.invert(x)[-1][2]


class NoiseMapsView:
    """After the test, with ``--write_noise``: the noise head's maps ("morph") of every test sample, in
    ``Output/noise_maps.h5``: ``noise_<i>`` (N, 1, s, s) for the generator's i-th noise input (side ``s`` in the
    attribute ``sizes``) and the samples' IDs as datasets named like the table columns (patientID ... s; 0 on an
    axis that is not split), in the same row order."""

    def check(self, cfg, data) -> None:
        pass

    def run(self, cfg: Config, model, dm, out_dir: Path) -> dict:
        if not cfg.model.ReStyle.write_noise:
            return {}
        if not model.re_cfg.noise_head:
            print("notice: --write_noise with --no-noise_head: the encoder predicts no noise maps; none written")
            return {}
        import h5py

        from Engineering.data.layout import SAMPLE_COLUMNS
        from Engineering.io.atomic import atomic_path

        dm.test_skip = None  # every test sample, also after a resumed test
        loader = dm.test_dataloader()
        ds = dm.dataset("test")
        sizes = model.net.generator.cfg.noise_sizes()
        maps, rows = [[] for _ in sizes], []
        model.eval()
        with torch.no_grad():
            for batch in loader:
                batch = dm.on_after_batch_transfer(batch, 0)
                _, noise, _ = model.net.invert(batch["inp"].to(model.device))[-1]
                for i, n in enumerate(noise):
                    maps[i].append(n.float().cpu().numpy())
                rows += [ds.describe(int(j)) for j in batch["index"]]
        path = out_dir / "noise_maps.h5"
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
            h5.attrs["sizes"] = sizes
            for i, m in enumerate(maps):
                h5.create_dataset(f"noise_{i}", data=np.concatenate(m))
            for col in SAMPLE_COLUMNS:
                values = [r[col] for r in rows]
                if col in ("c", "t", "s"):
                    h5.create_dataset(col, data=np.array([0 if v is None else v for v in values], np.int64))
                else:
                    h5.create_dataset(col, data=np.array([str(v) for v in values], dtype=h5py.string_dtype()))
        print(f"noise maps of {len(rows)} test samples: {path}")
        return {"noise_maps": str(path)}


class StyleMeanView:
    """After the test: the style codes' mean over the generator's layers (style_dim values per sample), a
    compact view of W+ written through the same output contract in ``Output/style_mean/``."""

    def check(self, cfg, data) -> None:
        pass

    def run(self, cfg, model, dm, out_dir: Path) -> dict:
        import pandas as pd

        from Engineering.io.outputs import write_table

        table = pd.read_parquet(out_dir / "emb.parquet")
        zcols = [c for c in table.columns if c.startswith("Z")]
        g = model.net.generator.cfg
        z = table[zcols].to_numpy(np.float32).reshape(len(table), g.n_latent, g.style_dim).mean(1)
        view = pd.concat(
            [
                table.drop(columns=zcols),
                pd.DataFrame(z, columns=[f"Z{i}" for i in range(g.style_dim)], index=table.index),
            ],
            axis=1,
        )
        write_table(out_dir / "style_mean" / "emb.tsv", view, sep="\t")
        print(f"style codes' mean over layers: {out_dir / 'style_mean' / 'emb.tsv'}")
        return {"style_mean": str(out_dir / "style_mean" / "emb.tsv")}


RESTYLE_FLAGS = (
    Flag(
        "generator",
        ("model", "ReStyle", "generator"),
        "str",
        "",
        "The main_stylegan run folder (its last checkpoint) or checkpoint file to invert.",
        "Model",
    ),
    Flag(
        "noise_head",
        ("model", "ReStyle", "noise_head"),
        "bool",
        True,
        "Predict the generator's noise maps from the image (--no-noise_head: a fixed noise draw).",
        "Model",
    ),
    Flag(
        "write_noise",
        ("model", "ReStyle", "write_noise"),
        "bool",
        False,
        "Also write the test samples' noise maps (Output/noise_maps.h5).",
        "Model",
    ),
)
