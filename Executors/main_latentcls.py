"""Predict phenotypes from a run's latents: linear and MLP heads (several targets at once), scikit-learn
references, and latent manipulation for DiffAE runs.

python Executors/main_latentcls.py --parent_trainID RUN [--parent_outfolder Output_fullDS] [--targets a,b]
python Executors/main_latentcls.py --latents PATH/emb.parquet [--manipulate TARGET --scales -2,-1,0,1,2]
Phenotypes come from json§DS_phenotypes, splits from json§foldCSV (row --foldID). See docs/tasks/latentcls.md.
"""

from Engineering.Engines import cli
from Engineering.errors import run_cli


def main(argv) -> dict:
    return cli.main(argv, task="latentcls")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
