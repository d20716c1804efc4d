"""Small engine pieces: precision/strategy mapping, optimisers, LR decay, accumulation, atomic writes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from Engineering.config.loader import Task, resolve
from Engineering.Engines.trainer_factory import precision, strategy
from Engineering.errors import UserError, one_line
from Engineering.io.atomic import atomic_path
from Engineering.io.outputs import SampleInfo, write_emb_h5
from Engineering.Science.optimisers import accumulation_steps, make_optimiser, make_scheduler


def cfg(*args):
    return resolve(list(args), Task("t", "t")).cfg


def test_precision_on_cpu(capsys):
    assert precision(cfg("--ampmode", "16-mixed"), "cpu") == "bf16-mixed"
    assert "bf16-mixed" in capsys.readouterr().out
    assert precision(cfg("--ampmode", "16-mixed"), "gpu") == "16-mixed"
    assert precision(cfg(), "cpu") == "32"


def test_strategy_mapping(tmp_path):
    from Engineering.Engines.deepspeed_strategy import CPUDeepSpeedStrategy

    assert strategy(cfg(), "cpu") == "auto"
    assert strategy(cfg("--training_strategy", "ddp"), "cpu") == "ddp"
    # hand-stepped optimisers (a GAN's D step leaves G's parameters out): DDP must find the unused ones
    assert strategy(cfg("--training_strategy", "ddp"), "cpu", automatic=False) == "ddp_find_unused_parameters_true"
    ds = strategy(cfg("--training_strategy", "deepspeed_stage_3_offload"), "cpu")
    assert isinstance(ds, CPUDeepSpeedStrategy)
    zero = ds.config["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu" and "offload_param" in zero
    assert strategy(cfg("--training_strategy", "deepspeed_stage_1"), "cpu").config["zero_optimization"]["stage"] == 1
    with pytest.raises(
        UserError, match="several optimisers; DeepSpeed supports one optimiser; use --training_strategy ddp"
    ):
        strategy(cfg("--training_strategy", "deepspeed_stage_2"), "cpu", automatic=False)
    with pytest.raises(UserError, match="--deepspeed_config: no such file"):
        strategy(cfg("--training_strategy", "deepspeed", "--deepspeed_config", str(tmp_path / "no.json")), "cpu")
    with pytest.raises(UserError, match="--deepspeed_config needs --training_strategy deepspeed"):
        strategy(cfg("--deepspeed_config", str(tmp_path / "no.json")), "cpu")
    own = tmp_path / "ds.json"
    own.write_text('{"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": 2}')
    ds = strategy(cfg("--training_strategy", "deepspeed_stage_3", "--deepspeed_config", str(own)), "cpu")
    assert ds.config["zero_optimization"] == {"stage": 1}  # the user's file replaces the stage's defaults


def test_optimisers_and_unknown_name():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(make_optimiser(p, "adamw", 1e-3), torch.optim.AdamW)
    assert isinstance(make_optimiser(p, "RAdam", 1e-3), torch.optim.RAdam)
    assert isinstance(make_optimiser(p, "SGD", 1e-3), torch.optim.SGD)
    with pytest.raises(UserError, match="not a torch.optim optimiser.*Adam"):
        make_optimiser(p, "Adamm", 1e-3)


def test_lr_decay_step_and_plateau():
    p = [torch.nn.Parameter(torch.zeros(2))]
    c = cfg("--lr_decay_type", "1", "--training§LRDecay", "{type1: {decay_every: 2, decay_rate: 0.5}}")
    opt = make_optimiser(p, "Adam", 1.0)
    sched = make_scheduler(opt, c.training, "val_loss")["scheduler"]
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
    c = cfg("--lr_decay_type", "2", "--training§LRDecay", "{type2: {decay_rate: 0.1, patience: 0}}")
    opt = make_optimiser(p, "Adam", 1.0)
    spec = make_scheduler(opt, c.training, "val_loss")
    assert spec["monitor"] == "val_loss"
    for _ in range(3):
        spec["scheduler"].step(1.0)
    assert opt.param_groups[0]["lr"] < 1.0
    assert make_scheduler(opt, cfg().training, "val_loss") is None


@pytest.mark.parametrize("epochs,warmup,min_lr", [(10, 1, 0.0), (10, 3, 1e-5), (1, 1, 0.0), (6, 0, 1e-4)])
def test_cosine_schedule_is_warmup_then_cosine_and_resumes_at_another_length(epochs, warmup, min_lr):
    def lrs(opt, sched, n):
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    p = [torch.nn.Parameter(torch.zeros(2))]
    c = cfg(
        "--lr_decay_type",
        "3",
        "--num_epochs",
        str(epochs),
        "--training§LRDecay",
        f"{{type3: {{warmup_epochs: {warmup}, min_lr: {min_lr}}}}}",
    )
    opt = make_optimiser(p, "SGD", 1e-3)
    ours = lrs(opt, make_scheduler(opt, c.training, "val_loss")["scheduler"], epochs)
    # the reference: torch's own linear warm-up chained with cosine annealing
    ref_opt = torch.optim.SGD(p, lr=1e-3)
    w = min(warmup, max(epochs - 1, 0))
    # T_max: the epoch steps after the warm-up, so that eta_min is the last trained epoch's rate (issue 33)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=max(1, epochs - 1 - w), eta_min=min_lr)
    ref = (
        cos
        if w == 0
        else torch.optim.lr_scheduler.SequentialLR(
            ref_opt, [torch.optim.lr_scheduler.LinearLR(ref_opt, 0.1, 1.0, w), cos], milestones=[w]
        )
    )
    assert ours == pytest.approx(lrs(ref_opt, ref, epochs), rel=1e-9, abs=1e-15)
    # a run resumed with twice the epochs loads the saved state and continues on the longer schedule
    opt2 = make_optimiser(p, "SGD", 1e-3)
    longer = cfg(
        "--lr_decay_type",
        "3",
        "--num_epochs",
        str(2 * epochs),
        "--training§LRDecay",
        f"{{type3: {{warmup_epochs: {warmup}, min_lr: {min_lr}}}}}",
    )
    sched2 = make_scheduler(opt2, longer.training, "val_loss")["scheduler"]
    opt3 = make_optimiser(p, "SGD", 1e-3)
    sched3 = make_scheduler(opt3, c.training, "val_loss")["scheduler"]
    lrs(opt3, sched3, epochs)
    sched2.load_state_dict(sched3.state_dict())
    assert sched2.last_epoch == epochs and lrs(opt2, sched2, epochs)[-1] >= min_lr


def test_accumulation_steps():
    assert accumulation_steps(cfg("--batch_size", "4", "--effective_batch_size", "16").training, 1) == 4
    assert accumulation_steps(cfg("--batch_size", "4", "--effective_batch_size", "16").training, 2) == 2
    assert accumulation_steps(cfg("--batch_size", "4").training, 1) == 1


def test_atomic_write_keeps_previous_file_on_crash(tmp_path):
    target = tmp_path / "emb.h5"
    infos = [SampleInfo("p", "f", "i", "primary", None, 0, None, 1, 2, 1)]
    write_emb_h5(target, infos, np.ones((1, 4), np.float32))
    with pytest.raises(IndexError):  # t=5 does not exist in a 2-frame array: fails mid-write
        write_emb_h5(
            target, infos + [SampleInfo("p", "f", "i", "primary", None, 5, None, 1, 2, 1)], np.zeros((2, 4), np.float32)
        )
    with h5py.File(target) as h5:
        np.testing.assert_array_equal(h5["p/f/i/primary"][0, 0, 0], np.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["emb.h5"]  # no temporary left behind
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "new.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert not (tmp_path / "new.txt").exists() and len(list(tmp_path.iterdir())) == 1


def test_worker_errors_become_one_line():
    wrapped = UserError(
        "Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1\nEngineering.errors.UserError: data.h5:1/2/3/primary contains NaN/Inf'
    )
    assert one_line(wrapped) == "data.h5:1/2/3/primary contains NaN/Inf"


def test_ndevices_all_counts_the_devices_for_accumulation(tmp_path, monkeypatch):
    from Engineering.Engines import trainer_factory as TF

    c = cfg(
        "--ndevices", "-1", "--batch_size", "4", "--effective_batch_size", "16", "--no-progress_bar", "--no-tbactive"
    )
    trainer = TF.build_trainer(c, tmp_path, "val_loss", has_val=False)  # CPU: -1 is the one CPU device
    assert trainer.num_devices == 1 and trainer.accumulate_grad_batches == 4
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert TF.device_count(c, "gpu") == 2 and accumulation_steps(c.training, TF.device_count(c, "gpu")) == 2
    with pytest.raises(UserError, match="--ndevices must be"):
        TF.device_count(cfg("--ndevices", "0"), "cpu")


def test_resume_state_carries_the_cuda_generators(monkeypatch):
    from Engineering.Engines.latent_engine import LatentEngine

    states = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5, 6], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: restored.extend(s))
    engine = LatentEngine(cfg(), 1)
    ckpt: dict = {}
    engine.on_save_checkpoint(ckpt)
    assert [t.tolist() for t in ckpt["rng_states"]["cuda"]] == [[1, 2, 3], [4, 5, 6]]
    engine.on_load_checkpoint(ckpt)
    assert [t.tolist() for t in restored] == [[1, 2, 3], [4, 5, 6]]


def test_n_train_batches_one_warns_once(capsys):
    from Engineering.config.loader import resolve as _resolve
    from Engineering.Engines.MainEngine import begin

    begin(_resolve(["--n_train_batches", "1"], Task("t", "t")))
    out = capsys.readouterr().out
    assert out.count("--n_train_batches 1 trains on ONE batch") == 1
    begin(_resolve(["--n_train_batches", "1.0"], Task("t", "t")))
    begin(_resolve(["--n_train_batches", "1", "--run_mode", "2"], Task("t", "t")))  # no training: no warning
    assert "ONE batch" not in capsys.readouterr().out


def test_last_checkpoint_follows_every_epoch_when_the_monitor_gets_worse(tmp_path):
    """With Lightning 2.6's save_last, last.ckpt is written only with a new best: a run whose val_loss rises
    would resume from its best epoch. LastCheckpoint writes it every epoch; best_from_last still finds the best."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from Engineering.Engines.trainer_factory import LastCheckpoint
    from Engineering.io.checkpoints import best_from_last, read_checkpoint

    class Worse(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.w - batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", float(self.current_epoch))  # worse every epoch

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)
    ckpts = tmp_path / "Checkpoints"
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            ModelCheckpoint(dirpath=ckpts, filename="best-{epoch:03d}", monitor="val_loss", save_top_k=1),
            LastCheckpoint(ckpts),
        ],
    )
    trainer.fit(Worse(), loader, loader)
    last = read_checkpoint(ckpts / "last.ckpt")
    assert last["epoch"] == 2 and last["global_step"] == 6
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-epoch=000.ckpt", "last.ckpt"]
    assert best_from_last(ckpts) == ckpts / "best-epoch=000.ckpt"
