"""The pipeline's models in a worker: loaded once, kept warm, reloaded when production changes.

Which weights a worker uses, per task: a pinned path from the settings, else the registry's production
version (downloaded from object storage once), else the model bundled with the code. The check is one
small query per task, so every slide is analysed with the production version of the moment it starts.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from db.models import ModelTask
from hep2.settings import Settings
from hep2.storage import ObjectStorage
from training import registry
from workers.pipeline.analyze import Models, PipelineConfig
from workers.pipeline.segmentation import ClassicalSegmenter


def resolve_weights(session: Session, storage: ObjectStorage, settings: Settings) -> dict[ModelTask, Path | None]:
    """Weights file per task (None: the bundled default)."""
    chosen: dict[ModelTask, Path | None] = {}
    for task in (ModelTask.CELL_PATTERN, ModelTask.SEGMENTATION):
        pinned = settings.cell_model_path if task is ModelTask.CELL_PATTERN else None
        version = registry.production(session, task)
        if pinned is not None:
            chosen[task] = pinned
        elif version is not None and not version.artifact_uri.startswith("bundled:"):
            chosen[task] = registry.fetch(storage, version, settings.state_dir / "model-cache")
        else:
            chosen[task] = None
    return chosen


class ModelCache:
    def __init__(self) -> None:
        self._models: Models | None = None
        self._key: tuple[dict[ModelTask, Path | None], ClassicalSegmenter] | None = None

    def get(self, session: Session, storage: ObjectStorage, settings: Settings, config: PipelineConfig) -> Models:
        """The models for the next slide; rebuilt when the weights or the lab's segmenter parameters
        (``config.segmentation``) change."""
        weights = resolve_weights(session, storage, settings)
        classical = config.segmentation
        if self._models is None or (weights, classical) != self._key:
            from workers.pipeline.segmentation import UnetSegmenter, default_segmenter

            if weights[ModelTask.SEGMENTATION] is not None:
                segmenter = UnetSegmenter(weights=weights[ModelTask.SEGMENTATION])
            else:
                segmenter = default_segmenter(kind=settings.segmenter, classical=classical)
            self._models = Models(segmenter=segmenter, classifier_weights=weights[ModelTask.CELL_PATTERN])
            self._key = (weights, classical)
        return self._models
