"""Every code block of the tutorials (docs/tutorials/*.md) runs as the reader sees it, on the bundled demo data.

A page's ```bash and ```python blocks run in page order in one fresh folder (``Configs``, ``Executors``,
``examples`` and ``preprocess`` linked in), so a later block reads what an earlier one wrote. An HTML comment on the
line before a
block, invisible on the site, may make the test's run of it smaller, never different:

* ``<!-- tiny: FLAGS -->`` appends FLAGS to each ``python Executors/...`` command of the block (fewer epochs and
  batches; a later flag wins over an earlier one, so the command is the reader's with a smaller budget);
* ``<!-- skip: REASON -->`` does not run the block (data or weights that are not bundled); the reason is required.

Default suite (``test_tutorial_dry_run``): every block is classified, every Python block compiles, and each page
runs with every training executor command resolved in-process (``--print_config``, tiny flags included: the
flags exist and the task honours them) instead of trained; the other commands (preprocess tools, ``mkdir``) and
the Python blocks before the page's first executor command run for real. ``-m slow``
(``test_tutorial_runs``): every block of every page runs for real, at tiny scale.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DOCS = REPO / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.md"))
# executors that are training tasks (they take --print_config); the other executors (embed.py,
# main_benchmark.py, export_*.py, merge_shards.py) read earlier runs' outputs
NO_PRINT_CONFIG = ("main_benchmark", "embed", "export_hf", "export_gwas", "merge_shards")
BLOCK = re.compile(r"(?:<!--\s*(tiny|skip):\s*(.*?)\s*-->\n)?```(bash|python)\n(.*?)```", re.S)


@dataclass
class Block:
    page: str
    lang: str
    code: str
    tiny: list[str]
    skip: str | None


def blocks(page: Path) -> list[Block]:
    """The page's bash and python blocks in order, with their tiny flags or skip reason."""
    found = []
    for kind, value, lang, code in BLOCK.findall(page.read_text()):
        found.append(
            Block(
                page.name, lang, code, shlex.split(value) if kind == "tiny" else [], value if kind == "skip" else None
            )
        )
    return found


def bash_commands(code: str) -> list[str]:
    """A bash block's commands: continuations joined, comments and blank lines dropped."""
    out = []
    for line in re.sub(r"\\\n\s*", " ", code).splitlines():
        line = re.sub(r"\s+#.*$", "", line.strip()).strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def tutorial_commands() -> list[tuple[str, str]]:
    """(page, command) of every bash command that the tutorial test runs (blocks not skipped)."""
    return [
        (b.page, c)
        for page in TUTORIALS
        for b in blocks(page)
        if b.lang == "bash" and not b.skip
        for c in bash_commands(b.code)
    ]


def _executor(command: str) -> str | None:
    """The executor a command runs (``main_diffAE``), or None."""
    m = re.match(r"python Executors/(\w+)\.py\b", command)
    return m.group(1) if m else None


def tiny_command(command: str, tiny: list[str]) -> str:
    return " ".join([command, *map(shlex.quote, tiny)]) if _executor(command) and tiny else command


def _workdir(tmp: Path) -> Path:
    for name in ("Configs", "Executors", "examples", "preprocess"):
        (tmp / name).symlink_to(REPO / name)
    return tmp


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` is this one
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _run(cmd: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env())


def _resolve(command: str, cwd: Path, capsys) -> None:
    """The command's configuration resolves in-process (``--print_config``), as it would start."""
    import importlib.util

    from Engineering.errors import run_cli

    argv = shlex.split(command)
    spec = importlib.util.spec_from_file_location(f"docs_{Path(argv[1]).stem}", REPO / argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    old = Path.cwd()
    os.chdir(cwd)
    try:
        code = run_cli(module.main, [*argv[2:], "--print_config"])
    finally:
        os.chdir(old)
    out = capsys.readouterr()
    assert code == 0, f"{command}\n{out.err.strip()[-800:]}"
    assert yaml.safe_load(out.out)["run"], command


def test_there_are_tutorials_and_every_block_is_classified():
    assert len(TUTORIALS) >= 5, [p.name for p in TUTORIALS]
    text_blocks = 0
    for page in TUTORIALS:
        text = page.read_text()
        fences = re.findall(r"^```(\w*)$", text, flags=re.M)
        code_fences = [f for f in fences[::2]]  # opening fences
        assert all(f in ("bash", "python", "text", "") for f in code_fences), (page.name, code_fences)
        found = blocks(page)
        text_blocks += len(found)
        assert len(found) == sum(f in ("bash", "python") for f in code_fences), page.name
        for b in found:
            assert b.skip is None or len(b.skip) > 10, f"{page.name}: a skipped block needs its reason"
            if b.lang == "python":
                compile(b.code, f"{page.name} block", "exec")
            for command in bash_commands(b.code) if b.lang == "bash" else []:
                if _executor(command):
                    assert (REPO / shlex.split(command)[1]).is_file(), command
    assert text_blocks >= 20


def _is_setup(b: Block, seen_executor: bool) -> bool:
    return b.lang == "python" and not seen_executor


@pytest.mark.parametrize("page", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_dry_run(page, tmp_path, capsys):
    """The page in order with its training commands resolved instead of run (see the module docstring)."""
    cwd = _workdir(tmp_path)
    seen_executor = False
    for b in blocks(page):
        if b.skip:
            continue
        if b.lang == "python":
            if _is_setup(b, seen_executor):
                proc = _run([sys.executable, "-c", b.code], cwd, 300)
                assert proc.returncode == 0, f"{page.name}:\n{b.code}\n{proc.stderr[-2000:]}"
            continue
        for command in bash_commands(b.code):
            name = _executor(command)
            if name:
                seen_executor = True
                if name not in NO_PRINT_CONFIG:
                    _resolve(tiny_command(command, b.tiny), cwd, capsys)
                continue
            proc = _run(["bash", "-ec", command], cwd, 300)
            assert proc.returncode == 0, f"{page.name}: {command}\n{proc.stderr[-2000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("page", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(page, tmp_path):
    """Every block of the page, for real, at tiny scale, in page order."""
    cwd = _workdir(tmp_path)
    for b in blocks(page):
        if b.skip:
            continue
        if b.lang == "python":
            proc = _run([sys.executable, "-c", b.code], cwd, 1800)
            assert proc.returncode == 0, f"{page.name}:\n{b.code}\n{proc.stderr[-3000:]}"
            continue
        for command in bash_commands(b.code):
            proc = _run(["bash", "-ec", tiny_command(command, b.tiny)], cwd, 1800)
            assert proc.returncode == 0, f"{page.name}: {tiny_command(command, b.tiny)}\n{proc.stderr[-3000:]}"


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for v in node.values() for p in _nav_pages(v)]
    return [p for v in node for p in _nav_pages(v)]


def test_every_page_is_in_the_navigation_and_every_entry_exists():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(nav) == on_disk, set(nav) ^ set(on_disk)
    assert len(nav) == len(set(nav))


def test_the_readme_is_a_landing_page_whose_links_work_on_github():
    """README.md stays short and links into docs/ with relative paths (they work on GitHub and in a checkout)."""
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\((docs/[^)#\s]+)", text)
    assert len(links) >= 20
    for link in links:
        assert (REPO / link).is_file(), link
    for page in ("install.md", "how-to/web-app.md", "how-to/demo-model.md", "getting-started.md"):
        assert f"](docs/{page})" in text, page


def test_the_results_figures_are_the_benchmarks_own():
    """docs/assets holds copies of the benchmark figures (a page cannot link outside docs/): the same bytes."""
    for name in ("gwas_manhattan.png", "cells_radar.png"):
        assert (DOCS / "assets" / name).read_bytes() == (REPO / "benchmarks" / "results" / name).read_bytes(), (
            f"cp benchmarks/results/{name} docs/assets/"
        )
