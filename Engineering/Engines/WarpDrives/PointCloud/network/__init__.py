from .config import ENCODERS, PointCloudConfig, PointCloudConfigError
from .model import DGCNNEncoder, FoldingDecoder, PointCloudAE, VNEncoder, knn

__all__ = [
    "DGCNNEncoder",
    "ENCODERS",
    "FoldingDecoder",
    "PointCloudAE",
    "PointCloudConfig",
    "PointCloudConfigError",
    "VNEncoder",
    "knn",
]
