"""The ways in (issue 37 section 5): environment.yml agrees with pyproject.toml, one torch release everywhere
(pip route, conda file, poetry.lock), console commands that work outside the repository, the container recipe.

`make test-poetry` installs from poetry.lock into a fresh environment and runs `--help` (docs/install.md)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
BIN = Path(sys.executable).parent

# conda package name -> PyPI name where they differ
CONDA_TO_PYPI = {"pytorch": "torch"}


def _pyproject_requirements() -> dict[str, Requirement]:
    reqs = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["dev"]
    out = {}
    for text in reqs:
        r = Requirement(text)
        out[canonicalize_name(r.name)] = r
    return out


def _environment_requirements() -> tuple[dict[str, Requirement], list[str]]:
    """environment.yml's packages as requirements (conda and pip sections) and its pip option lines."""
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    out, options = {}, []
    for item in env["dependencies"]:
        if isinstance(item, dict):
            for line in item["pip"]:
                if line.startswith("-"):
                    options.append(line)
                    continue
                r = Requirement(line)
                out[canonicalize_name(r.name)] = r
            continue
        name = re.split(r"[<>=!~ ]", item, maxsplit=1)[0]
        if name in ("python", "pip"):
            continue
        spec = item[len(name) :].strip()
        # conda's "pkg=1.2" means "pkg==1.2.*": the file uses pip-style operators only, so the bounds compare
        assert not re.match(r"^=[^=]", spec), f"environment.yml: write {item!r} with a pip-style operator"
        r = Requirement(CONDA_TO_PYPI.get(name, name) + spec)
        out[canonicalize_name(r.name)] = r
    return out, options


def _torch_cpu_pin() -> Version:
    """The torch release of the pip route: Makefile's TORCH_CPU (installed before the project on CPU machines)."""
    m = re.search(r"^TORCH_CPU \?= torch==(\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert m, "Makefile: TORCH_CPU ?= torch==X.Y.Z"
    return Version(Version(m.group(1)).public)  # "2.13.0" whether the Makefile names 2.13.0 or 2.13.0+cpu


def _lock_packages() -> dict[str, list[dict]]:
    lock = tomllib.loads((REPO / "poetry.lock").read_text())
    out: dict[str, list[dict]] = {}
    for pkg in lock["package"]:
        out.setdefault(canonicalize_name(pkg["name"]), []).append(pkg)
    return out


def test_environment_yml_has_every_dependency_of_pyproject_with_the_same_bounds():
    want = _pyproject_requirements()
    have, _ = _environment_requirements()
    assert sorted(set(want) - set(have)) == [], "in pyproject.toml, missing from environment.yml"
    assert sorted(set(have) - set(want)) == [], "in environment.yml, not in pyproject.toml"
    for name, req in want.items():
        if name == "torch":
            continue  # pinned: next test
        assert have[name].specifier == req.specifier, f"{name}: {have[name]} vs pyproject {req}"
        assert have[name].extras == req.extras, f"{name}: extras {have[name].extras} vs {req.extras}"


def test_one_torch_release_for_pip_conda_and_poetry():
    pin = _torch_cpu_pin()
    assert pin in _pyproject_requirements()["torch"].specifier, "TORCH_CPU outside pyproject's torch range"
    have, options = _environment_requirements()
    (env_pin,) = [s for s in have["torch"].specifier]
    assert env_pin.operator == "==" and Version(env_pin.version) == Version(f"{pin}+cpu"), have["torch"]
    # the CPU build comes from PyTorch's CPU index (PyPI's Linux wheels are the CUDA build)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in options
    (locked,) = _lock_packages()["torch"]
    assert Version(locked["version"]) == pin, f"poetry.lock has torch {locked['version']}, the pip route {pin}"
    # [tool.poetry.dependencies] pins torch for locking only: Poetry never resolves to a newer release on its own
    assert PYPROJECT["tool"]["poetry"]["dependencies"]["torch"] == str(pin)


def test_poetry_lock_covers_pyproject():
    """Every dependency (and every extra's) is in the lock; `poetry check --lock` in make test-poetry checks the
    hash."""
    locked = _lock_packages()
    project = PYPROJECT["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    missing = sorted({canonicalize_name(Requirement(r).name) for r in reqs} - set(locked))
    assert missing == []
    lock = tomllib.loads((REPO / "poetry.lock").read_text())
    assert lock["metadata"]["content-hash"]


def _poetry_content_hash() -> str:
    """Poetry 2's content-hash of pyproject.toml (poetry/packages/locker.py, Locker._get_content_hash): the sha256 of
    the sorted JSON of the [project] and [tool.poetry] keys that decide the lock."""
    import hashlib
    import json

    project = {
        k: PYPROJECT["project"][k]
        for k in ("requires-python", "dependencies", "optional-dependencies")
        if k in PYPROJECT["project"]
    }
    groups = PYPROJECT.get("dependency-groups", {})
    poetry = PYPROJECT["tool"].get("poetry", {})
    content: dict = {"project": project}
    if groups:
        content["dependency-groups"] = groups
    content["tool"] = {
        "poetry": {
            k: poetry[k] for k in ("dependencies", "source", "extras", "dev-dependencies", "group") if k in poetry
        }
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def test_poetry_lock_is_the_lock_of_this_pyproject():
    """A dependency changed in pyproject.toml without `poetry lock` fails here (and `poetry check --lock` fails in
    make test-poetry). Re-lock: pipx install poetry==2.5.1 && poetry lock (minutes), then commit poetry.lock."""
    lock = tomllib.loads((REPO / "poetry.lock").read_text())
    assert lock["metadata"]["content-hash"] == _poetry_content_hash(), (
        "poetry.lock is stale: run `poetry lock` and commit poetry.lock (docs/install.md, Poetry)"
    )


LINUX = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_poetry_lock_installs_one_version_of_each_package_on_linux(python):
    """The user's segfault: an unpinned lock held two nvidia-cublas and two nvidia-cuda-nvrtc releases for Linux;
    Poetry installed both into the same nvidia/cu13 folder and `import torch` crashed loading the mixed CUDA
    libraries. Every package of the lock is installed at most once on a Linux machine, whatever the extras."""
    from packaging.markers import Marker

    env = {**LINUX, "python_version": python, "python_full_version": f"{python}.0"}
    extras = ["", *PYPROJECT["project"]["optional-dependencies"]]
    twice = {}
    for name, entries in _lock_packages().items():
        live = []
        for pkg in entries:
            markers = pkg.get("markers")
            markers = list(markers.values()) if isinstance(markers, dict) else [markers]
            if any(m is None or any(Marker(m).evaluate({**env, "extra": e}) for e in extras) for m in markers):
                live.append((pkg["version"], str(pkg.get("markers"))))
        # entries under the same markers are alternatives Poetry chooses between by the extras asked for (pillow
        # for gradio or not); entries under different markers that all hold here are each installed
        if len({m for _, m in live}) > 1:
            twice[name] = live
    assert twice == {}


def test_make_ci_runs_the_poetry_install():
    makefile = (REPO / "Makefile").read_text()
    ci = re.search(r"^ci:(.*)$", makefile, re.M).group(1).split()
    assert "test-poetry" in ci
    recipe = re.search(r"^test-poetry:.*?\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "$(POETRY) check --lock" in recipe and "$(POETRY) install" in recipe
    assert "$(POETRY) run python Executors/main_diffAE.py --help" in recipe
    assert "$(POETRY) lock" not in recipe  # CI installs the committed lock, never re-locks
    assert "POETRY_VIRTUALENVS_PATH=$(CURDIR)/build/" in makefile  # a fresh environment of its own, not .venv


# ---------------------------------------------------------------------------------------------------------------
# console commands

SCRIPTS = PYPROJECT["project"]["scripts"]


def test_every_executor_has_a_command():
    import Executors

    tools = {p.stem for p in (REPO / "Executors").glob("*.py") if 'if __name__ == "__main__":' in p.read_text()}
    tools.add("app")  # Executors/app.py (the web page) is mapped even before it exists
    assert tools <= {module for module, _ in Executors.COMMANDS.values()}
    assert SCRIPTS["imlatent"] == "Executors:cli"
    for name, target in SCRIPTS.items():
        module, _, attr = target.partition(":")
        __import__(module)
        assert callable(getattr(sys.modules[module], attr)), name


def test_the_wheel_carries_the_commands_and_the_default_configurations(tmp_path):
    """A wheel install (pip install . or from an index, not editable) works outside a checkout: the Executors
    package, the console scripts and Configs/ (registry.CONFIGS is <install root>/Configs) are in the wheel."""
    import zipfile

    packages = [p["include"] for p in PYPROJECT["tool"]["poetry"]["packages"]]
    assert {"Engineering", "preprocess", "Executors"} <= set(packages)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("imlatent-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"Configs/{p.name}" for p in (REPO / "Configs").iterdir() if p.is_file()}
    assert configs and configs <= names
    tools = {f"Executors/{p.name}" for p in (REPO / "Executors").glob("*.py")}
    assert "Executors/__init__.py" in tools and tools <= names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for name, target in SCRIPTS.items():
        assert f"{name}={target}" in entry_points.replace(" ", "")


def _script(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: install the project (make setup, or pip install -e '.[dev]')")
    return path


def _outside(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(a) for a in argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "argv, usage",
    [
        (["imlatent", "--help"], r"usage: imlatent COMMAND"),
        (["imlatent", "diffae", "--help"], r"usage: imlatent diffae .*--configyml_path"),
        (["imlatent-embed", "--help"], r"usage: imlatent-embed .*--model"),
        # the same dispatcher again (5 s of imports each): make test-slow
        pytest.param(["imlatent", "train", "--help"], r"usage: imlatent train ", marks=pytest.mark.slow),
        pytest.param(["imlatent", "embed", "--help"], r"usage: imlatent embed .*--model", marks=pytest.mark.slow),
        pytest.param(["imlatent-app", "--help"], r"usage: imlatent-app .*--model", marks=pytest.mark.slow),
        pytest.param(["imlatent", "merge-shards", "--help"], r"usage: imlatent merge-shards ", marks=pytest.mark.slow),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_console_commands_answer_outside_the_repository(argv, usage, tmp_path):
    """Installed commands run from any folder (here an empty one outside the checkout) without PYTHONPATH."""
    if "app" in " ".join(argv) and not (REPO / "Executors" / "app.py").exists():
        pytest.skip("Executors/app.py (the web page) is not in this checkout yet")
    result = _outside(tmp_path, _script(argv[0]), *argv[1:])
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.match(usage, result.stdout, re.S), result.stdout[:300]
    assert list(tmp_path.iterdir()) == []  # --help writes nothing


def test_unknown_command_is_one_clear_error(tmp_path):
    result = _outside(tmp_path, _script("imlatent"), "difae")
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown command 'difae'")


# ---------------------------------------------------------------------------------------------------------------
# container recipe: no Docker engine runs on CI machines, so the Dockerfile is parsed and checked here

DOCKER_INSTRUCTIONS = {
    "FROM",
    "ARG",
    "ENV",
    "RUN",
    "COPY",
    "ADD",
    "WORKDIR",
    "ENTRYPOINT",
    "CMD",
    "LABEL",
    "USER",
    "EXPOSE",
    "VOLUME",
    "SHELL",
    "HEALTHCHECK",
    "STOPSIGNAL",
    "ONBUILD",
}


def _dockerfile() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # line continuations
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_parses_and_copies_what_exists():
    steps = _dockerfile()
    assert steps[0][0] in ("FROM", "ARG")
    for word, rest in steps:
        assert word in DOCKER_INSTRUCTIONS, word
        if word == "COPY":
            *sources, _dest = shlex.split(rest)
            for src in sources:
                if src.startswith("--"):
                    continue
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_dockerfile_installs_cpu_torch_by_default_and_cuda_on_request():
    steps = _dockerfile()
    args = dict(re.match(r"(\w+)=?(.*)", rest).groups() for word, rest in steps if word == "ARG")
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"  # default: the CPU build
    assert args["TORCH_VERSION"] == str(_torch_cpu_pin())
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert 'torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"' in runs
    # then the project: torch>=2.1 is satisfied, so pip keeps the build installed first
    torch_at = runs.index("torch==${TORCH_VERSION}")
    project_at = re.search(r"pip install \.( |$)", runs)
    assert project_at and project_at.start() > torch_at
    entry = [rest for word, rest in steps if word == "ENTRYPOINT"]
    assert entry == ['["imlatent"]']


def test_apptainer_definition_matches_the_dockerfile():
    """apptainer.def (clusters without Docker) is parsed too: its header, known sections, %files sources that
    exist, and the same torch default (CPU index, the release of the other routes) before the project."""
    text = (REPO / "apptainer.def").read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[:2] == ["Bootstrap: docker", "From: python:3.11-slim"]
    sections: dict[str, list[str]] = {}
    current = None
    for ln in lines[2:]:
        if ln.startswith("%"):
            current = ln.split()[0]
            assert current in {
                "%arguments",
                "%files",
                "%environment",
                "%post",
                "%runscript",
                "%labels",
                "%help",
                "%test",
                "%setup",
                "%startscript",
            }, current
            sections[current] = []
        else:
            assert current, ln
            sections[current].append(ln.strip())
    for entry in sections["%files"]:
        src, _dest = entry.split()
        assert (REPO / src).exists(), src
    args = dict(a.split("=", 1) for a in sections["%arguments"])
    assert args == {"TORCH_VERSION": str(_torch_cpu_pin()), "TORCH_INDEX": "https://download.pytorch.org/whl/cpu"}
    post = "\n".join(sections["%post"])
    assert post.index('torch=={{ TORCH_VERSION }}" --index-url "{{ TORCH_INDEX }}"') < post.index("pip install /opt")
    assert sections["%runscript"] == ['exec imlatent "$@"']
