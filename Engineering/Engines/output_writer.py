"""The output contract written by one Lightning callback (as Lightning's BasePredictionWriter, cyto-dl's tabular
saver): engines return per-batch records from ``test_step``; this writer owns the rest.

A record is a dict of batch tensors: ``index`` (sample indices into the test dataset), ``z`` (B, latent_dim) and,
unless embeddings only, ``recon`` (the reconstruction in the model's units), ``inp`` and ``affine`` (to go back
to original units) and optionally ``code`` (a per-sample code beyond z, such as DiffAE's x_T). The writer

- describes each sample from the dataset (its key and the size of its emb.h5 array),
- computes the reconstruction metrics (SSIM/PSNR/NRMSE per channel, in original units),
- holds at most ``chunk`` samples in memory: every full chunk goes to this rank's shard files in the staging
  folder (latents and reconstructions to an HDF5 shard, metric rows to a CSV shard),
- at the end merges the shards of every rank on rank 0 (each sample once: DistributedSampler pads with
  repeats), writes emb.h5, emb.tsv/parquet, metrics.csv, recon.h5 and preview.png in sample order, and swaps
  the staging folder in atomically: a crash leaves the previous Output folder or the new one, never a mix.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import pandas as pd
import torch

from Engineering.data.layout import SAMPLE_COLUMNS
from Engineering.data.transforms import invert_affine
from Engineering.io.atomic import replace_dir, require_free, staging_dir
from Engineering.io.outputs import write_emb_h5, write_emb_tables, write_preview, write_recon_h5, write_table
from Engineering.Science.metrics import recon_metrics

METRIC_ORDER = list(SAMPLE_COLUMNS) + ["channel"]


class OutputWriter(L.Callback):
    def __init__(self, out_dir: str | Path, attrs: dict, chunk: int = 256):
        super().__init__()
        self.out_dir, self.attrs, self.chunk = Path(out_dir), dict(attrs), max(1, int(chunk))
        self.summary: dict | None = None
        self.peak_buffered = 0  # the most samples held in memory at once (a test checks the bound)

    # --- per rank ------------------------------------------------------------------------------------------
    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.ds = trainer.datamodule.dataset("test")
        ev = pl_module.cfg.eval
        patients = sorted({r.patientID for r in self.ds.records})
        if ev.save_recon_subs:
            self.recon_subs = {p.strip() for p in str(ev.save_recon_subs).split(",") if p.strip()}
        else:
            n = ev.n_save_recon_subs
            n = int(round(n * len(patients))) if isinstance(n, float) and n <= 1 else int(n)
            self.recon_subs = set(patients[:n])
        self.n_preview = int(ev.n_preview)
        # every rank writes its shards into the same staging folder, made by rank 0
        stage = staging_dir(self.out_dir) if trainer.is_global_zero else None
        self.stage = Path(trainer.strategy.broadcast(str(stage) if stage else None, src=0))
        self.rank = trainer.global_rank
        self.shard = h5py.File(self.stage / f".shard{self.rank}.h5", "w")
        self.metrics_shard = self.stage / f".metrics{self.rank}.csv"
        self.buffer: list[dict] = []
        self.n_latents = self.n_previews = 0

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        rec = outputs
        z = rec["z"].detach().float().cpu().numpy()
        index = rec["index"].tolist()
        recon = rec.get("recon")
        if recon is not None:
            x = rec["inp"].detach().float()
            recon = recon.detach().float()
            orig_in = invert_affine(x, rec["affine"]).cpu().numpy()
            orig_rec = invert_affine(recon, rec["affine"]).cpu().numpy()
            code = rec.get("code")
            code = code.detach().float().cpu().numpy() if code is not None else None
        for j, i in enumerate(index):
            item = {"index": i, "z": z[j]}
            if recon is not None:
                info = self.ds.sample_info(i)
                item["metrics"] = [{**info.row(), **row} for row in recon_metrics(x[j].cpu(), recon[j].cpu())]
                if info.patientID in self.recon_subs:
                    item["recon"] = {"recon": orig_rec[j], "input": orig_in[j], "code": None if code is None else code[j]}
                if self.n_previews < self.n_preview:
                    item["preview"] = {"input": orig_in[j], "recon": orig_rec[j]}
                    self.n_previews += 1
            self.buffer.append(item)
            self.peak_buffered = max(self.peak_buffered, len(self.buffer))
            if len(self.buffer) >= self.chunk:
                self._flush()

    def _flush(self) -> None:
        items, self.buffer = self.buffer, []
        if not items:
            return
        h5 = self.shard
        z = np.stack([it["z"] for it in items]).astype(np.float32)
        idx = np.array([it["index"] for it in items], np.int64)
        if "z" not in h5:
            h5.create_dataset("z", shape=(0, z.shape[1]), maxshape=(None, z.shape[1]), dtype=np.float32,
                              chunks=(min(self.chunk, 1024), z.shape[1]))
            h5.create_dataset("index", shape=(0,), maxshape=(None,), dtype=np.int64)
        n = self.n_latents
        for name, arr in (("z", z), ("index", idx)):
            h5[name].resize(n + len(arr), axis=0)
            h5[name][n:] = arr
        self.n_latents += len(items)
        for it in items:
            for kind in ("recon", "preview"):
                if it.get(kind) is None:
                    continue
                grp = h5.require_group(f"{kind}/{it['index']}")
                for name, arr in it[kind].items():
                    if arr is not None:
                        grp.create_dataset(name, data=np.asarray(arr, np.float32))
        rows = [row for it in items for row in it.get("metrics", ())]
        if rows:
            pd.DataFrame(rows).to_csv(self.metrics_shard, mode="a", header=not self.metrics_shard.exists(),
                                      index=False)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        try:
            self._flush()
        finally:
            self.shard.close()
        trainer.strategy.barrier("imlatent_outputs")
        if trainer.is_global_zero:
            try:
                self._merge(trainer.world_size)
                replace_dir(self.stage, self.out_dir)
            except BaseException:
                shutil.rmtree(self.stage, ignore_errors=True)
                raise
        trainer.strategy.barrier("imlatent_outputs_done")

    def on_exception(self, trainer, pl_module, exception) -> None:
        shard = getattr(self, "shard", None)
        if shard is not None and shard.id.valid:
            shard.close()
        if trainer.is_global_zero and getattr(self, "stage", None) is not None:
            shutil.rmtree(self.stage, ignore_errors=True)  # nothing half-written replaces the previous outputs

    # --- rank 0 -------------------------------------------------------------------------------------------
    def _merge(self, world: int) -> None:
        shards = [h5py.File(self.stage / f".shard{r}.h5", "r") for r in range(world)]
        try:
            index, z, where = [], [], {}
            for r, h5 in enumerate(shards):
                if "index" not in h5:
                    continue
                for k, i in enumerate(h5["index"][()].tolist()):
                    if i not in where:  # DistributedSampler's padding repeats samples: keep each once
                        where[i] = r
                        index.append(i)
                        z.append(h5["z"][k])
            order = np.argsort(index, kind="stable")
            index = [index[k] for k in order]
            z = np.stack([z[k] for k in order]) if z else np.zeros((0, 0), np.float32)
            infos = [self.ds.sample_info(i) for i in index]
            recon_keys = sorted({int(i) for h5 in shards if "recon" in h5 for i in h5["recon"]})
            recon_bytes = sum(grp["recon"].nbytes for h5 in shards if "recon" in h5 for grp in h5["recon"].values())
            # emb.h5 + parquet + TSV text (~3x) of the latents, and recon.h5 (reconstruction + input + code)
            require_free(self.out_dir.parent, 5 * z.nbytes + 3 * recon_bytes, f"the outputs in {self.out_dir}")
            attrs = {**self.attrs, "n_samples": len(index)}
            write_emb_h5(self.stage / "emb.h5", infos, z, attrs)
            write_emb_tables(self.stage, infos, z)
            self._merge_metrics(world)
            if recon_keys:
                self._merge_recon(shards, recon_keys, attrs)
            self._merge_preview(shards)
        finally:
            for h5 in shards:
                h5.close()
            for r in range(world):
                (self.stage / f".shard{r}.h5").unlink(missing_ok=True)
                (self.stage / f".metrics{r}.csv").unlink(missing_ok=True)

    def _merge_metrics(self, world: int) -> None:
        parts = [pd.read_csv(p, dtype={c: str for c in SAMPLE_COLUMNS[:4]})
                 for p in (self.stage / f".metrics{r}.csv" for r in range(world)) if p.is_file()]
        if not parts:
            return
        mdf = pd.concat(parts, ignore_index=True).drop_duplicates(METRIC_ORDER)
        mdf = mdf.sort_values(METRIC_ORDER, na_position="first")
        write_table(self.stage / "metrics.csv", mdf)
        self.summary = mdf[["SSIM", "PSNR", "NRMSE"]].replace([np.inf, -np.inf], np.nan).mean().to_dict()

    def _read_items(self, shards, kind: str, keys) -> list[dict]:
        out = []
        for i in keys:
            grp = next(h for h in shards if f"{kind}/{i}" in h)[f"{kind}/{i}"]
            out.append({n: grp[n][()] if n in grp else None for n in ("recon", "input", "code")})
        return out

    def _merge_recon(self, shards, keys: list[int], attrs: dict) -> None:
        # recon.h5 holds only the selected subjects (--n_save_recon_subs / --save_recon_subs)
        items = self._read_items(shards, "recon", keys)
        write_recon_h5(self.stage / "recon.h5", [self.ds.sample_info(i) for i in keys], [it["recon"] for it in items],
                       [it["input"] for it in items], attrs, [it["code"] for it in items])

    def _merge_preview(self, shards) -> None:
        keys = sorted({int(i) for h5 in shards if "preview" in h5 for i in h5["preview"]})[:self.n_preview]
        if not keys:
            return
        items = self._read_items(shards, "preview", keys)
        infos = [self.ds.sample_info(i) for i in keys]
        write_preview(self.stage / "preview.png", [it["input"] for it in items], [it["recon"] for it in items],
                      [f"{info.patientID}/{info.key}" for info in infos])


def test_record(index: torch.Tensor, z: torch.Tensor, batch: dict | None = None, recon: torch.Tensor | None = None,
                code: torch.Tensor | None = None) -> dict:
    """What an engine's ``test_step`` returns for the writer."""
    rec = {"index": index, "z": z}
    if recon is not None:
        rec.update(recon=recon, inp=batch["inp"], affine=batch["affine"], code=code)
    return rec
