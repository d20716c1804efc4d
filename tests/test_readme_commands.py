"""Every shell command in README.md and in the documentation (docs/**/*.md) that runs on the bundled demo data is
run, so a documented command cannot rot (issue 33, item 6; issue 37).

The commands are extracted from the ```bash blocks and from inline `python ...` spans of the README and of every
page. Each is either run or skipped with a written reason (placeholders, data or weights that are not bundled,
GPUs, benchmarks); the tutorials' blocks are run by tests/test_docs.py. A new command the README or a page gains
fails ``test_every_command_is_run_or_skipped_with_a_reason`` until it is classified.
The default suite resolves every demo command's configuration in-process (``--print_config``: its flags exist
and the task honours them), runs the quick start's demo for one batch and checks what the quick start says about
it; ``-m slow`` runs each demo command for real at tiny scale, chains in README order.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
RESUME_PAGE = DOCS / "how-to" / "resume.md"  # the recipes table and the run modes (moved from the README)


def pages() -> list[Path]:
    """The README, then every documentation page (sorted): where documented commands live."""
    return [README, *sorted(DOCS.rglob("*.md"))]


# command prefix -> why it is not run here
SKIP = {
    "python Executors/main_diffAE.py [flags]": "the synopsis, not a command",
    "srun python Executors/main_diffAE.py --is3D --input_shape 50,128,128": "SLURM on GPU nodes, /data/ukbb",
    "python Executors/main_diffAE.py --configyml_path Configs/config_diffAE_ukbb.yaml": "UK Biobank data (/my/data)",
    "python Executors/main_diffAE.py --load_hf GlastonburyGroup/": "downloads the published weights",
    "python Executors/export_hf.py --run Results/<run_name>": "placeholders (<run_name>, [--push ...])",
    "python Executors/main_latentcls.py --latents Results/<run>": "placeholder (<run>)",
    "python Executors/main_benchmark.py --latents A=Results/runA": "files not bundled (phenotypes.tsv, data.h5)",
    "python Executors/main_diffAE.py --datajson_path my.json": "the user's own data (my.json)",
    "python Executors/merge_shards.py RUN_FOLDER": "placeholder (RUN_FOLDER)",
    "python Executors/export_gwas.py --latents Results/<run>": "placeholder (<run>), covariates.tsv not bundled",
    "plink2 ": "an external tool on genotypes that are not bundled (make test-gwas runs the planted-locus GWAS)",
    "make test-gwas": "the GWAS test (installs plink2)",
    "python preprocess/<tool>.py": "placeholder (<tool>)",
    "python benchmarks/": "benchmarks (minutes to hours, not tests; make bench*)",
    "make test-deepspeed": "the DeepSpeed tests (two processes; make ci)",
    "make test-slow": "the slow tests (this file's slow test among them)",
    "make test": "the test suite itself",
    "make ci": "the test suites",
    "make bench": "benchmarks (minutes to hours, not tests)",
    "python -m Engineering.Engines.docs": "tested by the docs tests (the generated tables stay in sync)",
    "pip install ": "the install itself (the tests run in the installed environment)",
    "make docs": "the documentation build (make test runs it, strict)",
    "python Executors/...": "a pattern in the text, not a command",
    "python Executors/main_diffAE.py --help": "prints the flags (tests/test_ancestor_commands.py runs --help)",
    "python preprocess/dicom_to_h5.py scans": "the tutorials' stand-in files (docs/tutorials/dicom-to-h5.md runs them)",
    "python preprocess/validate_h5.py mydata/": "the tutorials' stand-in files (docs/tutorials/train-3d-diffae.md "
    "runs them)",
    "python preprocess/make_folds.py mydata/": "the tutorials' stand-in files (docs/tutorials/train-3d-diffae.md "
    "runs them)",
    "mkdir -p mydata": "the folder of the tutorials' stand-in files (docs/tutorials/train-3d-diffae.md)",
    "python Executors/main_benchmark.py --latents DiffAE=Results/cmp_diffae/": "the comparison tutorial's runs "
    "(docs/tutorials/compare.md runs it)",
    "python Executors/app.py": "starts the web page's server (make test-browser tests the page)",
    # the install routes (docs/install.md): the tests run inside the installed environment
    "python3 -m venv": "the install itself (make setup)",
    ".venv/bin/pip install": "the install itself (make setup)",
    "make setup": "the install itself (every make target runs it first)",
    "pipx install poetry": "the Poetry route (make test-poetry builds a fresh Poetry environment)",
    "poetry ": "the Poetry route (make test-poetry builds a fresh Poetry environment)",
    "conda ": "the conda route (conda is not on the test machines)",
    "docker ": "container builds and runs (docker is not on the test machines)",
    "apptainer ": "container builds and runs (apptainer is not on the test machines)",
}
# commands the text names without arguments: a script's name, not a command to run
EXACT = {"python Executors/export_hf.py": "the script's name (its commands are on the Hub and demo-model pages)"}
# make targets the README runs, as the Makefile's recipe does (without creating a venv)
MAKE = {"make demo": "python Executors/main_diffAE.py"}


def readme_commands(text: str | None = None) -> list[str]:
    """Shell commands of the README (or of ``text``, a page) in order: ```bash blocks (continuations joined, comments
    dropped) and inline
    `python ...` / `make ...` spans."""
    text = README.read_text() if text is None else text
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            line = re.sub(r"\s+#.*$", "", line).strip()  # a trailing comment (no '#' in our arguments)
            found.append(line)
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`((?:python |make |PYTHONPATH=)[^`]*)`", outside):
        span = " ".join(span.split())
        if span not in found:
            found.append(span)
    return found


def skip_reason(command: str) -> str | None:
    if command in EXACT:
        return EXACT[command]
    if command.endswith("..."):
        return "a synopsis ('...' stands for the flags)"
    for prefix, why in SKIP.items():
        if command.startswith(prefix):
            return why
    return None


def documented_commands() -> list[tuple[Path, str]]:
    """(page, command) of the README and every page, in order."""
    return [(page, c) for page in pages() for c in readme_commands(page.read_text())]


def _tutorial_run() -> set[tuple[str, str]]:
    """(page name, command) of the tutorials' blocks that tests/test_docs.py runs."""
    from tests.test_docs import tutorial_commands

    return set(tutorial_commands())


def _is_tutorial(page: Path) -> bool:
    return page.parent == DOCS / "tutorials"


def demo_commands() -> list[str]:
    """Commands outside the tutorials (those run in tests/test_docs.py) that run on the demo data, in order."""
    return list(
        dict.fromkeys(c for page, c in documented_commands() if not _is_tutorial(page) and skip_reason(c) is None)
    )


def test_every_command_is_run_or_skipped_with_a_reason():
    run_by_test_docs = _tutorial_run()
    commands = documented_commands()
    assert {page.name for page, _ in commands} >= {"README.md", "hub.md", "embed.md"}
    for page, command in commands:
        if skip_reason(command):
            continue
        if _is_tutorial(page) and (page.name, command) in run_by_test_docs:
            continue  # a tutorial block: tests/test_docs.py runs it (and resolves it in the default suite)
        argv = as_argv(command)
        assert argv[0] == "python" and Path(REPO / argv[1]).is_file(), (
            f"{page.relative_to(REPO)}: command neither runnable here nor in SKIP (with a reason): {command}"
        )


def as_argv(command: str) -> list[str]:
    command = MAKE.get(command.split("  ")[0].strip(), command)
    argv = shlex.split(command)
    while argv and "=" in argv[0] and not argv[0].startswith("-"):  # PYTHONPATH=... prefix
        argv = argv[1:]
    return argv


def _env(command: str) -> dict:
    env = dict(os.environ)
    for token in shlex.split(command):
        if "=" in token and not token.startswith("-"):
            key, value = token.split("=", 1)
            env[key] = str(REPO / value) if key == "PYTHONPATH" else value
            continue
        break
    return env


def _module(script: str):
    spec = importlib.util.spec_from_file_location(f"readme_{Path(script).stem}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _in_process(command: str, *extra: str, monkeypatch=None) -> int:
    from Engineering.errors import run_cli

    argv = as_argv(command)
    env = _env(command)
    if monkeypatch is not None:
        from Engineering.Engines import registry

        # a plug-in a command loads (--plugins, IMLATENT_PLUGINS) stays registered for this test only
        monkeypatch.setattr(registry, "_TASKS", dict(registry.tasks()))
        if "PYTHONPATH" in env and env["PYTHONPATH"] != os.environ.get("PYTHONPATH"):
            monkeypatch.syspath_prepend(env["PYTHONPATH"])
    return run_cli(_module(argv[1]).main, [*argv[2:], *extra])


@pytest.mark.parametrize(
    "command", [c for c in demo_commands() if c.startswith(("python Executors/main", "make demo", "PYTHONPATH"))]
)
def test_demo_command_resolves(command, capsys, monkeypatch):
    """The command's flags exist and its task honours them: its configuration resolves (--print_config)."""
    monkeypatch.chdir(REPO)
    code = _in_process(command, "--print_config", monkeypatch=monkeypatch)
    out = capsys.readouterr()
    assert code == 0, f"{command}: {out.err.strip()[-500:]}"
    assert yaml.safe_load(out.out)["run"], command


def _resolved(command: str, capsys, monkeypatch, *extra: str) -> dict:
    monkeypatch.chdir(REPO)
    code = _in_process(command, *extra, "--print_config", monkeypatch=monkeypatch)
    out = capsys.readouterr()
    assert code == 0, (command, extra, out.err[-500:])
    return yaml.safe_load(out.out)


def _quick_start(path: Path = README) -> str:
    text = path.read_text()
    start = text.index("## Quick start") if "## Quick start" in text else text.index("## Two commands")
    end = text.find("\n## ", start + 3)
    return text[start : end if end > 0 else None]


@pytest.mark.parametrize("path", [README, DOCS / "getting-started.md"], ids=["README", "getting-started"])
def test_the_quick_start_says_what_the_demo_does(path, capsys, monkeypatch):
    """ "make demo ... trains a small 2D DiffAE on CPU for N epochs ... prints outputs written to Results/<run>":
    the number of epochs and the run folder are the demo's (in the README and on the getting-started page)."""
    quick = _quick_start(path)
    cfg = _resolved("make demo", capsys, monkeypatch)
    words = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "ten": 10}
    said = re.search(r"for (\w+) epochs", quick).group(1)
    assert words.get(said, said) in (cfg["training"]["num_epochs"], str(cfg["training"]["num_epochs"])), said
    from Engineering.config.loader import resolve
    from Engineering.Engines import registry
    from Engineering.Engines.MainEngine import run_name

    spec = registry.get("diffAE")
    name = run_name(resolve([], spec).cfg, spec)
    assert f"outputs written to Results/{name}/Output" in quick
    make_test = next(line for line in quick.splitlines() if line.startswith("make test"))
    assert "a few minutes" not in make_test  # the suite's duration is not a quick start's promise


def test_the_recipes_table_resolves_on_the_demo_command(capsys, monkeypatch):
    """Each "add to the training command" recipe, added to the demo's command, resolves (its flags exist, the task
    honours them, and the run keeps the demo's run folder where the recipe tests the same run)."""
    from Engineering.config.loader import resolve
    from Engineering.Engines import registry
    from Engineering.Engines.MainEngine import run_name

    text = RESUME_PAGE.read_text()
    table = text[text.index("| what | add to the training command |") :].split("\n\n")[0]
    rows = [re.findall(r"`([^`]*)`", line) for line in table.splitlines()[2:]]
    assert len(rows) >= 5
    spec = registry.get("diffAE")
    demo = run_name(resolve([], spec).cfg, spec)
    for row in rows:
        flags = shlex.split(row[0].replace("PATH", "Results/elsewhere"))
        cfg = _resolved("make demo", capsys, monkeypatch, *flags)
        assert cfg["run"], row
        if "--resume" in flags:  # the ancestor's inference recipes test the same run
            assert run_name(resolve(flags, spec).cfg, spec) == demo, row


def test_executors_that_need_inputs_say_so_in_one_line(capsys, monkeypatch):
    """The "with no arguments" sentence (README and docs/how-to/resume.md) names the executors that need an earlier
    run's output; each of them says which flag in one line."""
    sentences = [p.read_text() for p in (README, RESUME_PAGE)]
    sentences = [t[t.index("With no arguments") :].split("\n\n")[0] for t in sentences]
    sentence = " ".join(sentences)
    for text in sentences:
        assert "main_latentcls" in text and "main_restyle" in text, text
    for script, flag in (
        ("main_latentcls", "--parent_trainID"),
        ("main_restyle", "--generator"),
        ("main", "--task"),
        ("main_benchmark", "--latents"),
        ("export_hf", "--run"),
        ("merge_shards", "RUN"),
    ):
        assert script in sentence, f"{script} needs arguments; the README's sentence does not say so"
        code = _in_process(f"python Executors/{script}.py", monkeypatch=monkeypatch)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err and flag.lower() in err[-1].lower() and "Traceback" not in "\n".join(err), (
            script,
            err[-3:],
        )


def test_the_demo_command_runs_one_batch(capsys, monkeypatch, tmp_path, demo_dir, one_thread):
    """The quick start's command itself, for one batch (Lightning's fast dev run), on the demo cohort."""
    monkeypatch.chdir(tmp_path)
    code = _in_process("make demo", "--dev_run", "1", "--no-progress_bar", "--no-tbactive", monkeypatch=monkeypatch)
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    assert "data: " in out.out and "dev run of 1 batch(es) finished" in out.out


# --- slow: every demo command for real, at tiny scale, in README-then-pages order (chains: later commands read
# earlier runs)

TINY = {
    "main_latentcls": ["--num_epochs", "2"],
    # latents only: reconstructing every test sample through DDIM takes minutes on a CPU
    "main_diffAE": ["--num_epochs", "1", "--n_train_batches", "2", "--n_val_batches", "1", "--test_emb_only"],
    "main_recon": ["--num_epochs", "1", "--n_train_batches", "2", "--test_emb_only"],
    "main_ssl": ["--num_epochs", "1", "--n_train_batches", "2", "--batch_size", "16", "--maximize_iter", "2"],
    "default": ["--num_epochs", "1", "--n_train_batches", "2"],
}


# executors that train nothing: they run as written
NOT_TRAINING = ("embed", "export_hf", "export_gwas", "merge_shards", "main_benchmark")


def _tiny(argv: list[str]) -> list[str]:
    script = Path(argv[1]).stem
    if script in NOT_TRAINING:
        return argv
    if "--run_mode" in argv and argv[argv.index("--run_mode") + 1] == "2":  # a test: nothing to shorten
        return [*argv, *(["--test_emb_only"] if script == "main_diffAE" else []), "--no-progress_bar"]
    extra = list(TINY.get(script, TINY["default"]))
    if "--num_epochs" in argv:  # the command's own recipe (e.g. 400 epochs) at tiny scale
        i = argv.index("--num_epochs")
        argv = argv[:i] + argv[i + 2 :]
    if script == "main_ssl" and "ipirm" not in " ".join(argv):
        extra = extra[:6]
    return [*argv, *extra, "--no-progress_bar"]


@pytest.mark.slow
def test_every_demo_command_runs_at_tiny_scale(tmp_path):
    for name in ("Configs", "Executors", "examples"):
        (tmp_path / name).symlink_to(REPO / name)
    failures = []
    for command in demo_commands():
        argv = _tiny(as_argv(command))
        proc = subprocess.run(
            [sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=1800, env=_env(command)
        )
        if proc.returncode != 0:
            failures.append(f"{command}\n  -> {proc.stderr.strip().splitlines()[-1:]}")
        elif command == "make demo":  # the quick start's promise, at tiny scale
            quick = _quick_start()
            promised = re.search(r"`(outputs written to \S+/Output)", quick).group(1)
            assert promised in proc.stdout, proc.stdout[-2000:]
    assert not failures, "\n".join(failures)
