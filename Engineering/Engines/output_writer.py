"""The output contract written by one Lightning callback (as Lightning's BasePredictionWriter, cyto-dl's tabular
saver): engines return per-batch records from ``test_step``; this writer owns the rest.

A record is a dict of batch tensors: ``index`` (sample indices into the test dataset), ``z`` (B, latent_dim) and,
unless embeddings only, ``recon`` (the reconstruction in the model's units), ``inp`` and ``affine`` (to go back
to original units) and optionally ``code`` (a per-sample code beyond z, such as DiffAE's x_T). The writer

- describes each sample from the dataset (its key and the size of its emb.h5 array),
- computes the reconstruction metrics (SSIM/PSNR/NRMSE per channel, in original units; of the magnitude for complex
  data kept complex, whose reconstructions recon.h5 keeps complex),
- holds at most ``chunk`` samples in memory: every full chunk becomes one file in the partial folder beside the
  outputs (``.Output.partial/``), written atomically (latents, indices, metric rows, the selected
  reconstructions): a kill leaves whole chunks only,
- at the end merges the chunks of every rank and every earlier attempt on rank 0 (each sample once:
  DistributedSampler pads with repeats), writes emb.h5, emb.tsv/parquet, metrics.csv, recon.h5 and preview.png
  in sample order into a staging folder and swaps it in atomically: a crash leaves the previous Output folder
  or the new one, never a mix.

Resuming an interrupted test: the partial folder records a fingerprint of what the test computes (weights,
model/data/eval configuration, the test samples); a later test with the same fingerprint skips the samples its
chunks hold (``done_samples``), so a killed whole-cohort inference continues where it stopped. A partial folder
with another fingerprint is discarded.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import pandas as pd
import torch

from Engineering.data.layout import SAMPLE_COLUMNS
from Engineering.data.transforms import invert_affine
from Engineering.errors import UserError
from Engineering.io.atomic import atomic_path, replace_dir, require_free, staging_dir, write_text
from Engineering.io.outputs import write_emb_h5, write_emb_tables, write_preview, write_recon_h5, write_table
from Engineering.Science.metrics import recon_metrics

METRIC_ORDER = list(SAMPLE_COLUMNS) + ["channel"]


def partial_dir(out_dir: str | Path) -> Path:
    """Where an unfinished test keeps its chunks: hidden, beside the Output folder."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}.partial")


def test_fingerprint(cfg, weights, ds, revision: str = "") -> dict:
    """What a test's outputs depend on: the weights (a checkpoint's path and modification time, or a Hub repo and
    its commit), the model, data and eval configuration (not the chunk or preview sizes) and the test samples.
    Equal fingerprints: equal outputs. Weights held only in memory (a test right after training without a
    checkpoint) are no file to compare: such a test gets a fingerprint of its own and never reuses chunks."""
    if not weights:
        return {"weights": f"in memory, {time.time_ns()}"}
    path = Path(str(weights))
    cfg_json = cfg.model_dump(mode="json", by_alias=True)
    eval_keys = {k: v for k, v in cfg_json["eval"].items() if k not in ("output_chunk", "n_preview")}
    return json.loads(
        json.dumps(
            {
                "weights": str(weights),
                "revision": revision,
                "weights_mtime": path.stat().st_mtime_ns if path.exists() else None,
                "model": cfg_json["model"],
                "data": cfg_json["data"],
                "eval": eval_keys,
                "samples": ds.key_digest(),
                "n_samples": len(ds),
            },
            sort_keys=True,
        )
    )


def _chunks(folder: Path) -> list[Path]:
    return sorted(folder.glob("chunk_*.h5"))


def _same_test(part: Path, fingerprint: dict) -> bool:
    record = part / "fingerprint.json"
    return record.is_file() and json.loads(record.read_text()) == fingerprint


def done_samples(out_dir: str | Path, fingerprint: dict) -> set[int]:
    """The test samples an interrupted earlier test with this fingerprint already wrote (none for another one)."""
    part = partial_dir(out_dir)
    if not _same_test(part, fingerprint):
        return set()
    done: set[int] = set()
    for path in _chunks(part):
        with h5py.File(path, "r") as h5:
            done.update(h5["index"][()].tolist())
    return done


class OutputWriter(L.Callback):
    def __init__(self, out_dir: str | Path, attrs: dict, chunk: int = 256, fingerprint: dict | None = None):
        super().__init__()
        self.out_dir, self.attrs, self.chunk = Path(out_dir), dict(attrs), max(1, int(chunk))
        self.fingerprint = fingerprint or {}
        self.summary: dict | None = None
        self.peak_buffered = 0  # the most samples held in memory at once (the chunk bound, tested)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.start(trainer.datamodule.dataset("test"), pl_module.cfg.eval, trainer)
        self.code_name = getattr(pl_module, "recon_code_name", "xT")

    def start(self, ds, ev, trainer=None) -> None:
        self.ds = ds
        self.code_name = "xT"  # what the engine's per-sample code is called in recon.h5 (DiffAE's x_T)
        patients = sorted({r.patientID for r in self.ds.records})
        if ev.save_recon_subs:
            self.recon_subs = {p.strip() for p in str(ev.save_recon_subs).split(",") if p.strip()}
        else:
            n = ev.n_save_recon_subs
            n = int(round(n * len(patients))) if isinstance(n, float) and n <= 1 else int(n)
            self.recon_subs = set(patients[:n])
        self.n_preview = int(ev.n_preview)
        self.part = partial_dir(self.out_dir)
        zero = trainer is None or trainer.is_global_zero
        if zero:
            if self.part.exists() and not _same_test(self.part, self.fingerprint):
                shutil.rmtree(self.part)  # another run's, or another model's: nothing to reuse
            self.part.mkdir(parents=True, exist_ok=True)
            write_text(self.part / "fingerprint.json", json.dumps(self.fingerprint, sort_keys=True))
        # every rank of every attempt names its chunks apart
        attempt = f"{time.time_ns():020d}" if zero else None
        self.attempt = trainer.strategy.broadcast(attempt, src=0) if trainer is not None else attempt
        self.rank = trainer.global_rank if trainer is not None else 0
        self.buffer: list[dict] = []
        self.n_chunks = self.n_previews = 0
        self.n_previews = sum(1 for _ in self._existing_previews())

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        rec = outputs
        z = rec["z"].detach().float().cpu().numpy()
        index = rec["index"].tolist()
        self._refuse_non_finite(z, index)
        recon = rec.get("recon")
        if recon is not None:
            x, recon = _model_units(rec["inp"]), _model_units(recon)
            orig_in = invert_affine(x, rec["affine"]).cpu().numpy()
            orig_rec = invert_affine(recon, rec["affine"]).cpu().numpy()
            code = rec.get("code")
            code = code.detach().float().cpu().numpy() if code is not None else None
        for j, i in enumerate(index):
            item = {"index": i, "z": z[j]}
            if recon is not None:
                info = self.ds.sample_info(i)
                item["metrics"] = [
                    {**info.row(), **row}
                    for row in recon_metrics(
                        x[j].abs().cpu() if x.is_complex() else x[j].cpu(),
                        recon[j].abs().cpu() if recon.is_complex() else recon[j].cpu(),
                    )
                ]
                if info.patientID in self.recon_subs:
                    item["recon"] = {
                        "recon": orig_rec[j],
                        "input": orig_in[j],
                        "code": None if code is None else code[j],
                    }
                if self.n_previews < self.n_preview:
                    item["preview"] = (
                        {"input": np.abs(orig_in[j]), "recon": np.abs(orig_rec[j])}
                        if np.iscomplexobj(orig_rec)
                        else {"input": orig_in[j], "recon": orig_rec[j]}
                    )
                    self.n_previews += 1
            self.buffer.append(item)
            self.peak_buffered = max(self.peak_buffered, len(self.buffer))
            if len(self.buffer) >= self.chunk:
                self._flush()

    def _refuse_non_finite(self, z: np.ndarray, index: list[int]) -> None:
        """NaN in emb.h5 means "not computed" and downstream tools drop such rows without a word: a latent that is
        not finite (NaN weights, a diverged run) stops the test before any of it becomes a result."""
        bad = ~np.isfinite(z.reshape(len(index), -1)).all(axis=1)
        if bad.any():
            first = self.ds.sample_info(index[int(np.argmax(bad))])
            raise UserError(
                f"non-finite latents for {int(bad.sum())} of {len(index)} samples of a test batch (first: "
                f"{'/'.join(map(str, first.ids))}): the weights hold "
                "NaN/inf or training diverged; nothing of this test is written as a result"
            )

    def on_exception(self, trainer, pl_module, exception) -> None:
        # stopped by SIGTERM after a whole batch: keep what is buffered as a chunk, the rerun continues after it
        if getattr(trainer, "received_sigterm", False) and getattr(self, "buffer", None):
            self._flush()

    def _existing_previews(self):
        for path in _chunks(self.part):
            with h5py.File(path, "r") as h5:
                yield from (h5["preview"] if "preview" in h5 else ())

    def _flush(self) -> None:
        items, self.buffer = self.buffer, []
        if not items:
            return
        z = np.stack([it["z"] for it in items]).astype(np.float32)
        idx = np.array([it["index"] for it in items], np.int64)
        name = f"chunk_{self.attempt}_{self.rank:04d}_{self.n_chunks:06d}.h5"
        self.n_chunks += 1
        with atomic_path(self.part / name) as tmp, h5py.File(tmp, "w") as h5:
            h5.create_dataset("z", data=z)
            h5.create_dataset("index", data=idx)
            for it in items:
                for kind in ("recon", "preview"):
                    if it.get(kind) is None:
                        continue
                    grp = h5.require_group(f"{kind}/{it['index']}")
                    for key, arr in it[kind].items():
                        if arr is not None:  # complex reconstructions stay complex
                            grp.create_dataset(
                                key, data=np.asarray(arr, np.complex64 if np.iscomplexobj(arr) else np.float32)
                            )
            rows = [row for it in items for row in it.get("metrics", ())]
            if rows:
                h5.attrs["metrics_csv"] = pd.DataFrame(rows).to_csv(index=False)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._flush()
        trainer.strategy.barrier("imlatent_outputs")
        if trainer.is_global_zero:
            self.finish()
        trainer.strategy.barrier("imlatent_outputs_done")

    def finish(self) -> None:
        """Rank 0: merge every chunk into the outputs, swap them in, drop the partial folder."""
        stage = staging_dir(self.out_dir)
        try:
            self._merge(stage)
            replace_dir(stage, self.out_dir)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        shutil.rmtree(self.part, ignore_errors=True)

    # an exception keeps the partial folder: the next test with the same fingerprint continues from its chunks

    # --- rank 0 -------------------------------------------------------------------------------------------
    def _merge(self, stage: Path) -> None:
        index, z, where = [], [], {}
        metrics, recon_at, preview_at = [], {}, {}
        for path in _chunks(self.part):
            with h5py.File(path, "r") as h5:
                rows = h5["index"][()].tolist()
                latents = h5["z"][()]
                for k, i in enumerate(rows):
                    if i not in where:  # DistributedSampler's padding repeats samples: keep each once
                        where[i] = path
                        index.append(i)
                        z.append(latents[k])
                if "metrics_csv" in h5.attrs:
                    metrics.append(
                        pd.read_csv(io.StringIO(h5.attrs["metrics_csv"]), dtype={c: str for c in SAMPLE_COLUMNS[:4]})
                    )
                for kind, at in (("recon", recon_at), ("preview", preview_at)):
                    for i in h5[kind] if kind in h5 else ():
                        at.setdefault(int(i), path)
        order = np.argsort(index, kind="stable")
        index = [index[k] for k in order]
        z = np.stack([z[k] for k in order]) if z else np.zeros((0, 0), np.float32)
        infos = [self.ds.sample_info(i) for i in index]
        recon_keys = sorted(recon_at)
        recon_bytes = 0
        for i in recon_keys:
            with h5py.File(recon_at[i], "r") as h5:
                recon_bytes += h5[f"recon/{i}/recon"].nbytes
        # emb.h5 + parquet + TSV text (~3x) of the latents, and recon.h5 (reconstruction + input + code)
        require_free(self.out_dir.parent, 5 * z.nbytes + 3 * recon_bytes, f"the outputs in {self.out_dir}")
        attrs = {**self.attrs, "n_samples": len(index)}
        write_emb_h5(stage / "emb.h5", infos, z, attrs)
        write_emb_tables(stage, infos, z)
        if metrics:
            mdf = pd.concat(metrics, ignore_index=True).drop_duplicates(METRIC_ORDER)
            mdf = mdf.sort_values(METRIC_ORDER, na_position="first")
            write_table(stage / "metrics.csv", mdf)
            self.summary = mdf[["SSIM", "PSNR", "NRMSE"]].replace([np.inf, -np.inf], np.nan).mean().to_dict()
        if recon_keys:  # recon.h5 holds only the selected subjects (--n_save_recon_subs / --save_recon_subs)
            items = self._read_items(recon_at, "recon", recon_keys)
            write_recon_h5(
                stage / "recon.h5",
                [self.ds.sample_info(i) for i in recon_keys],
                [it["recon"] for it in items],
                [it["input"] for it in items],
                attrs,
                [it["code"] for it in items],
                code_name=self.code_name,
            )
        keys = sorted(preview_at)[: self.n_preview]
        if keys:
            items = self._read_items(preview_at, "preview", keys)
            write_preview(
                stage / "preview.png",
                [it["input"] for it in items],
                [it["recon"] for it in items],
                [f"{info.patientID}/{info.key}" for info in (self.ds.sample_info(i) for i in keys)],
            )

    @staticmethod
    def _read_items(at: dict, kind: str, keys) -> list[dict]:
        out = []
        for i in keys:
            with h5py.File(at[i], "r") as h5:
                grp = h5[f"{kind}/{i}"]
                out.append({n: grp[n][()] if n in grp else None for n in ("recon", "input", "code")})
        return out


def _model_units(t: torch.Tensor) -> torch.Tensor:
    """float32, or complex64 for complex data kept complex (a real cast would drop the imaginary part)."""
    t = t.detach()
    return t.to(torch.complex64) if t.is_complex() else t.float()


def test_record(
    index: torch.Tensor,
    z: torch.Tensor,
    batch: dict | None = None,
    recon: torch.Tensor | None = None,
    code: torch.Tensor | None = None,
) -> dict:
    """What an engine's ``test_step`` returns for the writer."""
    rec = {"index": index, "z": z}
    if recon is not None:
        rec.update(recon=recon, inp=batch["inp"], affine=batch["affine"], code=code)
    return rec
