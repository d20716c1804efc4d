"""Predict phenotypes from a run's latents: linear and MLP heads (several targets at once), scikit-learn
references, and latent manipulation for DiffAE runs.

python Executors/main_latentcls.py --parent_trainID RUN [--parent_outfolder Output_fullDS] [--targets a,b]
python Executors/main_latentcls.py --latents PATH/emb.parquet [--manipulate TARGET --scales -2,-1,0,1,2]
Phenotypes come from json§DS_phenotypes, splits from json§foldCSV (row --foldID). See README.md.
"""
from pathlib import Path

from Engineering.Engines.latentcls import run
from Engineering.Engines.tasks import latentcls_task
from Engineering.errors import run_cli

CONFIGS = Path(__file__).resolve().parents[1] / "Configs"


def main(argv) -> None:
    run(argv, latentcls_task(CONFIGS))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
