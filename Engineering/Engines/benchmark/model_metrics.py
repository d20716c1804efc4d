"""The --run metrics of each model, one function per metric family.

Rotation/flip sensitivity, the reference's rotation invariance error and reconstruction errors (MSE; the reference's
Chamfer for point clouds) (Eval/invariance.py), rotation invariance at arbitrary angles and pose equivariance (random
rotations, SO(3) in 3D; Eval/rotation.py), the reference's evolution energy and embedding distance and our decoded
path ratio and interpolation distance (Eval/interpolation.py), latent usage (Eval/latent_usage.py) and efficiency
(parameters, time and peak memory of encoding on this CPU; Eval/efficiency.py). Errors are in the model's
normalised input units (point clouds: their coordinates).

What a model can do is asked of its engine through the protocols of Engines/capabilities.py (``Reconstructs``,
``Decodes``, ``Renders``, ``Poses``); a family that does not apply raises :class:`NotApplicable`, recorded as a
skip with the reason. Torch and Lightning are imported only when a model is scored (``--run``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from Engineering.Engines.capabilities import Decodes, Poses, Reconstructs, Renders
from Engineering.errors import UserError
from Engineering.Eval import baselines, efficiency, interpolation, invariance, latent_usage, rotation
from Engineering.Eval.result import MetricResult

MODEL_METRICS = {
    **invariance.METRICS,
    **rotation.METRICS,
    **interpolation.METRICS,
    **latent_usage.METRICS,
    **efficiency.METRICS,
}


class NotApplicable(Exception):
    """A model-dependent metric that does not apply to this model: recorded as a skip with the reason."""


def needs(ok: bool, reason: str) -> None:
    if not ok:
        raise NotApplicable(reason)


class Probe:
    """One saved run (a SavedRun) and its benchmark inputs, with what several families share: the latents of
    the inputs, the own-code reconstructions and the grouped families' results, each computed once."""

    def __init__(self, model, images: np.ndarray, args, all_latents: np.ndarray | None = None):
        self.model, self.images, self.args, self.all_latents = model, images, args, all_latents
        self.engine = model.engine
        self.bs = int(model.cfg.training.batch_size)
        self.kind = model.engine.input_kind
        self.points = self.kind == "points"
        self.dim = 3 if self.points or model.cfg.model.is3D else 2
        self.spatial = images.shape[-self.dim :] if len(images) and not self.points else ()
        self.cache: dict = {}

    def batched(self, fn, x: np.ndarray) -> np.ndarray:
        from Engineering.Engines.saved_runs import batched

        return batched(fn, x, self.bs)

    def encode(self, x: np.ndarray) -> np.ndarray:
        return self.batched(self.model.encode, x)

    def latents(self) -> np.ndarray:
        if "Z" not in self.cache:
            self.cache["Z"] = self.encode(self.images)
        return self.cache["Z"]

    def targets(self) -> np.ndarray:
        """What a decoder's output is compared with: the images, or the clouds' (N, 3) coordinates."""
        return self.images[:, :3].transpose(0, 2, 1) if self.points else self.images

    def rotatable(self) -> None:
        needs(
            self.points or len(set(self.spatial)) == 1,
            f"rotations need a square / cubic input, got {'x'.join(map(str, self.spatial))}",
        )
        needs(len(self.images) > 1, "needs 2 or more samples (the between-sample spread)")

    def square_in_plane(self) -> None:
        needs(
            self.images.shape[-1] == self.images.shape[-2],
            f"90° rotations need square in-plane inputs, got {self.images.shape[-2]}x{self.images.shape[-1]}",
        )

    def has_decoder(self) -> None:
        """A decoder of a latent alone (interpolations decode latents between samples)."""
        needs(len(self.images) > 1, "needs 2 or more samples")
        needs(
            isinstance(self.engine, Decodes) and self.decoded(self.latents()[:1]) is not None,
            "the model has no decoder of a latent alone (DiffAE also needs x_T; encoders have none)",
        )

    def decoded(self, z: np.ndarray):
        import torch

        with torch.no_grad():
            return self.model.decode(torch.from_numpy(np.asarray(z, np.float32)))

    def render(self, x: np.ndarray, codes: list[np.ndarray]) -> list[np.ndarray]:
        """x rendered with each of ``codes`` (Renders), batch by batch."""
        import torch

        needs(isinstance(self.engine, Renders), "the model has no decoder conditioned on a latent")
        outs: list[list[np.ndarray]] = [[] for _ in codes]
        for i in range(0, len(x), self.bs):
            with torch.no_grad():
                got = self.model.render(
                    torch.from_numpy(np.ascontiguousarray(x[i : i + self.bs], np.float32)),
                    [torch.from_numpy(np.asarray(c[i : i + self.bs], np.float32)) for c in codes],
                )
            needs(got is not None, "the model has no decoder conditioned on a latent")
            for out, r in zip(outs, got):
                out.append(r.float().numpy())
        return [np.concatenate(o) for o in outs]

    def own_reconstruction(self, x: np.ndarray) -> np.ndarray:
        """A cloud's own code, decoded in its own frame: the model's reconstruction."""
        if "recon" not in self.cache:
            self.cache["recon"] = self.render(self.images, [self.latents()])[0]
        return self.cache["recon"]


# --- the families (each: Probe -> MetricResult, or NotApplicable)
def rotation_sensitivity(p: Probe) -> MetricResult:
    needs(not p.points, "90° image rotations and flips; for point clouds see rotation_invariance(_error)")
    p.square_in_plane()
    return invariance.rotation_sensitivity(p.encode, p.images, p.args.n_boot, p.args.seed)


def rotation_invariance(p: Probe) -> MetricResult:
    p.rotatable()
    return rotation.rotation_invariance(p.encode, p.images, p.dim, p.args.n_boot, p.args.seed, kind=p.kind)


def rotation_invariance_error(p: Probe) -> MetricResult:
    if not p.points:
        p.square_in_plane()
    return invariance.rotation_invariance_error(p.encode, p.images, p.bs, p.args.n_boot, p.args.seed, kind=p.kind)


def pose_equivariance_error(p: Probe) -> MetricResult:
    import torch

    p.rotatable()
    with torch.no_grad():
        needs(
            isinstance(p.engine, Poses) and p.model.pose(torch.from_numpy(p.images[:1]).float()) is not None,
            "the model has no pose output",
        )
    return rotation.pose_equivariance_error(
        lambda x: p.batched(p.model.pose, x), p.images, p.dim, p.args.n_boot, p.args.seed, kind=p.kind
    )


def reconstruction_mse(p: Probe) -> MetricResult:
    needs(not p.points, "point clouds: see reconstruction_chamfer (the reference's Chamfer loss)")
    needs(isinstance(p.engine, Reconstructs), "the model has no decoder: it does not reconstruct")
    return invariance.reconstruction_mse(
        lambda x: p.batched(p.model.reconstruct, x), p.images, p.args.n_boot, p.args.seed
    )


def reconstruction_chamfer(p: Probe) -> MetricResult:
    needs(p.points, "images: see reconstruction_mse")
    return invariance.reconstruction_chamfer(p.own_reconstruction, p.images, p.args.n_boot, p.args.seed)


def reconstruction_sinkhorn(p: Probe) -> MetricResult:
    needs(p.points, "images: see reconstruction_mse")
    return invariance.reconstruction_sinkhorn(p.own_reconstruction, p.images, p.args.n_boot, p.args.seed)


def evolution_energy(p: Probe) -> MetricResult:
    """The reference's: decoded interpolants against the real ends (in each end's own pose)."""
    p.has_decoder()
    return interpolation.evolution_energy(
        lambda x, z: p.render(x, [z])[0],
        p.images,
        p.latents(),
        p.targets(),
        invariance.chamfer_sum if p.points else latent_usage.mse,
        p.args.n_boot,
        p.args.seed,
    )


def embedding_distance(p: Probe) -> MetricResult:
    needs(len(p.images) > 1, "needs 2 or more samples")
    Z = p.latents()
    same = p.all_latents is not None and np.shape(p.all_latents)[1:] == Z.shape[1:]
    pool = np.concatenate([Z, p.all_latents]) if same else Z
    return interpolation.embedding_distance(Z, p.args.n_boot, p.args.seed, pool=pool)


def interpolated(family: str, p: Probe) -> MetricResult:
    """decoded_path_ratio / interpolation_distance: decoded latent segments ("real" = the decoded latents of the
    real samples), computed once for both."""
    if "paths" not in p.cache:
        p.has_decoder()
        Z = p.latents()
        decode = partial(p.batched, p.model.decode)
        p.cache["paths"] = interpolation.interpolation_metrics(decode, Z, decode(Z), p.args.n_boot, p.args.seed)
    return p.cache["paths"][family]


def _chamfer(a, b) -> np.ndarray:
    import torch

    from Engineering.Science.chamfer import chamfer_distance

    return (
        chamfer_distance(torch.from_numpy(np.asarray(a, np.float32)), torch.from_numpy(np.asarray(b, np.float32)))
        .double()
        .numpy()
    )


def usage(family: str, p: Probe) -> MetricResult:
    """The latent-usage families (Eval/latent_usage.py), computed once for all of them."""
    if "usage" not in p.cache:
        needs(len(p.images) > 1, "needs 2 or more samples")
        p.cache["usage"] = latent_usage.latent_usage(
            p.render,
            p.images,
            p.latents(),
            p.targets(),
            p.args.n_boot,
            p.args.seed,
            _chamfer if p.points else latent_usage.mse,
        )
    return p.cache["usage"][family]


def measured(family: str, p: Probe) -> MetricResult:
    """The efficiency families, measured once, on one batch of the model's inputs."""
    if "efficiency" not in p.cache:
        p.cache["efficiency"] = efficiency.efficiency(
            p.engine, p.model.encode, efficiency.as_tensor(p.images[: p.bs], "cpu"), co2_country=p.args.co2_country
        )
    return p.cache["efficiency"][family]


FAMILIES: dict[str, Callable[[Probe], MetricResult]] = {
    "rotation_sensitivity": rotation_sensitivity,
    "rotation_invariance": rotation_invariance,
    "rotation_invariance_error": rotation_invariance_error,
    "pose_equivariance_error": pose_equivariance_error,
    "reconstruction_mse": reconstruction_mse,
    "reconstruction_chamfer": reconstruction_chamfer,
    "reconstruction_sinkhorn": reconstruction_sinkhorn,
    "evolution_energy": evolution_energy,
    "embedding_distance": embedding_distance,
    **{f: partial(interpolated, f) for f in ("decoded_path_ratio", "interpolation_distance")},
    **{f: partial(usage, f) for f in latent_usage.METRICS},
    **{f: partial(measured, f) for f in efficiency.METRICS},
}


def model_metrics(model, images: np.ndarray, args, all_latents: np.ndarray | None = None) -> dict:
    """family -> a function computing it for one model (raising NotApplicable where it does not apply);
    ``all_latents``: the run's latents of every benchmark sample (the embedding distance's pool)."""
    probe = Probe(model, images, args, all_latents)
    return {family: partial(fn, probe) for family, fn in FAMILIES.items()}


def load_models(items: list[str], paths: dict[str, Path], samples, args) -> dict:
    """--run latents-name -> (the run's rebuilt model, its input images); a run folder is matched to --latents
    by its name.

    Images are the benchmark's common samples as each model's own data pipeline prepares them (normalised,
    cropped) from --pixels if given, else from the data file of the run's config; a seeded subset of
    --run_max_samples.
    """
    from Engineering.Engines.benchmark.inputs import default_name
    from Engineering.Engines.saved_runs import load_run, sample_images  # torch and Lightning only with --run

    models = {}
    for item in items:
        name, sep, rest = item.partition("=")
        if sep and name and "/" not in name and not Path(item).exists():
            path = Path(rest)
        else:
            path = Path(item)
            in_checkpoints = path.is_file() and path.parent.name == "Checkpoints"
            name = path.parent.parent.name if in_checkpoints else default_name(path)
        if name not in paths:
            raise UserError(
                f"--run {item}: no --latents run is named '{name}' (runs: {', '.join(paths)}); use --run NAME=RUN_DIR"
            )
        model = load_run(path)
        datafile = args.pixels if model.engine.input_kind == "image" else None  # clouds: the run's own file
        models[name] = (model, sample_images(model, samples.source_rows, datafile, args.run_max_samples, args.seed))
    return models


def score_models(results: dict, models: dict, args, notes: list[str], latents: dict | None = None) -> None:
    """Add the model-dependent families (module docstring) of each --run model to its run's ``results``; a run
    without a model, a model without benchmark samples and a family that does not apply are skips."""
    for name, per in results.items():
        if name in baselines.NAMES:
            continue
        if name not in models:
            for family, (direction, _) in MODEL_METRICS.items():
                per[family] = MetricResult.skip(direction, "no --run model folder for this run")
            continue
        model, images = models[name]
        compute = model_metrics(model, images, args, None if latents is None else latents.get(name))
        for family, (direction, _) in MODEL_METRICS.items():
            if not len(images):
                per[family] = MetricResult.skip(direction, "none of the benchmark samples is in the model's data file")
                continue
            print(f"{family} of {name}: {len(images)} samples ({model.checkpoint})")
            try:
                per[family] = compute[family]()
            except NotApplicable as why:
                per[family] = MetricResult.skip(direction, str(why))
            except Exception as exc:  # noqa: BLE001 - reported as a skip, like every metric (see Eval/suite.py)
                if args.debug:
                    raise
                per[family] = MetricResult.skip(direction, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
            if family == "latent_usage_swap" and (per[family].note or "").startswith("the decoder ignores"):
                notes.append(f"{name}: {per[family].note}")
        notes.append(
            f"model-dependent metrics of {name}: {model.checkpoint}, {len(images)} samples, "
            f"{'EMA' if model.use_ema else 'raw'} weights; errors in the model's normalised input units"
        )
