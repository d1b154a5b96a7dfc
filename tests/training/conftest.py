"""Fixtures for the cell-classifier tests: the shared I3A data (skipped when absent) and synthetic cells."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.datasets import i3a_root


@pytest.fixture(scope="session")
def i3a_dir() -> Path:
    root = i3a_root()
    if not (root / "labels.csv").is_file():
        pytest.skip(f"shared I3A data not found at {root} (set HEP2_SHARED_DATA or put shared/ beside the "
                    "checkout)")
    return root


@pytest.fixture(scope="session")
def i3a_rows(i3a_dir: Path) -> list[dict[str, str]]:
    with (i3a_dir / "labels.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def tiny_i3a(tmp_path: Path, i3a_dir: Path, i3a_rows: list[dict[str, str]]) -> Path:
    """A labels.csv with 20 real cells per class from at least two groups each, absolute image paths."""
    rng = np.random.default_rng(0)
    by_class: dict[str, list[dict[str, str]]] = {}
    for row in i3a_rows:
        by_class.setdefault(row["pattern"], []).append(row)
    chosen = []
    for rows in by_class.values():
        chosen += [rows[i] for i in sorted(rng.choice(len(rows), 20, replace=False))]
    out = tmp_path / "tiny"
    out.mkdir()
    with (out / "labels.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(i3a_rows[0]))
        w.writeheader()
        for row in chosen:
            w.writerow({**row, "image": str(i3a_dir / row["image"]), "mask": str(i3a_dir / row["mask"])})
    return out


def synthetic_cell(rng: np.random.Generator, h: int, w: int, label: int) -> tuple[np.ndarray, np.ndarray]:
    """A dim elliptical 'cell' whose texture depends on the label, and its mask."""
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - h / 2) / (h / 2.5)) ** 2 + ((xx - w / 2) / (w / 2.5)) ** 2 <= 1
    img = rng.normal(8, 2, (h, w)) + mask * (20 + 10 * np.sin(xx / (label + 1.5)))
    return img.clip(0, 255).astype(np.uint8), mask


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _make_i3a_folder(root: Path, n: int = 12) -> Path:
    """An I3A-layout folder of ``n`` synthetic cells (classes cycle, 4 groups, I3A label spellings)."""
    rng = np.random.default_rng(0)
    spellings = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]
    root.mkdir(parents=True, exist_ok=True)
    with (root / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "pattern", "specimen_group", "image", "mask", "width", "height"])
        for i in range(n):
            img, mask = synthetic_cell(rng, 40 + i, 50, i % 6)
            write_png(root / "images" / f"{i:05d}.png", img)
            write_png(root / "masks" / f"{i:05d}.png", mask.astype(np.uint8) * 255)
            w.writerow([f"{i:05d}", spellings[i % 6], f"g{i % 4}", f"images/{i:05d}.png",
                        f"masks/{i:05d}.png", 50, 40 + i])
    return root


@pytest.fixture
def make_i3a_folder() -> Callable[..., Path]:
    return _make_i3a_folder


@pytest.fixture
def cell_factory() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    return synthetic_cell


@pytest.fixture
def png_writer() -> Callable[[Path, np.ndarray], None]:
    return write_png
