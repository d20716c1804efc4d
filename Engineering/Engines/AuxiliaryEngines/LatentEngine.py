"""What every latent-model engine shares: optimiser/scheduler from the config, EMA,
exact-resume RNG state, and the test phase that writes the output contract.

A subclass provides ``embed(x, use_ema)`` and, unless embeddings only are asked
for, ``reconstruct(x, z, use_ema)``. Under DDP every rank computes its share of
the test set; the pieces are gathered and written once, by rank 0.
"""
from __future__ import annotations

import copy
import random
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from Engineering.data.transforms import invert_affine
from Engineering.errors import UserError
from Engineering.io.atomic import replace_dir, require_free, staging_dir, tensor_bytes
from Engineering.io.outputs import SampleInfo, write_emb_h5, write_emb_tables, write_preview, write_recon_h5, write_table
from Engineering.Science.metrics import recon_metrics
from Engineering.Science.optimisers import make_optimiser, make_scheduler


def ema_decay_at(step: int, decay: float) -> float:
    """EMA warm-up (decay grows as (1+n)/(10+n)) so short runs do not test near-initial weights."""
    return min(decay, (1.0 + step) / (10.0 + step))


class LatentEngine(L.LightningModule):
    monitor_train = "train_loss_epoch"

    def __init__(self, cfg, in_channels: int):
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels
        self.out_dir: Path | None = None
        self.output_attrs: dict = {}
        self._test_buf: dict = {}
        self.has_val = True
        self.lr = cfg.training.lr  # the Lightning Tuner's lr_find sets this
        self.ema_decay = float(cfg.training.ema_decay)  # in [0, 1): checked by the config schema

    # --- subclasses
    def embed(self, x: torch.Tensor, use_ema: bool) -> torch.Tensor:
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor, z: torch.Tensor, use_ema: bool) -> torch.Tensor:
        raise NotImplementedError

    def reconstruct_with_code(self, x: torch.Tensor, z: torch.Tensor, use_ema: bool):
        """(reconstruction, a per-sample code beyond z written to recon.h5 such as DiffAE's x_T, or None)."""
        return self.reconstruct(x, z, use_ema), None

    # --- EMA of a submodule called ``net`` into ``ema_net`` (if the subclass has them)
    def init_ema(self) -> None:
        self.ema_net = copy.deepcopy(self.net)
        self.ema_net.requires_grad_(False)
        self.ema_net.eval()

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = ema_decay_at(self.global_step, self.ema_decay)
        for e, p in zip(self.ema_net.parameters(), self.net.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.ema_net.buffers(), self.net.buffers()):
            e.copy_(b)

    # --- optimisation
    def monitor(self) -> str:
        return "val_loss" if self.has_val else self.monitor_train

    def configure_optimizers(self):
        t = self.cfg.training
        params = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("ema_net.")]
        opt = make_optimiser(params, t.optimiserID, self.lr)
        sched = make_scheduler(opt, t, self.monitor())
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}

    # --- exact resume: the global RNGs (dropout etc.) travel with the checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(),
                                    # every CUDA generator too: a GPU resume with --non_deter false is exact
                                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                                    "python": list(random.getstate()[1]),
                                    "python_version": random.getstate()[0], "python_gauss": random.getstate()[2],
                                    "numpy": np.random.get_state()[1].tolist(), "numpy_pos": int(np.random.get_state()[2])}
        checkpoint["imlatent_config"] = self.cfg.model_dump(mode="json", by_alias=True)
        checkpoint["in_channels"] = self.in_channels

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("rng_states")
        if rng:
            torch.set_rng_state(rng["torch"])
            cuda = rng.get("cuda") or []
            if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
            random.setstate((rng["python_version"], tuple(rng["python"]), rng["python_gauss"]))
            np.random.set_state(("MT19937", np.array(rng["numpy"], dtype=np.uint32), rng["numpy_pos"], 0, 0.0))

    # --- test phase: embeddings, reconstructions, metrics
    def on_test_epoch_start(self) -> None:
        ds = self.trainer.datamodule.dataset("test")
        self._test_ds = ds
        ev = self.cfg.eval
        patients = sorted({r.patientID for r in ds.records})
        if ev.save_recon_subs:
            keep = {p.strip() for p in str(ev.save_recon_subs).split(",") if p.strip()}
        else:
            n = ev.n_save_recon_subs
            n = int(round(n * len(patients))) if isinstance(n, float) and n <= 1 else int(n)
            keep = set(patients[:n])
        self._recon_subs = keep
        self._test_buf = {"index": [], "z": [], "metrics": [], "recon": {}, "preview": {}}

    @torch.no_grad()
    def test_step(self, batch, batch_idx):
        ev = self.cfg.eval
        use_ema = bool(ev.test_ema) and hasattr(self, "ema_net")
        x = batch["inp"]
        z = self.embed(x, use_ema)
        buf = self._test_buf
        idx = batch["index"].tolist()
        buf["index"].extend(idx)
        buf["z"].append(z.float().cpu())
        if ev.test_emb_only:
            return
        recon, code = self.reconstruct_with_code(x, z, use_ema)
        recon = recon.float()
        orig_in = invert_affine(x.float(), batch["affine"]).cpu().numpy()
        orig_rec = invert_affine(recon, batch["affine"]).cpu().numpy()
        for j, i in enumerate(idx):
            info = self._test_ds.describe(i)
            for row in recon_metrics(x[j].float().cpu(), recon[j].cpu()):
                ids = {k: info[k] for k in ("patientID", "fieldID", "instanceID", "key")}
                # the same indexing as emb.h5/emb.tsv: an axis that is not split has the single index 0
                ids.update({k: info[k] or 0 for k in ("c", "t", "s")})
                buf["metrics"].append({**ids, **row})
            if info["patientID"] in self._recon_subs:
                buf["recon"][i] = (orig_rec[j], orig_in[j], None if code is None else code[j].float().cpu().numpy())
            if len(buf["preview"]) < ev.n_preview:
                buf["preview"][i] = (orig_in[j], orig_rec[j])

    def _gathered(self) -> dict | None:
        buf = self._test_buf
        local = {"index": buf["index"], "z": torch.cat(buf["z"]).numpy() if buf["z"] else np.zeros((0, 0)),
                 "metrics": buf["metrics"], "recon": buf["recon"], "preview": buf["preview"]}
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return local
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
        if dist.get_rank() != 0:
            return None
        merged = {"index": [], "z": [], "metrics": [], "recon": {}, "preview": {}}
        seen = set()
        for part in parts:  # DistributedSampler pads with repeats: keep each sample once
            for k, i in enumerate(part["index"]):
                if i not in seen:
                    seen.add(i)
                    merged["index"].append(i)
                    merged["z"].append(part["z"][k])
            merged["metrics"].extend(part["metrics"])
            merged["recon"].update(part["recon"])
            merged["preview"].update(part["preview"])
        merged["z"] = np.stack(merged["z"])
        mdf = pd.DataFrame(merged["metrics"])
        if not mdf.empty:
            merged["metrics"] = mdf.drop_duplicates(["patientID", "fieldID", "instanceID", "key", "c", "t", "s",
                                                     "channel"]).to_dict("records")
        return merged

    def on_test_epoch_end(self) -> None:
        data = self._gathered()
        if data is None or self.out_dir is None:
            return
        order = np.argsort(data["index"], kind="stable")
        index = [data["index"][k] for k in order]
        z = np.asarray(data["z"])[order]
        infos = [self._info(i) for i in index]
        # the whole Output set is built in a staging folder and swapped in at the end: a crash leaves the
        # previous set or the new one, never a new emb.h5 beside an old recon.h5
        final = Path(self.out_dir)
        # emb.h5 + parquet + TSV text (~3x) of the latents, and recon.h5 (reconstruction + input + code)
        need = 5 * z.nbytes + 3 * tensor_bytes([v[0] for v in data["recon"].values()])
        require_free(final.parent, need, f"the outputs in {final}")
        out = staging_dir(final)
        try:
            self._write_outputs(out, data, index, z, infos)
            replace_dir(out, final)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise

    def _write_outputs(self, out: Path, data: dict, index: list, z: np.ndarray, infos: list) -> None:
        attrs = {**self.output_attrs, "n_samples": len(index)}
        write_emb_h5(out / "emb.h5", infos, z, attrs)
        write_emb_tables(out, infos, z)
        if data["metrics"]:
            mdf = pd.DataFrame(data["metrics"]).sort_values(["patientID", "fieldID", "instanceID", "key", "c", "t", "s",
                                                             "channel"], na_position="first")
            write_table(out / "metrics.csv", mdf)
            self.test_summary = mdf[["SSIM", "PSNR", "NRMSE"]].replace([np.inf, -np.inf], np.nan).mean().to_dict()
        if data["recon"]:
            keys = sorted(data["recon"])
            write_recon_h5(out / "recon.h5", [self._info(i) for i in keys], [data["recon"][i][0] for i in keys],
                           [data["recon"][i][1] for i in keys], attrs, [data["recon"][i][2] for i in keys])
        if data["preview"]:
            keys = sorted(data["preview"])
            write_preview(out / "preview.png", [data["preview"][i][0] for i in keys],
                          [data["preview"][i][1] for i in keys],
                          [f"{self._info(i).patientID}/{self._info(i).key}" for i in keys])

    def _info(self, i: int) -> SampleInfo:
        ds = self._test_ds
        d = ds.describe(i)
        shape = ds.spec.logical_shape(ds.records[d["record"]])
        spec = ds.spec
        return SampleInfo(d["patientID"], d["fieldID"], d["instanceID"], d["key"], d["c"], d["t"], d["s"],
                          shape[0] if spec.split_c else 1, shape[1] if spec.split_t else 1,
                          shape[2] if spec.split_s else 1)
