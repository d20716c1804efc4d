"""Reading weights safely and choosing checkpoints.

Weights are read with ``torch.load(..., weights_only=True, map_location='cpu')``
(a GPU checkpoint works on CPU, and no pickle executes code) or from
safetensors. A state that does not fit the model is one error naming the first
mismatching tensors.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from Engineering.errors import UserError
from Engineering.io.atomic import atomic_path, fsync_file, require_free, tensor_bytes

CHECKPOINT_DIR = "Checkpoints"


DEEPSPEED_TAG = "checkpoint"  # the tag Lightning's DeepSpeed strategy saves under


def _model_states(path: str | Path) -> Path | None:
    """The rank-0 model states file of a DeepSpeed checkpoint directory (ZeRO-1/2 and ZeRO-3 name it apart)."""
    folder = Path(path) / DEEPSPEED_TAG
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (folder / name).is_file():
            return folder / name
    return None


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    """A DeepSpeed checkpoint is a directory (shards per rank) with a rank-0 model states file."""
    return _model_states(path) is not None


def is_checkpoint(path: str | Path) -> bool:
    """A checkpoint file, or a DeepSpeed checkpoint directory."""
    return Path(path).is_file() or is_deepspeed_checkpoint(path)


@contextlib.contextmanager
def deepspeed_safe_load():
    """Every ``torch.load`` DeepSpeed makes while this is active is held to ``weights_only=True``: tensors and
    plain data, plus the three DeepSpeed classes its ZeRO optimiser states name (an enum, a dataclass, the loss
    scaler), allowed by name. DeepSpeed itself asks for full unpickling; a hostile file is refused instead."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    original = torch.load

    def load_tensors_only(*args, **kwargs):
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
            return original(*args, **kwargs)

    torch.load = load_tensors_only
    try:
        yield
    finally:
        torch.load = original


def read_deepspeed_checkpoint(path: Path) -> dict:
    """A DeepSpeed checkpoint directory as one checkpoint dict: the client state (what Lightning and our engine
    saved: loops, callbacks, RNG states, config, the fp32 EMA) and ``state_dict``, the consolidated fp32 weights
    (ZeRO-1/2/3 shards merged by DeepSpeed's own converter under :func:`deepspeed_safe_load`), with the EMA's
    ``ema_net.*`` tensors put back in the usual layout."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    states = _model_states(path)
    if states is None:
        raise UserError(f"{path} is not a DeepSpeed checkpoint (no rank-0 model states file)")
    try:
        client = torch.load(states, map_location="cpu", weights_only=True)
        quiet = io.StringIO()  # the converter prints its progress
        with deepspeed_safe_load(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            weights = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=DEEPSPEED_TAG)
    except pickle.UnpicklingError as exc:
        raise UserError(refused_pickle_message(path, exc)) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path} is not a readable DeepSpeed checkpoint ({str(exc).splitlines()[0]})") from None
    out = {
        k: v
        for k, v in client.items()
        if k
        not in (
            "module",
            "optimizer",
            "buffer_names",
            "param_shapes",
            "frozen_param_shapes",
            "shared_params",
            "frozen_param_fragments",
            "ds_config",
            "ds_version",
        )
    }
    out["state_dict"] = {
        **{k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
        **client.get("ema_state_dict", {}),
    }
    return out


def read_checkpoint(path: str | Path) -> dict:
    """The whole checkpoint dict (Lightning or plain, or a DeepSpeed directory), read without executing code."""
    path = Path(path)
    if path.is_dir() and is_deepspeed_checkpoint(path):
        return read_deepspeed_checkpoint(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return {"state_dict": load_file(str(path), device="cpu")}
        except Exception as exc:  # safetensors raises its own error types
            raise UserError(f"{path} is not a readable safetensors file ({exc})") from None
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes): not a checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(refused_pickle_message(path, exc)) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(
            f"{path} is not a checkpoint ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a state dict")
    ckpt = obj if "state_dict" in obj else {"state_dict": obj}
    check_state_dict(ckpt["state_dict"], str(path))
    return ckpt


def check_state_dict(state, source: str) -> None:
    """A state dict maps parameter names to tensors; anything else (a list, numbers) is refused here, not met as
    an AttributeError inside the loader."""
    if not isinstance(state, dict):
        raise UserError(
            f"{source}: its state_dict is a {type(state).__name__}, not a mapping of parameter names "
            "to tensors: not a checkpoint of a model"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not (isinstance(value, torch.Tensor) or key.endswith("_extra_state")):
            raise UserError(
                f"{source}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor: not a "
                "checkpoint of a model"
            )


def refused_pickle_message(path, exc: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, without torch's advice to retry unsafely."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found is None and "Unsupported global" not in text:  # not a pickle of tensors at all: random or damaged bytes
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\n", text)
        return f"{path} is not a checkpoint (unreadable: {detail.group(1).strip() if detail else type(exc).__name__})"
    what = f" ({found.group(1)})" if found else ""
    return (
        f"{path} holds Python objects other than tensors{what}; refused: checkpoints are read with "
        "weights_only=True and never unpickled"
    )


def state_mismatch(own: dict, state: dict, limit: int = 5) -> str | None:
    """What keeps ``state`` from loading into a model whose state dict is ``own`` (None if it fits): the first
    few missing, unexpected and mis-shaped tensors with their shapes (works on meta-device models too)."""
    shape = lambda t: tuple(t.shape)  # noqa: E731
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and shape(own[k]) != shape(state[k])]
    if not (missing or unexpected or wrong):
        return None

    def listing(names, fmt):
        more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
        return ", ".join(fmt(k) for k in names[:limit]) + more

    parts = []
    if wrong:
        parts.append(
            f"{len(wrong)} shape mismatch: "
            + listing(wrong, lambda k: f"{k} weights {shape(state[k])} vs model {shape(own[k])}")
        )
    if missing:
        parts.append(f"{len(missing)} missing from the weights: " + listing(missing, lambda k: f"{k} {shape(own[k])}"))
    if unexpected:
        parts.append(
            f"{len(unexpected)} unexpected in the weights: " + listing(unexpected, lambda k: f"{k} {shape(state[k])}")
        )
    hint = ""
    if any(".qkv." in k for k in missing + unexpected):
        hint = (
            " (attention blocks differ: attention sits where the running resolution, starting at "
            "max(input_shape) and halving per level, is in attn_res; check input_shape)"
        )
    return "; ".join(parts) + hint


def fit_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Adapt common layouts (bare network keys, net.* without ema_net.*) and check that every tensor fits."""
    own = model.state_dict()
    if not any(k in own for k in state) and any(f"net.{k}" in own for k in state):
        state = {f"net.{k}": v for k, v in state.items()}
    if any(k.startswith("ema_net.") for k in own) and not any(k.startswith("ema_net.") for k in state):
        state = {**state, **{f"ema_{k}": v for k, v in state.items() if k.startswith("net.")}}
    problem = state_mismatch(own, state)
    if problem:
        raise UserError(
            f"weights in {source} do not fit the model (check --is3D, --input_shape, --latent_dim and "
            f"the model§… architecture keys): {problem}"
        )
    refuse_unusable(own, state, source)
    return state


def refuse_unusable(own: dict, state: dict, source: str) -> None:
    """Weights that fit by shape but would give silent garbage: an integer or boolean tensor where the model holds
    floats (load_state_dict would cast it), or NaN/inf in a floating weight (every latent would be NaN)."""
    for name, mine in own.items():
        theirs = state.get(name)
        if not isinstance(theirs, torch.Tensor):
            continue
        if mine.is_floating_point() and not (theirs.is_floating_point() or theirs.is_complex()):
            raise UserError(
                f"weights in {source}: {name} is {str(theirs.dtype).replace('torch.', '')} where the model "
                f"holds {str(mine.dtype).replace('torch.', '')}: not trained weights of this model"
            )
        if (
            theirs.is_floating_point()
            and theirs.numel()
            and not theirs.is_meta
            and not bool(torch.isfinite(theirs).all())
        ):
            raise UserError(
                f"weights in {source}: {name} holds NaN or inf values (a diverged or damaged "
                "checkpoint); every latent would be NaN"
            )


def load_weights(model: nn.Module, path: str | Path) -> dict:
    """Load a checkpoint's weights into ``model``; returns the checkpoint dict."""
    ckpt = read_checkpoint(path)
    state = fit_state(model, ckpt["state_dict"], str(path))
    model.load_state_dict(state)
    return ckpt


def best_from_last(ckpt_dir: Path) -> Path | None:
    """The best checkpoint as ModelCheckpoint recorded it in last.ckpt (not the largest epoch number).

    The run's own Checkpoints/ comes first: a copied or moved run folder still records the original absolute
    path, which is used only when this folder lacks the file (with a warning).
    """
    last = ckpt_dir / "last.ckpt"
    if not is_checkpoint(last):
        return None
    ckpt = read_checkpoint(last)
    callbacks = ckpt.get("callbacks") or {}
    if not isinstance(callbacks, dict):
        raise UserError(
            f"{last}: its callbacks state is a {type(callbacks).__name__}, not Lightning's mapping; "
            "not a checkpoint of a run (give the best checkpoint's file with --load_model_4test)"
        )
    for key, cb_state in callbacks.items():
        if str(key).startswith("ModelCheckpoint") and isinstance(cb_state, dict) and cb_state.get("best_model_path"):
            if not isinstance(cb_state["best_model_path"], str):
                raise UserError(f"{last}: its recorded best_model_path is {cb_state['best_model_path']!r}, not a path")
            best = Path(cb_state["best_model_path"])
            if is_checkpoint(ckpt_dir / best.name):
                return ckpt_dir / best.name
            if is_checkpoint(best):
                print(f"warning: the best checkpoint {best.name} is not in {ckpt_dir}; using the recorded {best}")
                return best
    return None


def newest_readable(ckpt_dir: Path, exclude: Path | None = None) -> Path | None:
    """The most recent checkpoint in ``ckpt_dir`` that reads (for a resume whose last.ckpt is damaged)."""
    for cand in sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True):
        if cand == exclude:
            continue
        try:
            read_checkpoint(cand)
            return cand
        except UserError:
            continue
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written as a temporary file in the same folder, fsynced, then renamed over the old
    one: a kill or a full disk during a write leaves the previous checkpoint intact, never a truncated file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        require_free(Path(path).parent, tensor_bytes(checkpoint), f"checkpoint {Path(path).name}")
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            fsync_file(tmp)


def checkpoint_in(run_or_file: str | Path, which: str = "last") -> Path:
    """The one "which checkpoint" rule: a checkpoint file as given, or in a run folder (or its Checkpoints/)
    ``best`` (as ModelCheckpoint recorded it), ``last`` (last.ckpt) or ``best_or_last`` (best if recorded)."""
    if which not in ("best", "last", "best_or_last"):
        raise UserError(f"which checkpoint: best, last or best_or_last, got {which!r}")
    p = Path(run_or_file)
    if is_checkpoint(p):
        return p
    ckpt_dir = p / CHECKPOINT_DIR if (p / CHECKPOINT_DIR).is_dir() else p
    if which != "last":
        found = best_from_last(ckpt_dir)
        if found is not None:
            return found
        if which == "best":
            raise UserError(f"no best checkpoint recorded in {ckpt_dir / 'last.ckpt'}")
    if is_checkpoint(ckpt_dir / "last.ckpt"):
        return ckpt_dir / "last.ckpt"
    raise UserError(f"no checkpoint in {ckpt_dir} (expected last.ckpt)")
