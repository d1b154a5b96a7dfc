"""The whole-field pipeline as one plain function: image bytes in, :class:`SlideAnalysis` out.

decode → quality gate (unreadable fields rejected) → segment → measure cells (filters, mitoses) → intensity →
classify cells → specimen (a negative call needs the gate's evidence of cells) → overlay layer (the full overlay
is composed from the upload and the layer on request: :func:`analysis.overlay.overlay_of_upload`). No queue, database
or storage inside; the worker task stores what comes out. The tunable rules are
:class:`analysis.config.PipelineConfig`; the models come from :func:`analysis.build.build_models`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from analysis.cells import Cell, background_level, classify_cells, measure_cells
from analysis.config import PipelineConfig
from analysis.decode import decode_upload
from analysis.fibrillar import field_fibrillar_index
from analysis.intensity import IntensityResult, measure_intensity
from analysis.models import DEFAULT_SEGMENTER
from analysis.models.files import combined_sha256
from analysis.models.fused import load_cell_classifier
from analysis.overlay import render_layer
from analysis.quality import QualityReport, assess_field, count_nuclei, negative_needs_cells
from analysis.segmentation import ClassicalSegmenter
from analysis.specimen import SpecimenConfig, SpecimenResult, aggregate, cytoplasm_ratio, hold_for_review
from analysis.types import InvalidImageError, Segmenter
from hep2.vocabulary import NEGATIVE


def _sha256(path: Path) -> str:
    stat = path.stat()  # hashed once per file version (not once per field)
    return _sha256_of(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256_of(name: str, size: int, mtime_ns: int) -> str:
    path = Path(name)
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Models:
    """The segmenter and the cell classifier, each loaded once on first use (or injected, e.g. in tests)."""

    def __init__(self, segmenter: Segmenter | None = None, classifier: Any | None = None,
                 classifier_weights: str | Path | None = None, device: str = "auto") -> None:
        self._segmenter, self._classifier = segmenter, classifier
        self.classifier_weights, self.device = classifier_weights, device

    @property
    def segmenter(self) -> Segmenter:
        if self._segmenter is None:  # analysis.build.build_models chooses; this is the plain default
            self._segmenter = ClassicalSegmenter()
        return self._segmenter

    @property
    def classifier(self) -> Any:
        if self._classifier is None:
            self._classifier = load_cell_classifier(self.classifier_weights, device=self.device)
        return self._classifier

    def versions(self) -> dict[str, Any]:
        """What produced a result: per model its name, weights file(s), sha256 and model-card fields.

        An ensemble classifier's ``sha256`` is the sha256 of its members' hashes (one line each), so the
        combination has one identity; ``members`` lists the files.
        """
        seg = self._segmenter
        seg_info: dict[str, Any] = {"name": getattr(seg, "name", None)}
        seg_weights = getattr(seg, "weights", None)
        if seg_weights is None and seg_info["name"] == "unet":
            seg_weights = DEFAULT_SEGMENTER
        seg_info.update(_files_info([seg_weights] if seg_weights else []))
        if seg_info["name"] == "classical" and is_dataclass(seg):
            seg_info["params"] = asdict(seg)
        clf = self._classifier
        clf_info: dict[str, Any] = {"name": type(clf).__name__ if clf is not None else None}
        paths = getattr(clf, "paths", None) or ([clf.weights] if getattr(clf, "weights", None) else [])
        clf_info.update(_files_info(paths))
        card = getattr(clf, "card", None) or {}
        clf_info.update({k: card[k] for k in ("name", "version", "date", "arch", "tta") if k in card})
        if clf is not None and hasattr(clf, "tta"):
            clf_info["tta"] = clf.tta
        return {"segmenter": seg_info, "classifier": clf_info}


def _files_info(paths: list[Any]) -> dict[str, Any]:
    files = [Path(p) for p in paths if p and Path(p).is_file()]
    if not files:
        return {}
    hashes = [_sha256(f) for f in files]
    if len(files) == 1:
        card = Path(files[0]).with_suffix(".json")
        extra = {"card": card.name} if card.is_file() else {}
        return {"weights": files[0].name, "sha256": hashes[0], **extra}
    return {"weights": "+".join(f.name for f in files), "sha256": combined_sha256(hashes),
            "members": [{"weights": f.name, "sha256": h} for f, h in zip(files, hashes, strict=True)]}


@dataclass
class SlideAnalysis:
    intensity: IntensityResult
    specimen: SpecimenResult
    cells: list[Cell]
    overlay_layer: bytes = field(repr=False)
    """What the overlay needs beyond the upload (:func:`analysis.overlay.render_layer`); the overlay itself:
    :func:`analysis.overlay.overlay_of_upload`."""
    timings_ms: dict[str, float]
    model_versions: dict[str, Any]
    image: dict[str, Any]
    """Decode facts: shape, bit depth, format, channel rule, annotation pixels."""
    quality: QualityReport | None = None
    """The quality gate's measurements (:mod:`analysis.quality`), incl. the nuclei found."""

    def to_dict(self, with_cells: bool = True) -> dict[str, Any]:
        """JSON-ready (the overlay layer is left out: store it as its own PNG)."""
        cells = [{k: v for k, v in asdict(c).items() if k != "crop_box"} for c in self.cells]
        out = {"intensity": asdict(self.intensity), "specimen": asdict(self.specimen),
               "n_cells": len(self.cells), "n_classified": sum(c.probabilities is not None for c in self.cells),
               "n_mitotic": sum(c.mitotic for c in self.cells), "timings_ms": self.timings_ms,
               "model_versions": self.model_versions, "image": self.image,
               "quality": self.quality.to_dict() if self.quality else None}
        if with_cells:
            out["cells"] = cells
        return out


def specimen_rules(config: SpecimenConfig, classifier: Any) -> SpecimenConfig:
    """The lab's specimen rules, with the out-of-vocabulary thresholds calibrated for this classifier (its
    model card's ``specimen_thresholds``) wherever the lab's configuration does not set them itself."""
    card = getattr(classifier, "card", None) or {}
    calibrated = {k: v for k, v in (card.get("specimen_thresholds") or {}).items()
                  if k in SpecimenConfig.model_fields and k not in config.model_fields_set}
    return config.model_copy(update=calibrated) if calibrated else config


def analyze_field(data: bytes, models: Models, sidecar: dict | None = None, config: PipelineConfig | None = None,
                  title: str = "", accept_16bit: bool = False) -> SlideAnalysis:
    """Run every stage on one image; raises :class:`InvalidImageError` for input that cannot be analysed.

    ``accept_16bit``: analyse 16-bit images instead of rejecting them (callers pass ``HEP2_ACCEPT_16BIT``).
    """
    cfg = config or PipelineConfig()
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round((now - clock) * 1000.0, 1)
        clock = now

    image = decode_upload(data, accept_16bit)
    lap("decode")
    quality = assess_field(image, cfg.quality)  # raises InvalidImageError for an unreadable field
    quality.nuclei = count_nuclei(image, cfg.quality)
    lap("quality")
    labels = np.asarray(models.segmenter.segment(image))
    if labels.shape != image.shape:
        raise RuntimeError(f"segmenter returned {labels.shape} for an image of {image.shape}")
    labels = labels.astype(np.int32, copy=False)
    lap("segment")
    background = background_level(image, labels)  # (median, sigma): used by cells, intensity and specimen
    cells = measure_cells(image, labels, cfg.cells, background=background[0])
    lap("cells")
    intensity = measure_intensity(image, labels, cells, sidecar, cfg.intensity, background=background)
    lap("intensity")
    if intensity.intensity_class != "negative":
        classify_cells(image, labels, cells, models.classifier, cfg.cells)
    lap("classify")
    ratio = cytoplasm_ratio(image, labels, cells, background[0])
    rules = specimen_rules(cfg.specimen, models.classifier) if intensity.intensity_class != "negative" \
        else cfg.specimen
    specimen = aggregate(cells, intensity.intensity_class, ratio, rules,
                         fibrillar=field_fibrillar_index(image.signal, labels, cells))
    no_cells = negative_needs_cells(quality, cfg.quality) if specimen.pattern == NEGATIVE else None
    if specimen.pattern == NEGATIVE and no_cells is None:
        specimen.reasons.append(f"cells seen: {quality.nuclei} nucleus-sized objects (quality gate)")
    hold_for_review(specimen, [*quality.review_reasons, *([no_cells] if no_cells else [])],
                    withdraw_negative=no_cells is not None)
    lap("specimen")
    layer = render_layer(image, labels, cells, title=title, index=intensity.index,
                         intensity_class=intensity.intensity_class)
    lap("overlay")
    facts = {"height": image.shape[0], "width": image.shape[1], "bit_depth": image.bit_depth,
             "format": image.source_format, "channel_rule": image.channel_rule,
             "annotation_pixels": int(image.annotation_mask.sum())}
    versions = models.versions()
    lap("versions")  # every step of the work is inside one of the timings
    return SlideAnalysis(intensity=intensity, specimen=specimen, cells=cells, overlay_layer=layer,
                         timings_ms=timings, model_versions=versions, image=facts, quality=quality)


__all__ = ["InvalidImageError", "Models", "SlideAnalysis", "analyze_field"]
