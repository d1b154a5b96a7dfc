"""The texture cell classifier: handcrafted descriptors (:mod:`analysis.descriptors`) + a LightGBM booster.

A model is two files side by side:

* ``<stem>.txt``: LightGBM's own text model (``Booster.save_model``): trees as numbers, nothing executable;
* ``<stem>.json``: ``{"format": "hep2-texture-model/1", "descriptor": <DescriptorSpec.to_dict()>,
  "feature_names": [...], "classes": [...], "booster_file": "<stem>.txt", "booster_sha256": "...", ...}``.

:meth:`TextureModel.load` reads both without pickle/joblib, refuses an unknown format tag, a booster file
whose sha256 differs from the JSON's, and a descriptor whose feature names differ from the stored ones.
Probabilities come in ``CELL_PATTERNS`` order whatever order the booster was trained in.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from analysis.descriptors import Crop, DescriptorSpec, extract, feature_names
from hep2.vocabulary import CELL_PATTERNS

FORMAT = "hep2-texture-model/1"
CLASSES: tuple[str, ...] = tuple(p.value for p in CELL_PATTERNS)


class ModelFileError(ValueError):
    """A texture model file is malformed, of another format, or does not match its checksum."""


def _stem(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".json", ".txt") else p


@dataclass
class TextureModel:
    booster: lgb.Booster
    spec: DescriptorSpec
    classes: tuple[str, ...] = CLASSES  # the booster's class order (its output column i is classes[i])
    names: list[str] = field(default_factory=list)  # feature names, default: feature_names(spec)
    meta: dict[str, Any] = field(default_factory=dict)  # free-form provenance (CV summary, data hash...)
    num_threads: int = 1

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        if sorted(self.classes) != sorted(CLASSES):
            raise ValueError(f"classes must be a permutation of {CLASSES}, got {self.classes}")
        if not self.names:
            self.names = feature_names(self.spec)
        if self.booster.num_feature() != len(self.names):
            raise ValueError(f"booster expects {self.booster.num_feature()} features, the descriptor gives "
                             f"{len(self.names)}")
        self._order = np.array([self.classes.index(c) for c in CLASSES])

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """Descriptor rows ``(N, F)`` → probabilities ``float32 (N, 6)`` in ``CELL_PATTERNS`` order."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.names):
            raise ValueError(f"expected (N, {len(self.names)}) features, got {x.shape}")
        if len(x) == 0:
            return np.zeros((0, len(CLASSES)), np.float32)
        p = np.asarray(self.booster.predict(x, num_threads=self.num_threads), dtype=np.float64)
        p = p.reshape(len(x), -1)[:, self._order]
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict_proba(self, crops: Sequence[Crop]) -> np.ndarray:
        """Cell crops ``(image, mask or None)`` → probabilities ``float32 (N, 6)`` in ``CELL_PATTERNS`` order."""
        return self.predict_features(extract(crops, self.spec))

    def save(self, path_stem: str | Path) -> tuple[Path, Path]:
        """Write ``<stem>.txt`` (booster) and ``<stem>.json`` (spec, names, classes, checksum)."""
        stem = _stem(path_stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        txt, js = stem.with_name(stem.name + ".txt"), stem.with_name(stem.name + ".json")
        self.booster.save_model(str(txt))
        doc = {"format": FORMAT, "descriptor": self.spec.to_dict(), "feature_names": self.names,
               "classes": list(self.classes), "booster_file": txt.name,
               "booster_sha256": hashlib.sha256(txt.read_bytes()).hexdigest(),
               "standardisation": None, **({"meta": self.meta} if self.meta else {})}
        js.write_text(json.dumps(doc, indent=2) + "\n")
        return txt, js

    @classmethod
    def load(cls, path: str | Path, num_threads: int = 1) -> TextureModel:
        """Read a model saved by :meth:`save` (``path``: the stem, the ``.json`` or the ``.txt``)."""
        stem = _stem(path)
        js = stem.with_name(stem.name + ".json")
        try:
            doc = json.loads(js.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"cannot read texture model card {js}: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            tag = doc.get("format") if isinstance(doc, dict) else None
            raise ModelFileError(f"{js}: not a {FORMAT} file (format {tag!r})")
        txt = js.with_name(Path(doc.get("booster_file") or stem.name + ".txt").name)
        data = txt.read_bytes()
        if hashlib.sha256(data).hexdigest() != doc.get("booster_sha256"):
            raise ModelFileError(f"{txt}: sha256 differs from the one recorded in {js.name} (modified or corrupt)")
        if txt.suffix == ".gz":  # shipped models keep the booster's text gzip-compressed (a third of the size)
            data = gzip.decompress(data)
        if doc.get("standardisation") is not None:
            raise ModelFileError(f"{js}: standardisation is not supported by format {FORMAT}")
        spec = DescriptorSpec.from_dict(doc["descriptor"])
        names = list(doc["feature_names"])
        if names != feature_names(spec):
            raise ModelFileError(f"{js}: stored feature names differ from those of its descriptor spec (the "
                                 "descriptor code changed since the model was trained)")
        booster = lgb.Booster(model_str=data.decode("utf-8"))
        return cls(booster, spec, tuple(doc["classes"]), names, doc.get("meta", {}), num_threads)
