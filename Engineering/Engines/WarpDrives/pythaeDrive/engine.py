"""Lightning engine of the pythae WarpDrive (Chadebec et al., NeurIPS 2022): every pythae AE/VAE.

Single-optimiser models use Lightning's automatic optimisation. Multi-optimiser
models (factor_vae, aae, vaegan, piwae, ...) use manual optimisation following
the drive's contract (see WarpDrives/pythaeDrive/drive.py), with gradient
accumulation and clipping done here, since Lightning leaves both to the engine
under manual optimisation.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

import h5py
import numpy as np
import torch
from pydantic import Field, create_model

from Engineering.config import Config
from Engineering.config.flags import Flag
from Engineering.config.schema import Keys, drive_config, keys_from_dataclass
from Engineering.data.covariates import Covariates
from Engineering.data.layout import iter_datasets
from Engineering.Engines.latent_engine import LatentEngine, use_ema_flag
from Engineering.errors import UserError
from Engineering.io.atomic import atomic_path
from Engineering.Science.optimisers import accumulation_steps, make_optimiser, make_scheduler

from .network import PythaeDrive, PythaeDriveConfig, get_spec
from .network.custom_models.aux import tables_needed
from .network.custom_models.cevae import ANOMALY_SCORES
from .network.custom_models.complex import complex_data_problem

# model§pythae: the drive's own config dataclass (its defaults and types) + which model, its parameters
PythaeKeys = keys_from_dataclass(
    "PythaeKeys",
    PythaeDriveConfig,
    doc="model§pythae",
    exclude=("is3D", "in_channels", "input_shape", "latent_dim", "model_params", "data_key", "mask_key"),
    overrides={"custom_loss_class": Optional[str]},
    config_json=(
        str,
        Field(
            "",
            description="--pythae_config: a JSON file of pythae model parameters (merged into "
            "models§<model> when the config is resolved).",
        ),
    ),
    models=(
        dict[str, dict[str, Any]],
        Field({}, description="pythae parameters per model name, e.g. beta_vae: {beta: 4.0}."),
    ),
    fitted_tables=(
        dict[str, Any],
        Field(
            {},
            description="What training fitted on its phenotype/confounder "
            "tables (columns, means, standard deviations, classes); "
            "written by the run, not set by users.",
        ),
    ),
    anomaly_map=(
        str,
        Field(
            "",
            description="--anomaly_map: write each reconstructed sample's anomaly map into "
            "recon.h5 (anomaly_<c,t,s>), for models that have one (ultra_cevae): "
            "combi, grad or rec; empty = none.",
        ),
    ),
)
PythaeModelKeys = create_model("PythaeModelKeys", __base__=Keys, pythae=(PythaeKeys, PythaeKeys()))


def model_params(keys) -> tuple[Any, dict]:
    """(spec, parameters) of model§pythae§model: the section models§<name> under the model's registry name, merged
    with one under the name as spelled (``custom_ultra_vae``, ``wae_mmd``), which wins."""
    try:
        spec = get_spec(keys.model)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    params = dict(keys.models.get(spec.name) or {})
    if keys.model != spec.name:
        params.update(keys.models.get(keys.model) or {})
    return spec, params


def pythae_config(cfg: Config, in_channels: int, data_params: dict | None = None) -> PythaeDriveConfig:
    """Drive config from model§pythae§*; parameters = pythae defaults < YAML < --pythae_config < path overrides;
    ``data_params``: the model fields the data fix (phenotype/confounder column counts, custom_models/aux.py)."""
    _, params = model_params(cfg.model.pythae)
    return drive_config(
        PythaeDriveConfig,
        cfg.model.pythae,
        is3D=cfg.model.is3D,
        in_channels=in_channels,
        input_shape=tuple(cfg.model.input_shape),
        latent_dim=cfg.model.latent_dim,
        model_params={**params, **(data_params or {})},
    )


def model_covariates(cfg: Config) -> Covariates | None:
    """The phenotype/confounder tables the chosen model reads, fitted on the training split (None: it reads none)."""
    spec, params = model_params(cfg.model.pythae)
    fixed = sorted(set(params) & set(spec.data_params))
    if fixed:
        raise UserError(
            f"model§pythae§models§{spec.name}§{fixed[0]} is set from the data (json§DS_phenotypes / "
            "json§DS_confounders), not by the configuration"
        )
    phenotypes, confounders = tables_needed(spec, params)
    if not (phenotypes or confounders):
        return None
    return Covariates.fit(cfg, phenotypes, confounders, f"--pythae_model {spec.name}")


class ReconEngine(LatentEngine):
    def __init__(self, cfg: Config, in_channels: int):
        super().__init__(cfg, in_channels)
        fitted = cfg.model.pythae.fitted_tables
        self.covariates = Covariates.from_dict(fitted) if fitted else model_covariates(cfg)
        if self.covariates is not None and not fitted:  # kept in the config: checkpoints and exports carry it
            cfg.model.pythae.fitted_tables = self.covariates.to_dict()
        data_params = {}
        if self.covariates is not None:
            spec = get_spec(cfg.model.pythae.model)
            data_params = {k: v for k, v in self.covariates.data_params().items() if k in spec.data_params}
        problem = complex_data_problem(cfg.model.pythae.model, cfg.data.complex_mode)
        if problem:  # complex models read complex batches, the others real channels: refused before anything runs
            raise UserError(problem)
        self.drive_cfg = pythae_config(cfg, in_channels, data_params)
        self._aux: dict[str, dict[str, torch.Tensor]] = {}  # split -> batch entry -> per-sample rows
        self.net = PythaeDrive(self.drive_cfg)
        loss = self.net.recon_loss
        if loss is not None and loss.takes_mask and cfg.data.data_mask_mode != 2:
            raise UserError(
                f"reconstruction loss {self.drive_cfg.reconstruction_loss} ({loss.name}) reads the mask: "
                "set --data_mask_mode 2 (meta_mask.h5 into the batch)"
            )
        self.automatic_optimization = not self.net.is_multi_optimiser
        self.needs_grad_in_eval = self.net.needs_grad_in_eval
        self._touched: set[str] = set()
        self._ema_updates = 0  # EMA updates under manual optimisation (the warm-up's n)
        if cfg.training.use_ema:  # validated, embedded and decoded with the EMA when eval§test_ema (the default)
            if self.drive_cfg.model == "rhvae":
                raise UserError(
                    "--use_ema: rhvae's metric is state outside its weights (set from the training "
                    "passes at each epoch's end), which an average of the weights would not match"
                )
            self.init_ema()

    def _train_size(self) -> int:
        return len(self.trainer.datamodule.dataset("train"))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.covariates is None or stage != "fit":  # (the test phase writes latents: it reads no table rows)
            return
        self._encode_splits()

    def _encode_splits(self) -> None:
        self.covariates.load_rows(self.cfg)  # (a model rebuilt from its fitted state has none yet)
        dm = self.trainer.datamodule
        for split in ("train", "val"):
            try:
                ds = dm.dataset(split)
            except UserError:  # a split the fold does not have
                continue
            rows = self.covariates.encode([ds.records[ref.record].patientID for ref in ds.samples])
            self._aux[split] = {k: torch.from_numpy(v) for k, v in rows.items()}

    def _with_aux(self, batch: dict, split: str) -> dict:
        """The batch with the phenotype/confounder rows of its samples (``batch["index"]``: dataset positions)."""
        if split not in self._aux:
            return batch
        index = batch["index"].cpu()
        return {**batch, **{k: v[index].to(self.device) for k, v in self._aux[split].items()}}

    def training_step(self, batch, batch_idx):
        batch = self._with_aux(batch, "train")
        out = self.net(batch, epoch=self.current_epoch, dataset_size=self._train_size())
        bs = batch["inp"].shape[0]
        self.log("train_loss", out.loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs, sync_dist=True)
        for k, v in out.losses.items():
            if k != "loss":
                self.log(f"train_{k}", v, on_epoch=True, batch_size=bs, sync_dist=True)
        if self.automatic_optimization:
            return out.loss
        self._manual_step(out, batch_idx)
        return None

    def _manual_step(self, out, batch_idx: int) -> None:
        t = self.cfg.training
        accumulate = accumulation_steps(t, self.trainer.world_size)
        for step in self.net.losses_for_step(out):
            if step.loss is None:
                continue
            self.manual_backward(step.loss / accumulate, inputs=step.params, retain_graph=step.retain_graph)
            self._touched.add(step.optimiser)
        last = (batch_idx + 1) == self.trainer.num_training_batches
        if (batch_idx + 1) % accumulate == 0 or last:
            opts = self.optimizers()
            opts = opts if isinstance(opts, list) else [opts]
            for spec, opt in zip(self.net.optimiser_specs(), opts):
                if spec.name in self._touched:
                    opt.step()  # clipping happens in on_before_optimizer_step, after the AMP unscale
                opt.zero_grad()
            self._touched.clear()
            if hasattr(self, "ema_net"):  # Lightning's optimizer_step hook (LatentEngine's EMA) is automatic-only;
                # global_step counts every optimiser's steps here, so the warm-up counts updates itself
                self.update_ema(self._ema_updates)
                self._ema_updates += 1

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ema_updates"] = self._ema_updates

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._ema_updates = int(checkpoint.get("ema_updates", 0))
        self.load_run_state(checkpoint)

    def load_run_state(self, checkpoint: dict) -> None:
        """The tables' statistics the weights were trained with (a resumed or test-only run re-reads the tables,
        possibly with another fold: --run_mode 2 --json§foldCSV 0 would refit them on every patient)."""
        saved = (((checkpoint.get("imlatent_config") or {}).get("model") or {}).get("pythae") or {}).get(
            "fitted_tables"
        )
        if not saved or self.covariates is None or saved == self.cfg.model.pythae.fitted_tables:
            return
        self.covariates = Covariates.from_dict(saved)
        self.cfg.model.pythae.fitted_tables = saved
        if self._aux:  # batches already encoded with the refitted statistics: again, with the trained ones
            self._encode_splits()

    def on_before_optimizer_step(self, optimizer) -> None:
        # Under 16-mixed the gradients are still multiplied by the loss scale until Lightning's precision
        # plugin unscales them inside opt.step(), just before this hook: clipping earlier clips the scaled
        # gradients (up to 65536x too strongly). Automatic optimisation is clipped by the Trainer itself.
        t = self.cfg.training
        if not self.automatic_optimization and t.grad_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=t.grad_clip_val, gradient_clip_algorithm=t.grad_clip_algo)

    def on_train_epoch_end(self) -> None:
        self.net.on_train_epoch_end()
        if not self.automatic_optimization and self.cfg.training.lr_decay_type in (1, 3):  # per-epoch schedules
            scheds = self.lr_schedulers()
            for s in scheds if isinstance(scheds, list) else [scheds]:
                s.step()

    def on_validation_epoch_end(self) -> None:
        if (
            not self.automatic_optimization
            and self.cfg.training.lr_decay_type == 2
            and not self.trainer.sanity_checking
        ):
            metric = self.trainer.callback_metrics.get(self.monitor())
            scheds = self.lr_schedulers()
            for s in scheds if isinstance(scheds, list) else [scheds]:
                if metric is not None:
                    s.step(metric)

    def validation_step(self, batch, batch_idx):
        # hvae/rhvae/rae_gp differentiate inside their forward: the trainer runs without inference_mode for them.
        with torch.enable_grad() if self.needs_grad_in_eval else torch.no_grad():
            # the same warm-up state as training (disentangled_beta_vae's KL target, vamp's warm-up)
            net = self._net(bool(self.cfg.eval.test_ema))
            out = net(self._with_aux(batch, "val"), epoch=self.current_epoch, dataset_size=self._train_size())
        bs = batch["inp"].shape[0]
        self.log("val_loss", out.loss.detach(), on_epoch=True, prog_bar=True, batch_size=bs, sync_dist=True)
        for k, v in out.losses.items():  # every term, as in training: what a phenotype head learns shows here
            if k != "loss":
                self.log(f"val_{k}", v.detach(), on_epoch=True, batch_size=bs, sync_dist=True)

    def configure_optimizers(self):
        # From the drive's param groups: they carry group options such as rae_l2's decoder weight decay.
        t = self.cfg.training
        optimisers, schedulers = [], []
        for spec in self.net.optimiser_specs():
            opt = make_optimiser(spec.param_groups, t.optimiserID, self.lr)
            optimisers.append(opt)
            sched = make_scheduler(opt, t, self.monitor())
            if sched is not None:
                schedulers.append(sched)
        if self.automatic_optimization:
            opt = optimisers[0]
            return {"optimizer": opt, "lr_scheduler": schedulers[0]} if schedulers else opt
        return (optimisers, schedulers) if schedulers else optimisers

    def _net(self, use_ema: bool) -> PythaeDrive:
        return self.ema_net if use_ema and hasattr(self, "ema_net") else self.net

    def embed(self, x, use_ema: bool) -> torch.Tensor:
        return self._net(use_ema).embed(x)

    def reconstruct(self, x, z, use_ema: bool) -> torch.Tensor:
        net = self._net(use_ema)
        return net.decode(z) if hasattr(net, "decode") else net.reconstruct(x)

    @property
    def recon_code_name(self) -> str:
        return "anomaly" if self.cfg.model.pythae.anomaly_map else "xT"

    def reconstruct_with_code(self, x, z, use_ema: bool):
        """With --anomaly_map, the model's anomaly map is the per-sample map written beside the reconstruction."""
        recon = self.reconstruct(x, z, use_ema)
        score = self.cfg.model.pythae.anomaly_map
        if not score:
            return recon, None
        return recon, self._net(use_ema).model.anomaly_map(x, score=score).detach()

    def decode(self, z, use_ema: bool):
        net = self._net(use_ema)
        return net.decode(z) if hasattr(net, "decode") else None

    def render(self, x, codes, use_ema: bool):
        """Each code decoded (the decoder takes nothing else of x), or None without a decoder of z alone."""
        decoded = [self.decode(z, use_ema) for z in codes]
        return None if any(d is None for d in decoded) else decoded


class CovariatePredictions:
    """The extra output step of models with phenotype or adversarial confounder heads: ``pheno_pred.h5`` and
    ``conf_pred.h5`` beside emb.h5 (the ancestor's names), in emb.h5's layout (patient/field/instance/key, one
    (n_channel, n_time, n_slice, n_columns) float32 array each; NaN where no latent was computed). The heads are
    applied to the posterior means emb.h5 holds; continuous columns are in the table's units (the training
    split's standardisation undone), categorical ones the index of the predicted class; the attributes name the
    columns and each categorical column's classes."""

    def check(self, cfg, data) -> None:
        pass

    def run(self, cfg: Config, model, dm, out_dir: Path) -> dict:
        cov = getattr(model, "covariates", None)
        heads = getattr(model._net(bool(cfg.eval.test_ema)).model, "covariate_heads", None)
        if cov is None or heads is None or not (Path(out_dir) / "emb.h5").is_file():
            return {}
        heads = copy.deepcopy(heads).eval().cpu()  # (the model itself stays where and as it is)
        pheno_cols, conf_cols = cov.prediction_columns()
        written = {}
        if heads.phenotype_head is not None:

            def pheno(z):
                cont, logits = heads.predict_phenotypes(z)
                return cov.decode_phenotypes(cont.numpy(), [x.numpy() for x in logits])

            written["pheno_pred"] = _write_predictions(out_dir, "pheno_pred.h5", pheno, pheno_cols, cov.class_names())
        if heads.confounder_head is not None:

            def conf(z):
                cont, binary, logits = heads.predict_confounders(z)
                return cov.decode_confounders(cont.numpy(), binary.numpy(), [x.numpy() for x in logits])

            written["conf_pred"] = _write_predictions(out_dir, "conf_pred.h5", conf, conf_cols, cov.class_names())
        return written


@torch.no_grad()
def _write_predictions(out_dir: Path, name: str, predict, columns: list[str], classes: dict) -> str:
    """``predict`` ((N, latent) tensor -> (N, len(columns)) array) over every latent array of emb.h5."""
    out = Path(out_dir) / name
    with h5py.File(Path(out_dir) / "emb.h5", "r") as emb, atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["columns"] = json.dumps(columns)
        h5.attrs["classes"] = json.dumps({c: v for c, v in classes.items() if c in columns})
        h5.attrs["axes"] = "Channel x Time x Slice x Column"
        for key, ds in iter_datasets(emb):
            z = ds[()]
            flat = z.reshape(-1, z.shape[-1])
            done = np.isfinite(flat).all(1)
            pred = np.full((len(flat), len(columns)), np.nan, np.float32)
            if done.any():
                pred[done] = predict(torch.from_numpy(flat[done].astype(np.float32)))
            h5.require_group(f"{key.patientID}/{key.fieldID}/{key.instanceID}").create_dataset(
                key.key, data=pred.reshape(*z.shape[:-1], len(columns))
            )
    return str(out)


def _tables_why(which: int):
    """Condition of json§DS_phenotypes (0) / json§DS_confounders (1): acts only with a model that reads it."""

    def why(cfg: Config) -> str | None:
        try:
            spec, params = model_params(cfg.model.pythae)
        except UserError:
            return None  # the model name is refused on its own
        if tables_needed(spec, params)[which]:
            return None
        return (
            "is read only by a model that "
            + (
                "learns phenotypes (learn_phenotypes: true)"
                if which == 0
                else "uses confounders (anti_confounders_strategy 1 or 2, or ivaes)"
            )
            + "; "
            f"--pythae_model {spec.name} with these settings does not"
        )

    return why


def _anomaly_why(cfg: Config) -> str | None:
    """Condition of --anomaly_map: a model that computes one, a score it knows, reconstructions being written."""
    try:
        spec, _ = model_params(cfg.model.pythae)
    except UserError:
        return None
    if not hasattr(spec.model_cls, "anomaly_map"):
        return f"needs a model with an anomaly map (ultra_cevae); --pythae_model {spec.name} has none"
    if cfg.model.pythae.anomaly_map not in ANOMALY_SCORES:
        return f"takes one of {', '.join(ANOMALY_SCORES)}"
    if cfg.eval.test_emb_only:
        return "is written beside the reconstructions, which --test_emb_only turns off"
    return None


RECON_FLAGS = (
    Flag(
        "pythae_model",
        ("model", "pythae", "model"),
        "str",
        "vae",
        "pythae model name (ae, vae, beta_vae, ..., vqvae); an unknown name lists the valid ones.",
        "Model",
    ),
    Flag(
        "pythae_config",
        ("model", "pythae", "config_json"),
        "str",
        "",
        "JSON file of pythae model parameters (above the YAML's models§<name>, below path overrides).",
        "Model",
    ),
    Flag(
        "anomaly_map",
        ("model", "pythae", "anomaly_map"),
        "str",
        "",
        "Write the anomaly map of each reconstructed sample into recon.h5 (ultra_cevae: combi = error x |grad of the "
        "KL|, grad, rec).",
        "Model",
    ),
    use_ema_flag("Training"),
)
