"""The Lightning DataModule of the latent predictors: in-memory (z, y) tensors per split.

Latents are small (samples x latent_dim), so every split is held as tensors; the
training order is a pure function of (seed, epoch) as for the image DataModule,
so a resumed run sees the same batches.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from Engineering.data.datamodule import EpochShuffle
from Engineering.data.latent_tables import LatentSet


class LatentDataModule(L.LightningDataModule):
    def __init__(self, data: LatentSet, batch_size: int, seed: int):
        super().__init__()
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self._datasets: dict[str, TensorDataset] = {}

    def has(self, split: str) -> bool:
        return bool(self.data.rows(split).any())

    def dataset(self, split: str) -> TensorDataset:
        if split not in self._datasets:
            rows = self.data.rows(split)
            self._datasets[split] = TensorDataset(
                torch.from_numpy(self.data.Z[rows]), torch.from_numpy(self.data.Y[rows])
            )
        return self._datasets[split]

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train")
        return DataLoader(ds, batch_size=self.batch_size, sampler=EpochShuffle(len(ds), self.seed))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("val"), batch_size=self.batch_size)
