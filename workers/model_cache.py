"""The pipeline's models in a worker: loaded once, kept warm, reloaded when production changes.

Which weights a worker uses, per task: a pinned path from the settings, else the registry's production
version (downloaded from object storage once), else the model bundled with the code
(:func:`training.registry.resolve_weights`). The check is one small query per task, so every slide is
analysed with the production version of the moment it starts. The models are built by
:func:`analysis.build.build_models`, like everywhere else.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from analysis.analyze import Models
from analysis.build import build_models
from analysis.config import PipelineConfig
from analysis.models import ModelWeights
from analysis.segmentation import ClassicalSegmenter
from hep2.settings import Settings
from hep2.storage import ObjectStorage
from training.registry import resolve_weights


class ModelCache:
    def __init__(self) -> None:
        self._models: Models | None = None
        self._key: tuple[ModelWeights, ClassicalSegmenter] | None = None

    def get(self, session: Session, storage: ObjectStorage, settings: Settings, config: PipelineConfig) -> Models:
        """The models for the next slide; rebuilt when the weights or the lab's segmenter parameters
        (``config.segmentation``) change."""
        weights = resolve_weights(session, storage, settings)
        key = (weights, config.segmentation)
        if self._models is None or key != self._key:
            self._models = build_models(settings, config, weights)
            self._key = key
        return self._models
