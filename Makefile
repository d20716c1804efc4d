# One command to set up and run the demo, one to set up and run the tests.
#   make demo   -> venv + install + train/test a small DiffAE on the bundled demo data (CPU ok)
#   make demo-model -> retrain and export the shipped demo model examples/demo_model/ (~2 MB; a few minutes on CPU)
#   make test   -> venv + install + lint-imports, ruff check, ruff format --check, mypy + the default test suite
#   make test-slow -> the slow checks (kill -9 fault injection with exact resume)
#   make test-deepspeed -> DeepSpeed ZeRO-1/2/3 on two CPU processes (a few minutes)
#   make test-gwas -> a planted locus found by plink2 through a VAE's latents (installs Debian's plink2; minutes)
#   make test-browser -> the web page (Executors/app.py) in Debian's headless Chromium (installs chromium + driver)
#   make test-poetry -> a fresh Poetry environment from poetry.lock; `poetry run python Executors/main_diffAE.py --help`
#   make docs   -> the documentation site, built strict into site/ (make test builds it too)
#   make test-docs -> every tutorial's code blocks run for real, in page order, at tiny scale (about 6 minutes)
#   make ci     -> what CI runs: make test, then test-deepspeed, test-gwas, test-browser, test-docs and test-poetry
#   make bench  -> speed vs the ancestor (make bench ANCESTOR=path/to/ImLatent), bf16 training trajectory, bf16 embedding tolerance
#   make bench-quality -> DiffAE and VAE latents vs PCA of the pixels on real images (docs/results/quality.md)
#   make bench-cells -> classical vs rotation-invariant image and point-cloud models on @cells, every metric family
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0+cpu
# PyPI's Linux torch wheels are CUDA builds (GBs): the CPU build comes from PyTorch's CPU index
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup demo demo-model test docs test-docs test-slow test-deepspeed test-gwas test-browser test-poetry ci bench bench-quality bench-cells clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU-only machine: install the CPU torch build first so pip does not pull the CUDA one.
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install -q --retries 1 "$(TORCH_CPU)" --extra-index-url "$(TORCH_CPU_INDEX)"; fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(PY) Executors/main_diffAE.py

# The shipped demo model (examples/demo_model/, docs/how-to/demo-model.md): the demo's 2D DiffAE, trained briefly on
# CPU on the bundled @demo cohort (seed 1701, train+val, no test phase) and exported with its EMA weights.
DEMO_MODEL_RUN ?= Results/demo_model_run
demo-model: setup
	rm -rf $(DEMO_MODEL_RUN)
	HF_HUB_OFFLINE=1 $(PY) Executors/main_diffAE.py --run_mode 1 --num_epochs 3 --n_train_batches 20 \
		--n_val_batches 2 --accelerator cpu --no-progress_bar --no-tbactive \
		--json§save_path $(DEMO_MODEL_RUN) --fulltrainID demo_model
	$(PY) Executors/export_hf.py --run $(DEMO_MODEL_RUN)/demo_model --checkpoint last --out examples/demo_model
	printf '%s\n' '' '## How this model was made' '' \
		'`make demo-model`: Executors/main_diffAE.py on the synthetic demo cohort @demo (seed 1701; 3 epochs of' \
		'20 batches of 16 on CPU, train+val), then Executors/export_hf.py --checkpoint last. It shows the commands' \
		'(Executors/embed.py, Engineering.api, Executors/app.py) in seconds; trained for minutes on synthetic' \
		'phantoms, it is no model of real images (docs/how-to/demo-model.md).' >> examples/demo_model/README.md

# the project's habits first (pyproject.toml: [tool.importlinter], [tool.ruff], [tool.mypy]; the same checks as
# .pre-commit-config.yaml): the import contracts, lint, format, the type check of the typed core; then the tests
test: setup docs
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-slow: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow

# DeepSpeed JIT-builds its CPU ops once per machine: cached outside the repository
test-deepspeed: setup
	TORCH_EXTENSIONS_DIR=$${TORCH_EXTENSIONS_DIR:-$$HOME/.cache/torch_extensions} HF_HUB_OFFLINE=1 \
		$(PY) -m pytest -q -m deepspeed

# plink2 from Debian (root, as on CI machines; otherwise install it yourself): the GWAS test's association tool
test-gwas: setup
	command -v plink2 >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq plink2)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m gwas

# headless Chromium and its driver from Debian (root, as on CI machines; otherwise install them yourself)
test-browser: setup
	command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m browser

# the tutorials' blocks as a reader runs them (make test only checks them: classified, compiled, --print_config)
test-docs: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow tests/test_docs.py

docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

# Poetry, as a user installs it: Poetry in its own venv (build/poetry-tool), the project's environment made afresh from
# the committed poetry.lock in build/poetry-envs (never .venv), then the ancestor's command. torch is the locked
# 2.13.0 from PyPI (on Linux its CUDA build, about 3 GB of wheels; it runs on the CPU too). CI never re-locks:
# `poetry check --lock` fails if pyproject.toml changed without `poetry lock` (docs/install.md, "Poetry").
POETRY_VERSION ?= 2.5.1
POETRY_TOOL := $(CURDIR)/build/poetry-tool
POETRY := $(POETRY_TOOL)/bin/poetry
POETRY_ENV := POETRY_VIRTUALENVS_PATH=$(CURDIR)/build/poetry-envs POETRY_VIRTUALENVS_IN_PROJECT=false
test-poetry:
	test -x $(POETRY) || (python3 -m venv $(POETRY_TOOL) && $(POETRY_TOOL)/bin/pip install -q "poetry==$(POETRY_VERSION)")
	rm -rf build/poetry-envs
	$(POETRY_ENV) $(POETRY) check --lock
	$(POETRY_ENV) $(POETRY) install --extras dev --no-interaction --quiet
	$(POETRY_ENV) $(POETRY) run python -c "import torch; print('poetry env: torch', torch.__version__)"
	$(POETRY_ENV) $(POETRY) run python Executors/main_diffAE.py --help >/dev/null
	cd /tmp && $(POETRY_ENV) $(POETRY) -C $(CURDIR) run imlatent diffae --help >/dev/null
	@echo "test-poetry: poetry install from poetry.lock and the commands' --help passed"

ci: test test-deepspeed test-gwas test-browser test-docs test-poetry

# Speed (docs/results/speed.md): ANCESTOR=/path/to/ImLatent times the ancestor side by side (published row ~16 min)
ANCESTOR ?=
bench: setup
	$(PY) benchmarks/bench_diffae.py --compile $(if $(ANCESTOR),--ancestor $(ANCESTOR)) --write benchmarks/results/speed.md
	$(PY) benchmarks/bench_diffae.py --config published --trajectory 6
	$(PY) benchmarks/bench_embed_bf16.py
	$(PY) benchmarks/bench_recon.py

# How good are the latents? DiffAE and a VAE vs PCA of the pixels on real images (about 25 minutes on 2 cores)
bench-quality: setup
	$(PY) benchmarks/bench_quality.py --write benchmarks/results/quality.md

# seed 003's comparison on the bundled 3D cells (about 20 minutes on 2 cores)
bench-cells: setup
	$(PY) benchmarks/bench_cells.py --write benchmarks/results/cells.md --radar benchmarks/results/cells_radar.png

clean:
	rm -rf $(VENV) .pytest_cache site build/poetry-tool build/poetry-envs
