"""IP-IRM (Wang et al., "Self-Supervised Learning Disentangled Group Representation as Feature", NeurIPS 2021)
on top of the SSL task: ``main_ssl.py --method ipirm``.

Alternates two steps:

- **minimisation** (every training step): SimCLR's two views; the whole-batch contrastive loss (``keep_cont``)
  plus, for every retained partition, the mean over its subsets of the InfoNCE restricted to the subset and of
  the IRMv1 penalty at ``irm_temperature`` (lambda_1 = ``penalty_weight``, optionally ramped over
  ``penalty_warmup`` epochs); the penalty has one dummy scale per logit column, as in the reference code. As in
  the reference, when lambda_1 > 1 the whole loss (the ``keep_cont`` term included) is divided by lambda_1, so
  that its gradient keeps the contrastive loss's scale (the IRMv1 paper's practice for large penalty weights).
  The minimisation step uses each partition's hard assignment (the argmax of its soft weights).
- **maximisation** (the ``Maximisation`` callback, at the start and every ``maximize_iter`` epochs): a feature
  bank (offline: two fresh views of every training sample; online: the projections training computed), then
  :func:`Engineering.Science.ipirm.maximise_partition`. Under DDP every rank builds its share of the bank, rank
  0 runs the search and broadcasts the partition.

Partitions are stored in dataset order (row i is sample i of the training split: a function of the HDF5 index,
not of workers or shuffling) and live in the checkpoint with the retained set, the last logits (warm start),
the online bank and a digest of the training split's sample keys (a resume on another split is refused). After
training, ``PartitionTable`` writes ``Output/partitions.tsv`` from the checkpoint's own sample keys (so a test
on another split still describes the training samples).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback
from pydantic import Field

from Engineering.config import Config
from Engineering.config.flags import Flag
from Engineering.config.schema import Keys
from Engineering.errors import UserError
from Engineering.io.outputs import write_table
from Engineering.Science.contrastive import nt_xent
from Engineering.Science.ipirm import FeatureBank, imix_loss, irm_penalty, maximise_partition, subset_infonce

from .engine import SSLEngine


class IPIRMKeys(Keys):
    """model§IPIRM: IP-IRM (--method ipirm). Names follow the reference code's flags."""

    env_num: int = Field(2, ge=2, description="K: subsets (orbits) per partition.")
    penalty_weight: float = Field(
        0.2,
        ge=0,
        description="lambda_1: weight of the IRM penalty in the minimisation "
        "step (> 1: the whole loss is divided by it, as in the "
        "reference).",
    )
    penalty_warmup: int = Field(0, ge=0, description="Epochs over which lambda_1 ramps linearly from 0 (0: off).")
    irm_weight_maxim: float = Field(
        0.5, ge=0, description="lambda_2: weight of the penalty in the maximisation step's objective."
    )
    irm_temperature: float = Field(0.1, gt=0, description="tau_irm: temperature of the losses inside the penalty.")
    irm_scale: Literal["column", "scalar"] = Field(
        "column",
        description="The IRMv1 penalty's dummy classifier: column, one scale per logit column (the "
        "reference code's); scalar, one scale (IRMv1's own form: a variant, not the "
        "reference's).",
    )
    maximize_iter: int = Field(50, ge=1, description="A maximisation step at the start and every this many epochs.")
    keep_cont: bool = Field(True, description="Keep the whole-batch contrastive loss next to the subsets' losses.")
    retain_group: bool = Field(
        True, description="Keep the earlier partitions in the minimisation step (else only the newest)."
    )
    retain_group_set: int = Field(10, ge=1, description="At most this many retained partitions (oldest dropped).")
    offline: bool = Field(
        True,
        description="Feature bank of two fresh views of every training sample at each "
        "maximisation step; false: the projections training computed during "
        "the previous epochs (samples not yet visited are left out).",
    )
    random_init: bool = Field(
        True, description="Start each partition search from random logits; false: from the previous search's."
    )
    constrain: bool = Field(
        True,
        description="Balance term in the partition search (the reference's --constrain): "
        "minus the entropy of a chunk's mean assignment (pushes towards equal "
        "subsets); with constrain_relax its hinge form.",
    )
    constrain_relax: bool = Field(
        True,
        description="With constrain: the term is relu(floor - entropy), inactive "
        "while no subset is more than balance_ratio times another (the "
        "reference's --constrain_relax).",
    )
    balance_ratio: float = Field(
        2.0,
        ge=1,
        description="constrain_relax's floor: the entropy of a split with one "
        "subset this many times the others (K = 2, 2:1: 0.6365, the "
        "reference's).",
    )
    max_epochs: int = Field(
        61,
        ge=1,
        description="The partition search stops after this many passes over the feature bank (the reference's 61).",
    )
    max_lr: float = Field(0.5, gt=0, description="Adam learning rate of the partition logits (the reference's).")
    max_milestones: list[int] = Field(
        [5, 35],
        description="Passes after which the search's learning rate is "
        "multiplied by max_gamma (the reference's 5 and 35).",
    )
    max_gamma: float = Field(0.2, gt=0, description="The search's learning-rate factor at each milestone.")
    max_patience: int = Field(
        5,
        ge=1,
        description="Stop the search after this many passes without a lower mean "
        "risk, once max_patience_after passes are done (the reference's "
        "5 after 51).",
    )
    max_patience_after: int = Field(51, ge=0, description="Passes before max_patience can stop the search.")
    max_chunk: int = Field(
        3096, ge=2, description="Rows of the feature bank per step of the partition search (the reference's 3,096)."
    )
    mixup: bool = Field(
        False,
        description="i-Mix in the minimisation step: the first view is an input mix, the "
        "loss weighs each sample's two targets by its own mixing weight.",
    )
    mixup_alpha: float = Field(1.0, gt=0, description="Mixing weights ~ Beta(alpha, alpha).")
    mixup_max: bool = Field(False, description="i-Mix in the maximisation step's feature bank too (offline only).")


# its command-line flags (--env_num ...), each the key of the same name
IPIRM_FLAGS = tuple(
    Flag(
        name,
        ("model", "IPIRM", name),
        typ,
        IPIRMKeys.model_fields[name].default,
        "IP-IRM: " + IPIRMKeys.model_fields[name].description,
        "Model",
    )
    for name, typ in (
        ("env_num", "int"),
        ("penalty_weight", "float"),
        ("irm_weight_maxim", "float"),
        ("maximize_iter", "int"),
        ("keep_cont", "bool"),
        ("retain_group", "bool"),
        ("offline", "bool"),
        ("random_init", "bool"),
        ("constrain", "bool"),
        ("constrain_relax", "bool"),
        ("mixup", "bool"),
        ("mixup_max", "bool"),
    )
)

KEY_FIELDS = ("patientID", "fieldID", "instanceID", "key", "c", "t", "s")


def describe_split(ds) -> dict:
    """What partition row i refers to: the training split's sample keys in dataset order (columns of plain
    values, so the checkpoint stays loadable with weights_only) and their digest (compared on resume)."""
    rows = [ds.describe(i) for i in range(len(ds))]
    return {"n": len(rows), "digest": ds.key_digest(), "keys": {f: [r[f] for r in rows] for f in KEY_FIELDS}}


class IPIRMEngine(SSLEngine):
    def __init__(self, cfg: Config, in_channels: int):
        super().__init__(cfg, in_channels)
        self.ip = cfg.model.IPIRM
        if self.n_views != 2:
            raise UserError("model§SSL§n_views: IP-IRM contrasts two views per sample; set it to 2")
        if self.ip.mixup_max and not self.ip.offline:
            raise UserError("model§IPIRM§mixup_max mixes inputs for the feature bank: it needs offline true")
        self.partitions: list[torch.Tensor] = []  # soft weights (N, K) in dataset order, oldest first
        self.partition_epochs: list[int] = []  # the epoch at whose start each was found
        self._hard: list[torch.Tensor] = []  # their hard assignments (what the minimisation step uses)
        self.theta: torch.Tensor | None = None  # the newest search's logits (warm start)
        self.split: dict | None = None  # {"n": N, "digest": ...} of the training split the partitions cover
        self.bank: dict | None = None  # online bank: {"z1", "z2", "seen"}

    def configure_callbacks(self):
        # once per Trainer (its test phase asks again)
        return [] if any(isinstance(c, Maximisation) for c in self.trainer.callbacks) else [Maximisation()]

    # --- the minimisation step
    def lambda1(self) -> float:
        w = self.ip.penalty_warmup
        return self.ip.penalty_weight * (min(1.0, self.current_epoch / w) if w else 1.0)

    def _mix(self, v1: torch.Tensor, g: torch.Generator):
        """i-Mix of the first views: per-sample lam ~ Beta(a, a) and a random partner inside the batch."""
        n = len(v1)
        rng = np.random.default_rng(int(torch.randint(2**31, (), generator=g)))
        lam = torch.from_numpy(rng.beta(self.ip.mixup_alpha, self.ip.mixup_alpha, n)).float()
        partner = torch.randperm(n, generator=g)
        shape = (n,) + (1,) * (v1.ndim - 1)
        return lam.view(shape) * v1 + (1 - lam.view(shape)) * v1[partner], lam, partner

    def _project_pair(self, net, x: torch.Tensor, g: torch.Generator, mixup: bool, per_sample=None):
        """Projections of the two views (the first mixed with i-Mix if ``mixup``); ``per_sample`` (one generator
        per sample) makes each sample's views independent of the batch it is in (the bank under DDP)."""
        if per_sample is None:
            v = self.views(x.cpu(), g)
        else:
            v = torch.cat([self.views(x[j : j + 1].cpu(), gj) for j, gj in enumerate(per_sample)])
        v1, v2, lam, partner = v[:, 0], v[:, 1], None, None
        if mixup:
            v1, lam, partner = self._mix(v1, g)
        z = net.project(net.encode(torch.cat([v1, v2]).to(x.device)))
        z1, z2 = z.chunk(2)
        mix = None if lam is None else (lam.to(x.device), partner.to(x.device))
        return z1, z2, mix

    def min_terms(self, z1, z2, idx: torch.Tensor, mix) -> dict:
        """The minimisation step's terms for a batch whose dataset rows are ``idx``."""

        def loss(member, tau, scale=1.0):
            if mix is None:
                return subset_infonce(z1, z2, member, tau, scale)
            return imix_loss(z1, z2, mix[1], mix[0], member.float(), tau, scale)

        def columns(member) -> int | None:  # the dummy scales of the penalty: one per logit column (reference)
            if self.ip.irm_scale == "scalar":
                return None
            return 2 * int(member.sum()) - 1 if mix is None else len(z1)

        full = (
            nt_xent(torch.stack([z1, z2], 1), self.tau)
            if mix is None
            else imix_loss(z1, z2, mix[1], mix[0], None, self.tau)
        )
        env_losses, penalties = [], []
        for hard_all in self._hard:
            hard = hard_all.to(idx.device)[idx]
            subsets = [hard == k for k in range(self.ip.env_num)]
            subsets = [m for m in subsets if int(m.sum()) >= 2]  # a subset needs a negative
            if not subsets:  # a batch too small for any subset: the batch as one (the logged terms stay defined)
                subsets = [torch.ones_like(hard, dtype=torch.bool)]
            conts = [loss(m, self.tau) for m in subsets]
            pens = [
                irm_penalty(lambda s, m=m: loss(m, self.ip.irm_temperature, s), columns(m), device=z1.device)
                for m in subsets
            ]
            env_losses.append(torch.stack(conts).mean())
            penalties.append(torch.stack(pens).mean())
        terms = {"train_cont": full}
        if env_losses:
            lam1 = self.lambda1()
            env, pen = torch.stack(env_losses).mean(), torch.stack(penalties).mean()
            loss = (env + full if self.ip.keep_cont else env) + lam1 * pen
            if lam1 > 1:  # the reference rescales the whole loss, keep_cont's term included
                loss = loss / lam1
            terms.update(train_env_loss=env, train_irm_penalty=pen)
            terms["train_loss"] = loss
        else:
            terms["train_loss"] = full
        return terms

    def training_step(self, batch, batch_idx):
        g = self._gen(1, self.global_step, batch_idx, self.global_rank)
        x, idx = batch["inp"], batch["index"].to(batch["inp"].device)
        z1, z2, mix = self._project_pair(self.net, x, g, self.ip.mixup)
        terms = self.min_terms(z1, z2, idx, mix)
        if not self.ip.offline:
            self._remember(idx, z1.detach(), z2.detach())
        for name, value in terms.items():
            self.log(
                name,
                value,
                on_step=name == "train_loss",
                on_epoch=True,
                prog_bar=name == "train_loss",
                batch_size=len(x),
                sync_dist=True,
            )
        self.log("train_lambda1", self.lambda1(), on_epoch=True, on_step=False, batch_size=len(x))
        return terms["train_loss"]

    def _remember(self, idx, z1, z2) -> None:
        n = self.split["n"]
        if self.bank is None:
            d = z1.shape[1]
            self.bank = {"z1": torch.zeros(n, d), "z2": torch.zeros(n, d), "seen": torch.zeros(n, dtype=torch.bool)}
        i = idx.cpu()
        self.bank["z1"][i], self.bank["z2"][i] = z1.float().cpu(), z2.float().cpu()
        self.bank["seen"][i] = True

    # --- the partitions travel with the checkpoint (exact resume) and with the weights a test loads
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ipirm"] = {
            "partitions": [p.clone() for p in self.partitions],
            "epochs": list(self.partition_epochs),
            "theta": self.theta,
            "split": self.split,
            "bank": self.bank,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.load_run_state(checkpoint)

    def load_run_state(self, checkpoint: dict) -> None:
        state = checkpoint.get("ipirm")
        if state is None:
            raise UserError("the checkpoint holds no IP-IRM partitions: it was not trained with --method ipirm")
        self.partitions = [p.clone() for p in state["partitions"]]
        self.partition_epochs = list(state["epochs"])
        self.theta, self.split, self.bank = state["theta"], state["split"], state["bank"]
        self._hard = [p.argmax(1) for p in self.partitions]

    # --- the maximisation step (run by the callback)
    def new_partition(self, bank: FeatureBank, epoch: int) -> dict:
        ip = self.ip
        warm = self.theta if (not ip.random_init and self.theta is not None) else None
        constrain = ("relax" if ip.constrain_relax else "entropy") if ip.constrain else None
        result = maximise_partition(
            bank,
            ip.env_num,
            tau=self.tau,
            tau_irm=ip.irm_temperature,
            irm_weight=ip.irm_weight_maxim,
            passes=ip.max_epochs,
            lr=ip.max_lr,
            milestones=tuple(ip.max_milestones),
            gamma=ip.max_gamma,
            patience=ip.max_patience,
            patience_after=ip.max_patience_after,
            chunk=ip.max_chunk,
            constrain=constrain,
            balance_ratio=ip.balance_ratio,
            init=warm,
            generator=self._gen(4, epoch),
            scalar_penalty=ip.irm_scale == "scalar",
        )
        return {
            "weights": result.weights,
            "theta": result.logits,
            "objective_start": result.objective_start,
            "objective": result.objective,
            "entropy": result.entropy,
            "passes": len(result.history),
        }

    def add_partition(self, found: dict, epoch: int) -> None:
        self.partitions.append(found["weights"].float().cpu())
        self.partition_epochs.append(epoch)
        self.theta = found["theta"].float().cpu()
        cap = self.ip.retain_group_set if self.ip.retain_group else 1
        del self.partitions[:-cap], self.partition_epochs[:-cap]  # FIFO: the oldest go first
        self._hard = [p.argmax(1) for p in self.partitions]


class Maximisation(Callback):
    """IP-IRM's maximisation step at the start of training and every ``maximize_iter`` epochs."""

    def on_train_start(self, trainer, m: IPIRMEngine) -> None:
        split = describe_split(trainer.datamodule.dataset("train"))
        if m.split is not None and (m.split["n"], m.split["digest"]) != (split["n"], split["digest"]):
            raise UserError(
                f"the checkpoint's IP-IRM partitions cover {m.split['n']} samples of another training "
                f"split (this one has {split['n']}, or other samples): resume with the same data and "
                "fold, or start a new run"
            )
        m.split = split

    def on_train_epoch_start(self, trainer, m: IPIRMEngine) -> None:
        epoch = trainer.current_epoch
        if epoch in m.partition_epochs or (m.partitions and epoch % m.ip.maximize_iter):
            return
        bank = self._offline_bank(trainer, m, epoch) if m.ip.offline else self._online_bank(trainer, m)
        found = None
        if trainer.is_global_zero:
            if bank is None or int(bank.seen.sum() if bank.seen is not None else len(bank.z1)) < 2 * m.ip.env_num:
                found = {"skip": True}  # online bank before any training: nothing to partition yet
            else:
                found = m.new_partition(bank, epoch)
        found = trainer.strategy.broadcast(found, src=0)
        if found.get("skip"):
            return
        m.add_partition(found, epoch)
        hard = found["weights"].argmax(1)
        sizes = torch.bincount(hard, minlength=m.ip.env_num).tolist()
        m.log("ipirm_max_objective", float(found["objective"]), on_epoch=True, on_step=False)
        if trainer.is_global_zero:
            print(
                f"IP-IRM epoch {epoch}: partition {len(m.partition_epochs)} (subset sizes {sizes}), objective "
                f"{found['objective_start']:.4g} -> {found['objective']:.4g} in {found['passes']} passes"
            )

    @staticmethod
    def _gather(trainer, obj):
        if trainer.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * trainer.world_size
        dist.all_gather_object(out, obj)
        return out

    @torch.no_grad()
    def _offline_bank(self, trainer, m: IPIRMEngine, epoch: int) -> FeatureBank | None:
        dm = trainer.datamodule
        rank, world = trainer.global_rank, trainer.world_size
        mixup = m.ip.mixup_max
        was_training = m.net.training
        m.net.eval()  # the bank describes the current representation: BatchNorm's running statistics
        rows, z1s, z2s, partners, lams, chunks = [], [], [], [], [], []
        try:
            for b, batch in enumerate(dm.ordered_loader("train", rank, world)):
                x = dm.on_after_batch_transfer(trainer.strategy.batch_to_device(batch), 0)["inp"]
                idx = batch["index"].long()
                # a sample's views depend on (seed, epoch, sample), not on which rank or batch holds it
                z1, z2, mix = m._project_pair(
                    m.net, x, m._gen(3, epoch, b, rank), mixup, per_sample=[m._gen(3, epoch, -1, int(i)) for i in idx]
                )
                rows.append(idx)
                z1s.append(z1.float().cpu())
                z2s.append(z2.float().cpu())
                if mix is not None:
                    lams.append(mix[0].cpu())
                    partners.append(idx[mix[1].cpu()])
                chunks.append(idx)
        finally:
            m.net.train(was_training)
        share = {"rows": rows, "z1": z1s, "z2": z2s, "partner": partners, "lam": lams}
        shares = self._gather(trainer, share)
        if not trainer.is_global_zero:
            return None
        n = m.split["n"]
        d = z1s[0].shape[1]
        bank = FeatureBank(torch.zeros(n, d), torch.zeros(n, d))
        all_chunks = []
        if mixup:
            bank.partner, bank.lam = torch.zeros(n, dtype=torch.long), torch.zeros(n)
        for sh in shares:
            for j, idx in enumerate(sh["rows"]):
                bank.z1[idx], bank.z2[idx] = sh["z1"][j], sh["z2"][j]
                if mixup:
                    bank.partner[idx], bank.lam[idx] = sh["partner"][j], sh["lam"][j]
                all_chunks.append(idx)
        if mixup:
            bank.chunks = all_chunks  # a mix's partner must be in its chunk
        return bank

    def _online_bank(self, trainer, m: IPIRMEngine) -> FeatureBank | None:
        shares = self._gather(trainer, m.bank)
        if not trainer.is_global_zero or all(s is None for s in shares):
            return None
        shares = [s for s in shares if s is not None]
        seen = torch.stack([s["seen"] for s in shares]).any(0)
        bank = FeatureBank(torch.zeros_like(shares[0]["z1"]), torch.zeros_like(shares[0]["z2"]), seen=seen)
        for s in shares:  # a sample another rank saw later overwrites: any rank's recent view will do
            bank.z1[s["seen"]], bank.z2[s["seen"]] = s["z1"][s["seen"]], s["z2"][s["seen"]]
        return bank


class PartitionTable:
    """The IP-IRM task's extra output: ``Output/partitions.tsv``, one row per training sample and partition, with
    its hard subset and soft weights, so that a user can see which acquisition effect each orbit captured."""

    def check(self, cfg, data) -> None:
        return None

    def run(self, cfg, model, dm, out_dir: Path) -> dict:
        if not isinstance(model, IPIRMEngine):
            return {}
        if not model.partitions:
            print("IP-IRM: no partition to export (the model has not been trained)")
            return {}
        # the samples the partitions were found on, from the checkpoint (whatever split this run tests)
        keys = pd.DataFrame(model.split["keys"])
        parts = []
        for number, (weights, epoch) in enumerate(zip(model.partitions, model.partition_epochs)):
            w = weights.numpy()
            part = keys.copy()
            part.insert(0, "sample", np.arange(len(keys)))
            part["partition"], part["found_at_epoch"], part["subset"] = number, epoch, w.argmax(1)
            for k in range(w.shape[1]):
                part[f"w{k}"] = w[:, k]
            parts.append(part)
        table = pd.concat(parts, ignore_index=True)
        write_table(out_dir / "partitions.tsv", table, sep="\t")
        print(
            f"IP-IRM partitions written to {out_dir / 'partitions.tsv'} ({len(parts)} partitions of {len(keys)} "
            "training samples)"
        )
        return {"partitions": str(out_dir / "partitions.tsv")}
