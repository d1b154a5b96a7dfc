"""The files a cell classifier is made of (analysis.models.files) and a registry version's family."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from analysis.models.files import artifact_files, classifier_files, combined_sha256, sha256_file
from db.models import ModelTask, ModelVersion


def fused_folder(tmp_path: Path) -> Path:
    for name in ("m-cnn.safetensors", "m-cnn.json", "m-texture.txt.gz"):
        (tmp_path / name).write_bytes(name.encode())
    (tmp_path / "m-texture.json").write_text(json.dumps({"booster_file": "m-texture.txt.gz"}))
    entry = tmp_path / "m.json"
    entry.write_text(json.dumps({"members": [{"family": "cnn", "file": "m-cnn.safetensors"},
                                             {"family": "texture", "file": "m-texture.json"}]}))
    return entry


def test_a_fused_model_is_identified_by_its_json_and_members_and_ships_their_companions(tmp_path: Path) -> None:
    entry = fused_folder(tmp_path)
    assert [p.name for p in classifier_files(entry)] == ["m.json", "m-cnn.safetensors", "m-texture.json"]
    assert [p.name for p in artifact_files(entry)] == ["m.json", "m-cnn.safetensors", "m-cnn.json",
                                                       "m-texture.json", "m-texture.txt.gz"]
    hashes = [sha256_file(p) for p in classifier_files(entry)]
    assert combined_sha256(hashes) == hashlib.sha256("\n".join(hashes).encode()).hexdigest()
    cnn = tmp_path / "m-cnn.safetensors"
    assert classifier_files(cnn) == artifact_files(cnn) == [cnn]
    assert combined_sha256([sha256_file(cnn)]) == sha256_file(cnn)


def test_family_of_a_version() -> None:
    def version(uri: str, entry: str | None, task: ModelTask = ModelTask.CELL_PATTERN) -> ModelVersion:
        return ModelVersion(task=task, version="v", artifact_uri=uri, entry_file=entry, sha256="0" * 64)

    assert version("models/cell_pattern/v/", "model.json").family == "fused"
    assert version("models/cell_pattern/v/", "weights.safetensors").family == "cnn"
    assert version("models/cell_pattern/v/", None).family == "cnn"  # registered before entry_file existed
    bundled_fused = "bundled:cells-fused.json+cells-default.safetensors+cells-fused-texture.json"
    assert version(bundled_fused, None).family == "fused"
    assert version("bundled:cells-default.safetensors", None).family == "cnn"
    assert version("models/segmentation/v/", None, ModelTask.SEGMENTATION).family is None
