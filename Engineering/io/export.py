"""Write a training run as a Hub repository in our format: config.json, model.safetensors, README.md."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from safetensors.torch import save_file

from Engineering.config import Config
from Engineering.errors import UserError
from Engineering.io.atomic import check_replaceable, replace_dir, staging_dir
from Engineering.io.checkpoints import checkpoint_in, read_checkpoint
from Engineering.io.hub import FORMAT, export_config


def export_run(run: str | Path, which: str, out: str | Path, describe: Callable) -> Path:
    """``describe(raw_config, where) -> (validated config, task name)`` is the engine level's (it knows the tasks;
    this layer only writes files)."""
    run, out = Path(run), Path(out)
    if not run.is_dir():
        raise UserError(f"--run {run} is not a run folder")
    check_target(out, run)
    ckpt_path = checkpoint_in(run, which) if which in ("best", "last") else Path(which)
    ckpt = read_checkpoint(ckpt_path)
    if "imlatent_config" not in ckpt:
        raise UserError(f"{ckpt_path} was not written by this tool (no imlatent_config): cannot describe the model")
    cfg, task = describe(ckpt["imlatent_config"], f"checkpoint {ckpt_path}")
    state = ckpt["state_dict"]  # a mapping of tensors (read_checkpoint checked it)
    if (
        isinstance(ckpt.get("in_channels"), bool)
        or not isinstance(ckpt.get("in_channels"), int)
        or ckpt["in_channels"] < 1
    ):
        raise UserError(
            f"{ckpt_path} records no input channel count (in_channels): it was not written by a "
            "training run of this tool"
        )
    # DiffAE runs publish their EMA weights (what inference uses); other drives their trained weights.
    prefix = "ema_net." if any(k.startswith("ema_net.") for k in state) else "net."
    weights = {k[len(prefix) :]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise UserError(f"{ckpt_path} holds no network weights (no '{prefix}*' tensors): nothing to export")
    config = export_config(cfg, int(ckpt["in_channels"]), "ema" if prefix == "ema_net." else "trained")
    config["source_checkpoint"] = {
        "file": ckpt_path.name,
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out)
    try:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "imlatent", "drive": cfg.model.drive})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "README.md").write_text(model_card(cfg, config, ckpt, run, task))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


EXPORT_FILES = ("config.json", "model.safetensors", "README.md")


def _is_export(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_target(out: Path, run: Path) -> None:
    """The export's target: new, empty, or an earlier export of ours (never the run folder or other files)."""
    check_replaceable(out, (*EXPORT_FILES, ".gitattributes"), _is_export, protect=(run,))


def _metrics(ckpt: dict, run: Path) -> list[str]:
    lines = []
    for key, cb in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and cb.get("best_model_score") is not None:
            lines.append(f"- best {cb.get('monitor', 'val_loss')}: {float(cb['best_model_score']):.5g}")
    metrics = run / "Output" / "metrics.csv"
    if metrics.is_file():
        try:
            df = pd.read_csv(metrics)
        except (ValueError, OSError) as exc:  # pandas' parser errors are ValueErrors
            raise UserError(f"{metrics} is not a readable table ({str(exc).splitlines()[0]})") from None
        for col in ("SSIM", "PSNR", "NRMSE"):
            if col in df:
                values = pd.to_numeric(df[col], errors="coerce")
                text = values.isna() & df[col].notna()  # a number the card would average as text, or fail on
                if text.any():
                    raise UserError(
                        f"{metrics}: column {col} row {int(text.to_numpy().argmax()) + 1} is "
                        f"{df[col][text].iloc[0]!r}, not a number"
                    )
                lines.append(f"- test {col} (mean over {len(df)} sample-channels): {values.mean():.4g}")
    return lines or ["- (no validation/test metrics recorded)"]


def model_card(cfg: Config, config: dict, ckpt: dict, run: Path, task: str) -> str:
    p, drive = cfg.paths, cfg.model.drive
    shape = "×".join(map(str, config["input_shape"]))
    norm = config["normalisation"]
    t = cfg.training
    schedule = f"{t.num_epochs} epochs max, batch size {t.batch_size}, lr {t.lr}, seed {t.seed}"
    return f"""---
library_name: imlatent
tags: [representation-learning, {drive.lower()}, medical-imaging, {"3d" if cfg.model.is3D else "2d"}]
---
# {run.name}

A {"3D" if cfg.model.is3D else "2D"} {drive} trained with ImLatent to produce {config["latent_dim"]}-dimensional latent
representations (task: unsupervised latent representation learning).

## Input contract
- axes: {config["axes"]}; input shape {config["in_channels"]} × {shape}
- normalisation: {norm["norm_type"]} (prenorm {norm["prenorm"]}), crop/pad to the input shape: {norm["croppad"]},
  in-plane resampling factor {norm["interp_fact"]}, complex mode {norm["complex_mode"]}
- data layout used in training: {json.dumps(config["data_selection"])}

## Training data
- file {p.datafile} in {p.datadir}; fold file {p.foldCSV or "(whole file)"}, fold {cfg.run.foldID}
- selected primaries {p.DS_selected_primaries or "(every primary)" if p.DS_every_primary else p.DS_selected_primaries};
  auxiliaries {p.DS_selected_auxiliaries or "none"}; sanity filters {p.DS_sanity_filters or "none"}
- {schedule};
  checkpoint epoch {ckpt.get("epoch")}, step {ckpt.get("global_step")}; weights: {config["weights"]}

## Metrics
{chr(10).join(_metrics(ckpt, run))}

## Use with ImLatent
```bash
python Executors/main.py --task {task} --load_hf <this repo or folder> --run_mode 2 \\
    --json§datadir /your/data --json§foldCSV 0
```
The config.json rebuilds the model; no other flag is needed. Latents are written to
`Output/emb.h5` and `emb.tsv`/`emb.parquet`. The weights are plain safetensors
(`model.safetensors`): no code from this repository is executed when loading.
"""


def push(folder: Path, repo: str, private: bool) -> str:
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo, folder_path=str(folder))
    except Exception as exc:  # network, auth and Hub errors all end the same way for the user
        raise UserError(
            f"could not push to {repo} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"the export is complete in {folder}"
        ) from None
    return str(getattr(info, "commit_url", repo))
