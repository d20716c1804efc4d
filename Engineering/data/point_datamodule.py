"""The point-cloud DataModule: (N, 3) or (N, 4) clouds stored under patient/field/instance/key (DESIGN "Data
contract"; written by ``preprocess/make_point_clouds.py``), split by the same fold CSV as the images. A sample is
one cloud, shipped channels-first as (F, N) so that tasks see F (3 or 4) as their input channels; every cloud of
a run has the same N (the sampler's fixed size)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import h5py
import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from Engineering.config import Config
from Engineering.data.datamodule import H5DataModule, data_dir
from Engineering.data.folds import WHOLE_FILE, is_whole_file, read_fold
from Engineering.data.index import key_selected, selection_from
from Engineering.data.layout import SampleInfo, SampleKey, iter_datasets
from Engineering.errors import UserError
from Engineering.io.read_budget import check_read


@dataclass(frozen=True)
class CloudRecord(SampleKey):
    shape: tuple = ()


class CloudSamples(Dataset):
    def __init__(self, h5file, records: list[CloudRecord]):
        self.h5file, self.records = h5file, records
        self._h5 = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item):
        return self.sample(item[0] if isinstance(item, tuple) else item)  # EpochShuffle yields (index, epoch)

    def sample(self, i: int) -> dict:
        if self._h5 is None:  # one handle per worker process
            self._h5 = h5py.File(self.h5file, "r")
        rec = self.records[i]
        cloud = np.asarray(self._h5[rec.path][()], dtype=np.float32)
        if not np.isfinite(cloud).all():
            raise UserError(f"{self.h5file}:{rec.path} holds NaN or infinite coordinates")
        return {"inp": torch.from_numpy(np.ascontiguousarray(cloud.T)), "index": i}

    def describe(self, i: int) -> dict:
        r = self.records[i]
        return {
            "patientID": r.patientID,
            "fieldID": r.fieldID,
            "instanceID": r.instanceID,
            "key": r.key,
            "c": None,
            "t": None,
            "s": None,
            "record": i,
        }

    def sample_info(self, i: int) -> SampleInfo:
        r = self.records[i]
        return SampleInfo(r.patientID, r.fieldID, r.instanceID, r.key)

    def key_digest(self) -> str:
        return hashlib.sha1("\n".join(r.path for r in self.records).encode()).hexdigest()


class PointCloudDataModule(H5DataModule):
    """json§datafile names the point-cloud file (e.g. points.h5) in json§datadir; loaders, shuffling and splits
    are the image DataModule's."""

    def __init__(self, cfg: Config, merge_train_val: bool = False):
        L.LightningDataModule.__init__(self)
        self.cfg, self.merge_train_val = cfg, merge_train_val
        self.test_skip: set[int] = set()
        if cfg.data.batch_groups:
            raise UserError("--batch_groups: group-pure batches are for images; point-cloud runs do not take them")
        root = data_dir(cfg.paths)
        self.h5file = root / cfg.paths.datafile
        if not self.h5file.is_file():
            raise UserError(f"point-cloud file not found: {self.h5file} (preprocess/make_point_clouds.py writes one)")
        sel = selection_from(cfg.paths, need_minmax=False)  # the images' key selection rules
        self.records, sizes = [], set()
        with h5py.File(self.h5file, "r") as h5:
            for entry, ds in iter_datasets(h5):
                if not key_selected(entry.key, sel):
                    continue
                if ds.ndim != 2 or ds.shape[1] not in (3, 4):
                    raise UserError(
                        f"{self.h5file}:{entry.path} has shape {ds.shape}; point clouds are (N, 3) or "
                        "(N, 4) (xyz + intensity)"
                    )
                if ds.dtype.kind not in "iuf":  # strings, objects, complex: no coordinates to learn from
                    raise UserError(f"{self.h5file}:{entry.path} holds {ds.dtype} data; point clouds are real numbers")
                if ds.shape[0] < 2:  # a cloud of 0 or 1 points has no shape (and no spread to normalise by)
                    raise UserError(
                        f"{self.h5file}:{entry.path} has {ds.shape[0]} point(s); a point cloud needs "
                        "at least 2 (make_point_clouds.py --n_points)"
                    )
                check_read(ds.shape, np.float32, f"point cloud {self.h5file}:{entry.path}")
                self.records.append(
                    CloudRecord(entry.patientID, entry.fieldID, entry.instanceID, entry.key, tuple(ds.shape))
                )
                sizes.add(tuple(ds.shape))
        if not self.records:
            raise UserError(
                f"no point cloud in {self.h5file} matches json§DS_selected_primaries="
                f"{cfg.paths.DS_selected_primaries!r} / DS_selected_auxiliaries="
                f"{cfg.paths.DS_selected_auxiliaries!r}"
            )
        if len(sizes) > 1:
            raise UserError(
                f"the point clouds of {self.h5file} differ in shape ({', '.join(map(str, sorted(sizes)))}); "
                "sample every cloud to the same N (make_point_clouds.py --n_points)"
            )
        self.cache_hit = False
        fold_ref = cfg.paths.foldCSV
        self.fold = WHOLE_FILE if is_whole_file(fold_ref) else read_fold(self._resolve(root, fold_ref), cfg.run.foldID)
        self._check_fold_ids()
        self._datasets, self._codes = {}, {}
        self.batch_size = cfg.training.batch_size
        self.group_columns = []

    def dataset(self, split: str) -> CloudSamples:
        if split not in self._datasets:
            ids = self.split_ids(split)
            records = [r for r in self.records if ids is None or r.patientID in ids]
            if not records:
                raise UserError(f"the '{split}' split of fold {self.cfg.run.foldID} has no selected point clouds")
            self._datasets[split] = CloudSamples(self.h5file, records)
        return self._datasets[split]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return batch  # coordinates are used as stored (voxel units about the volume's centre)
