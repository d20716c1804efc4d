"""Every registered task's engine says what it can do by the methods it defines (Engines/capabilities.py): the
engine core defines none of them, no engine defines one only to refuse it, and a built engine's capability methods
return what their protocols document. Parametrised over the registry: a new family is checked by registering it."""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from Engineering.config.loader import resolve
from Engineering.Engines import registry, saved_runs
from Engineering.Engines.capabilities import CAPABILITIES, Decodes, Poses, Reconstructs, ReconstructsWithCode, Renders
from Engineering.Engines.latent_engine import LatentEngine

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = {P: next(n for n in vars(P) if not n.startswith("_") and callable(vars(P)[n])) for P in CAPABILITIES}
TASKS = sorted(registry.tasks(), key=str.lower)


def _subclasses(cls: type) -> set[type]:
    return {c for s in cls.__subclasses__() for c in (s, *_subclasses(s))}


def _engine_classes(spec) -> list[type]:
    """The task's engine class, or for an engine factory (SSL's method table) every engine of its package."""
    made = spec.engine_class()
    if isinstance(made, type):
        return [made]
    return sorted(
        (c for c in _subclasses(LatentEngine) if c.__module__.startswith(spec.module + ".")), key=lambda c: c.__name__
    )


def _refuses(method) -> bool:
    """A method whose body (after its docstring) is one ``raise``: a capability declared and then refused."""
    fn = ast.parse(textwrap.dedent(inspect.getsource(method))).body[0]
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    return len(body) == 1 and isinstance(body[0], ast.Raise)


def test_the_engine_core_declares_no_capability():
    assert not any(hasattr(LatentEngine, name) for name in METHODS.values())

    class Refusing:  # what 4 of the 11 engines did before the capabilities were explicit
        def reconstruct(self, x, z, use_ema):
            """No decoder."""
            raise RuntimeError("embeddings only")

    assert _refuses(Refusing.reconstruct) and not _refuses(LatentEngine.test_step)


@pytest.mark.parametrize("task", TASKS)
def test_no_engine_defines_a_capability_to_refuse_it(task):
    classes = _engine_classes(registry.get(task))
    assert classes and all(issubclass(c, LatentEngine) for c in classes)
    for cls in classes:
        for protocol, name in METHODS.items():
            assert issubclass(cls, protocol) == callable(getattr(cls, name, None))
            if issubclass(cls, protocol):
                assert not _refuses(getattr(cls, name)), f"{cls.__name__}.{name} only refuses: delete it"


def _build(task: str, monkeypatch, datadir: Path):
    """The task's engine at its dev-run size, on random weights; an upstream run (--generator, --encoder) is the
    upstream task's engine built so too, handed over where saved_runs would load it from a run folder."""
    spec = registry.get(task)
    argv = [*spec.dev_args, "--json§datadir", str(datadir)]
    built = {}
    for flag, parent in spec.upstream.items():
        built[parent] = _build(parent, monkeypatch, datadir)
        argv += [flag, parent]
    if built:
        monkeypatch.setattr(saved_runs, "checkpoint_in", lambda path, which: path)
        monkeypatch.setattr(saved_runs, "load_run", lambda path: SimpleNamespace(engine=built[Path(path).name]))
    cfg = resolve(argv, spec).cfg
    make = spec.engine_class()
    points = getattr(make, "input_kind", "image") == "points"
    return make(cfg, 3 if points else 1).eval()


@pytest.mark.parametrize("task", [t for t in TASKS if t != "latentcls"])  # latentcls's engine reads latents
def test_a_built_engine_returns_what_its_capabilities_document(task, monkeypatch, tiny_demo):
    torch.manual_seed(0)
    engine = _build(task, monkeypatch, tiny_demo)
    spec, cfg = registry.get(task), engine.cfg
    points = engine.input_kind == "points"
    x = torch.randn(2, 3, 32) if points else torch.randn(2, 1, *cfg.model.input_shape)
    with torch.no_grad():
        try:
            z = engine.embed(x, False)
        except Exception as exc:  # a generator embeds nothing, and says so
            assert not any(isinstance(engine, P) for P in CAPABILITIES), spec.name
            assert "no encoder" in str(exc)
            return
        assert z.shape[0] == 2
        if isinstance(engine, Reconstructs):
            assert engine.reconstruct(x, z, False).shape == x.shape
        if isinstance(engine, ReconstructsWithCode):
            recon, code = engine.reconstruct_with_code(x, z, False)
            assert recon.shape == x.shape and (code is None or code.shape[0] == 2)
        if isinstance(engine, Decodes):
            decoded = engine.decode(z, False)
            assert decoded is None or (isinstance(decoded, torch.Tensor) and decoded.shape[0] == 2)
        if isinstance(engine, Renders):
            renders = engine.render(x, [z, z.flip(0)], False)
            assert renders is None or (len(renders) == 2 and all(r.shape[0] == 2 for r in renders))
        if isinstance(engine, Poses):
            pose = engine.pose(x, False)
            dim = 3 if points or cfg.model.is3D else 2
            assert pose is None or pose.shape == (2, dim, dim)
