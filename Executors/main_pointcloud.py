"""Train a point-cloud autoencoder (seed 003): DGCNN (--model§PointCloud§encoder dgcnn) or the SO(3)-invariant
Vector Neuron encoder (vn, the default), FoldingNet decoder, Chamfer loss; writes the codes as latents.

python Executors/main_pointcloud.py [flags] [--model§PointCloud§encoder dgcnn]
With no arguments: the point clouds of the bundled synthetic 3D cell cohort (@cells/points.h5), on CPU.
"""

from Engineering.Engines import cli
from Engineering.errors import run_cli


def main(argv) -> dict:
    return cli.main(argv, task="pointcloud")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
