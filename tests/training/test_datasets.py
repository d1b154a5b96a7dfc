from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hep2.storage import LocalStorage
from hep2.vocabulary import CELL_PATTERNS, Pattern
from training.datasets import load_manifest, read_manifest


def test_i3a_folder_layout(tmp_path: Path, make_i3a_folder: Callable[..., Path], png_writer) -> None:
    table = load_manifest(make_i3a_folder(tmp_path))
    assert len(table) == 12 and table.has_groups
    assert [CELL_PATTERNS[v] for v in table.labels[:6]] == list(CELL_PATTERNS)  # I3A spellings parsed
    x = table.load(32, use_mask=True, workers=2)
    assert x.shape == (12, 2, 32, 32) and x.dtype == np.uint8
    assert x[:, 0].max() > 200 and set(np.unique(x[:, 1])) == {0, 255}
    h = table.data_hash()
    assert h == load_manifest(tmp_path / "labels.csv").data_hash()
    png_writer(tmp_path / "images" / "00003.png", np.zeros((43, 50), np.uint8))
    assert load_manifest(tmp_path).data_hash() != h  # the hash covers the pixels


def test_generic_manifest_without_masks_and_with_bad_labels(tmp_path: Path, cell_factory, png_writer) -> None:
    rng = np.random.default_rng(1)
    img, _ = cell_factory(rng, 30, 30, 2)
    png_writer(tmp_path / "cells" / "a.png", img)
    (tmp_path / "m.csv").write_text("image,label,patient_id\ncells/a.png,nuclear_membrane,P1\n"
                                    f"{tmp_path / 'cells' / 'a.png'},golgi,P2\n")
    table = load_manifest(tmp_path / "m.csv")
    assert [r.group for r in table.records] == ["P1", "P2"]
    assert [CELL_PATTERNS[v] for v in table.labels] == [Pattern.NUCLEAR_MEMBRANE, Pattern.GOLGI]
    assert table.records[0].mask is None and table.load(16, use_mask=True).shape == (2, 2, 16, 16)
    with pytest.raises(ValueError, match="row 2"):
        read_manifest(b"image,pattern\nx.png,mitochondrial\n", table.source)
    with pytest.raises(ValueError, match="'image'"):
        read_manifest(b"path,pattern\nx.png,golgi\n", table.source)
    assert not read_manifest(b"image,pattern\nx.png,golgi\n", table.source).has_groups


def test_manifest_from_object_storage(tmp_path: Path, make_i3a_folder: Callable[..., Path]) -> None:
    folder = make_i3a_folder(tmp_path / "src", n=6)
    storage = LocalStorage(tmp_path / "bucket-root", "hep2", b"k")
    for path in [*sorted(folder.rglob("*.png")), folder / "labels.csv"]:
        storage.put("datasets/lab1/" + path.relative_to(folder).as_posix(), path.read_bytes())
    table = load_manifest("datasets/lab1/labels.csv", storage=storage)
    local = load_manifest(folder)
    assert len(table) == 6
    assert np.array_equal(table.load(24, True), local.load(24, True))
    assert table.data_hash() == local.data_hash()


def test_real_i3a_folder(i3a_dir: Path) -> None:
    table = load_manifest(i3a_dir)
    assert len(table) == 11611 and table.has_groups
    assert set(table.labels.tolist()) == set(range(6))
    assert len(set(table.groups)) == 62
    x = table.subset(range(0, len(table), 1000)).load(48, True)
    assert x.shape == (12, 2, 48, 48) and (x[:, 1] > 0).any(axis=(1, 2)).all()
