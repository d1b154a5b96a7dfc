"""Training-set snapshots: registered manifests plus the cells reviewers confirmed or corrected.

A snapshot is written to object storage as one manifest (``snapshots/run-<id>/labels.csv``) whose image
and mask columns hold absolute keys (``/datasets/...``), plus the crops of reviewed cells (stored by
content under ``reviewed-cells/``, so the same rows always give the same manifest). Its SHA-256
(over the manifest and every image and mask, see ``CellTable.data_hash``) is stored on the training run,
so a run can be reproduced from exactly the rows it used.

Reviewed cells: the latest ``cell_pattern`` review of each cell that was not undone is its label, mapped
explicitly by ``hep2.vocabulary.TRAINING_LABEL_OF_CELL_REVIEW`` to the six I3A classes the classifier learns:
``other`` (a pattern outside them) and ``not_a_cell`` are left out of training. Its crop and mask are cut
from the slide image as the pipeline does (decode, segment, the instance under the stored centroid).
Its group is the patient (pseudonymised id), else the specimen, else the slide: grouped CV never splits
a patient's cells across training and test.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from analysis.build import build_models
from analysis.cells import crop_cell, measure_cells
from analysis.config import load_config
from analysis.decode import ImageLimits, decode_image
from db.models import Cell, Dataset, Review, SlideImage, Specimen
from hep2.settings import get_settings
from hep2.storage import ObjectStorage
from hep2.vocabulary import CELL_PATTERNS, TRAINING_LABEL_OF_CELL_REVIEW, parse_pattern
from training.datasets import CellTable, load_manifest
from training.registry import resolve_weights

COLUMNS = ("cell_id", "pattern", "specimen_group", "image", "mask", "source")


@dataclass(frozen=True)
class ReviewedCell:
    cell_id: int
    label: str
    group: str
    slide_key: str
    centroid: tuple[float, float]  # (y, x)


def register_dataset(session: Session, storage: ObjectStorage, name: str, folder: Path) -> Dataset:
    """Upload a local manifest folder (``labels.csv`` + the files it names) as ``datasets/<name>/``."""
    table = load_manifest(folder)
    prefix = f"datasets/{name}/"
    for record in table.records:
        for ref in (record.image, record.mask):
            if ref:
                storage.put(prefix + ref, (folder / ref).read_bytes())
    storage.put(prefix + "labels.csv", table.manifest_bytes, "text/csv")
    uploaded = load_manifest(prefix + "labels.csv", storage)
    row = session.scalar(select(Dataset).where(Dataset.name == name)) or Dataset(name=name)
    row.manifest_uri, row.format, row.rows = prefix + "labels.csv", "manifest", len(uploaded)
    row.sha256 = uploaded.data_hash()
    session.add(row)
    return row


def reviewed_cells(session: Session) -> list[ReviewedCell]:
    """Cells with a ``cell_pattern`` review that is a training label; the latest review not undone wins."""
    latest = (select(Review.cell_id, func.max(Review.id).label("review_id"))
              .where(Review.cell_id.is_not(None), Review.field == "cell_pattern", Review.undone_at.is_(None))
              .group_by(Review.cell_id).subquery())
    rows = session.execute(
        select(Cell, Review.new_value, SlideImage.key, SlideImage.id, Specimen)
        .join(latest, latest.c.cell_id == Cell.id).join(Review, Review.id == latest.c.review_id)
        .join(SlideImage, SlideImage.id == Cell.slide_image_id)
        .outerjoin(Specimen, Specimen.id == SlideImage.specimen_id).order_by(Cell.id))
    cells = []
    for cell, label, key, slide_id, specimen in rows:
        group = (f"patient:{specimen.patient.pseudo_id}" if specimen and specimen.patient
                 else f"specimen:{specimen.id}" if specimen else f"slide:{slide_id}")
        pattern = TRAINING_LABEL_OF_CELL_REVIEW.get(label, None) if label in TRAINING_LABEL_OF_CELL_REVIEW \
            else parse_pattern(label)  # a spelling from before the explicit map (raises if unknown)
        if pattern is None:  # other / not a cell: reviewed, but not one of the six classes
            continue
        cells.append(ReviewedCell(cell.id, pattern.value, group, key, (cell.centroid_y, cell.centroid_x)))
    return cells


def crop_reviewed(session: Session, storage: ObjectStorage, cells: list[ReviewedCell],
                  ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """cell id -> (uint8 image, bool mask), cut the way the pipeline cuts cells for the classifier."""
    settings = get_settings()  # the same models (registry) and input policy as the workers
    weights = resolve_weights(session, storage, settings)
    segmenter = build_models(settings, load_config(settings.pipeline_config), weights).segmenter
    limits, crops = ImageLimits(accept_16bit=settings.accept_16bit), {}
    for key in sorted({c.slide_key for c in cells}):
        field = decode_image(storage.get(key), limits)
        labels = np.asarray(segmenter.segment(field), dtype=np.int32)
        by_label = {m.label: m for m in measure_cells(field, labels)}
        for cell in (c for c in cells if c.slide_key == key):
            y, x = (min(max(round(v), 0), s - 1) for v, s in zip(cell.centroid, labels.shape, strict=True))
            if labels[y, x] in by_label:
                crops[cell.cell_id] = crop_cell(field, labels, by_label[int(labels[y, x])])
    return crops


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def build_snapshot(session: Session, storage: ObjectStorage, run_id: int, dataset_names: list[str] | None,
                   include_reviews: bool = True) -> tuple[str, CellTable]:
    """Write the run's manifest (+ reviewed crops) to storage; return its key and the loaded table."""
    query = select(Dataset).order_by(Dataset.name)
    if dataset_names:
        query = query.where(Dataset.name.in_(dataset_names))
    datasets = list(session.scalars(query))
    if dataset_names and len(datasets) != len(set(dataset_names)):
        missing = set(dataset_names) - {d.name for d in datasets}
        raise LookupError(f"unknown dataset(s): {sorted(missing)}")
    prefix = f"snapshots/run-{run_id}/"
    rows: list[dict[str, str]] = []
    for dataset in datasets:
        table = load_manifest(dataset.manifest_uri, storage)
        base = dataset.manifest_uri.rsplit("/", 1)[0] + "/"
        for r in table.records:
            group = f"{dataset.name}:{r.group}" if r.group else ""
            rows.append({"cell_id": f"{dataset.name}:{r.cell_id}", "pattern": CELL_PATTERNS[r.label].value,
                         "specimen_group": group, "image": "/" + base + r.image,
                         "mask": "/" + base + r.mask if r.mask else "", "source": dataset.name})
    if include_reviews:
        cells = {c.cell_id: c for c in reviewed_cells(session)}
        for cell_id, (image, mask) in crop_reviewed(session, storage, list(cells.values())).items():
            cell = cells[cell_id]
            # content-addressed, outside the run's folder: the same reviews give the same manifest and hash
            image_png, mask_png = _png(image), _png(mask.astype(np.uint8) * 255)
            image_key = f"reviewed-cells/{cell_id}-{hashlib.sha256(image_png).hexdigest()[:16]}.png"
            mask_key = f"reviewed-cells/{cell_id}-{hashlib.sha256(mask_png).hexdigest()[:16]}-mask.png"
            storage.put(image_key, image_png, "image/png")
            storage.put(mask_key, mask_png, "image/png")
            rows.append({"cell_id": f"review:{cell_id}", "pattern": cell.label, "specimen_group": cell.group,
                         "image": "/" + image_key, "mask": "/" + mask_key, "source": "reviews"})
    if not rows:
        raise ValueError("the snapshot is empty: register a dataset or review some cells first")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    storage.put(prefix + "labels.csv", buffer.getvalue().encode(), "text/csv")
    return prefix + "labels.csv", load_manifest(prefix + "labels.csv", storage)
