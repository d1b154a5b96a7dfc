"""Cell data sets: the I3A Task-1 ``labels.csv`` layout and a generic manifest, from a folder or storage.

A manifest is a CSV with one row per cell:

* ``image`` (required): a path relative to the manifest's folder (or absolute), or with a storage backend,
  a key relative to the manifest key's prefix;
* ``pattern`` or ``label`` (required): our vocabulary or the I3A spelling (``NuMem``...);
* a grouping column, the first of ``specimen_group, group, specimen_id, specimen, patient_id, patient``
  (needed by grouped cross-validation);
* ``mask`` (optional, 0/non-zero image of the same size) and ``cell_id`` (optional, default: row number).

The I3A folder (``../shared/data/i3a-task1``) is such a manifest, so both go through :func:`read_manifest`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np
from PIL import Image

from analysis.preprocess import prepare_crop
from hep2.storage import ObjectStorage
from hep2.vocabulary import CELL_PATTERNS, parse_pattern

GROUP_COLUMNS = ("specimen_group", "group", "specimen_id", "specimen", "patient_id", "patient")
LABEL_COLUMNS = ("pattern", "label")


def shared_data_root() -> Path:
    """``$HEP2_SHARED_DATA`` or ``<repo>/../shared/data`` (it may not exist on a fresh clone)."""
    env = os.environ.get("HEP2_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def i3a_root() -> Path:
    """The I3A Task-1 folder inside the shared data."""
    return shared_data_root() / "i3a-task1"


class Source(Protocol):
    """Where a manifest's image references are read from."""

    def read(self, ref: str) -> bytes: ...


@dataclass(frozen=True)
class LocalSource:
    root: Path

    def read(self, ref: str) -> bytes:
        path = Path(ref)
        return (path if path.is_absolute() else self.root / path).read_bytes()


@dataclass(frozen=True)
class StorageSource:
    storage: ObjectStorage
    prefix: str = ""

    def read(self, ref: str) -> bytes:
        return self.storage.get(ref.lstrip("/") if ref.startswith("/") else self.prefix + ref)


@dataclass(frozen=True)
class CellRecord:
    cell_id: str
    label: int  # index into CELL_PATTERNS
    group: str  # "" when the manifest has no grouping column
    image: str
    mask: str | None


def decode_image(data: bytes) -> np.ndarray:
    """PNG/TIFF/... bytes → numpy array (palette and 1-bit images become 8-bit gray)."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode in ("P", "1", "LA", "PA"):
            img = img.convert("L")
        return np.asarray(img)


@dataclass
class CellTable:
    """The cells of one manifest plus where to read their pixels."""

    records: list[CellRecord]
    source: Source
    manifest_bytes: bytes = b""

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def groups(self) -> np.ndarray:
        return np.array([r.group for r in self.records])

    @property
    def has_groups(self) -> bool:
        return all(r.group for r in self.records)

    def subset(self, indices: Sequence[int]) -> CellTable:
        return CellTable([self.records[i] for i in indices], self.source, self.manifest_bytes)

    def read_crop(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        rec = self.records[i]
        image = decode_image(self.source.read(rec.image))
        return image, (decode_image(self.source.read(rec.mask)) if rec.mask else None)

    def read_crops(self) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Every cell's (image, mask or None), in manifest order (what classifiers that pre-process for
        themselves take: the fused model, the texture model)."""
        return [self.read_crop(i) for i in range(len(self))]

    def load(self, size: int, use_mask: bool, workers: int = 4) -> np.ndarray:
        """Every crop pre-processed to ``uint8 (N, C, size, size)`` (tiny: 11.6k cells at 64 px ≈ 95 MB)."""
        def one(i: int) -> np.ndarray:
            image, mask = self.read_crop(i)
            return prepare_crop(image, mask, size, use_mask)

        with ThreadPoolExecutor(max(1, workers)) as pool:
            crops = list(pool.map(one, range(len(self))))
        channels = 2 if use_mask else 1
        return np.stack(crops) if crops else np.zeros((0, channels, size, size), np.uint8)

    def data_hash(self) -> str:
        """sha256 over the manifest bytes, then every referenced image and mask, in manifest order."""
        h = hashlib.sha256(self.manifest_bytes)
        for rec in self.records:
            for ref in (rec.image, rec.mask):
                if ref:
                    h.update(hashlib.sha256(self.source.read(ref)).digest())
        return h.hexdigest()


def _first(columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    return next((c for c in candidates if c in columns), None)


def read_manifest(data: bytes, source: Source) -> CellTable:
    """Parse manifest CSV bytes (see the module docstring); raise ValueError on a malformed manifest."""
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
    columns = reader.fieldnames or []
    label_col, group_col = _first(columns, LABEL_COLUMNS), _first(columns, GROUP_COLUMNS)
    if "image" not in columns or label_col is None:
        raise ValueError(f"manifest needs an 'image' and a 'pattern' or 'label' column, has {columns}")
    records = []
    for n, row in enumerate(reader):
        try:
            label = CELL_PATTERNS.index(parse_pattern(row[label_col]))
        except ValueError as exc:
            raise ValueError(f"manifest row {n + 2}: {exc}") from None
        records.append(CellRecord(
            cell_id=(row.get("cell_id") or str(n)).strip(), label=label,
            group=(row[group_col] or "").strip() if group_col else "",
            image=row["image"].strip(), mask=(row.get("mask") or "").strip() or None))
    return CellTable(records, source, data)


def load_manifest(manifest: str | Path, storage: ObjectStorage | None = None) -> CellTable:
    """A manifest from a local path (folder → its ``labels.csv``), or a key in ``storage``."""
    if storage is not None:
        key = str(manifest)
        parent = str(PurePosixPath(key).parent)
        prefix = "" if parent in ("", ".") else parent + "/"
        return read_manifest(storage.get(key), StorageSource(storage, prefix))
    path = Path(manifest)
    if path.is_dir():
        path = path / "labels.csv"
    return read_manifest(path.read_bytes(), LocalSource(path.parent))
