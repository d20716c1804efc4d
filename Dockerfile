# imlatent for clusters: docker build -t imlatent .   (docs/install.md, "Container")
# CPU by default. CUDA: docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t imlatent:cu126 .
# (or --build-arg TORCH_INDEX=https://pypi.org/simple for PyPI's default CUDA build of the same torch release).
# Apptainer/Singularity on a cluster: apptainer build imlatent.sif docker-daemon://imlatent:latest
# Run:  docker run --rm -v "$PWD:/work" imlatent embed --model ID_OR_PATH --input /work/scans --out /work/latents.tsv
FROM python:3.11-slim

# the torch release of the pip route and of poetry.lock (Makefile TORCH_CPU; tests/test_packaging.py checks they agree)
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    IMLATENT_CACHE=/cache/imlatent \
    HF_HOME=/cache/huggingface

# torch first, from the index chosen above: the project install below keeps it (torch>=2.1 is satisfied)
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /opt/imlatent
COPY pyproject.toml README.md LICENSE ./
COPY Configs ./Configs
COPY Engineering ./Engineering
COPY Executors ./Executors
COPY preprocess ./preprocess
# the wheel carries the packages, the default configurations (Configs/) and the console commands
RUN pip install . && imlatent --help >/dev/null

WORKDIR /work
ENTRYPOINT ["imlatent"]
CMD ["--help"]
