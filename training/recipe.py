"""The one training recipe of the cell classifier: every default of ``hep2 train cells`` and of the
service's retraining runs (:class:`training.retrain.RunParameters`) comes from :data:`RECIPE`.

The defaults are the recipe of the shipped model (``analysis/weights/cells-fused.json``: the CNN
``cells-default``, row O4 in docs/benchmarks.md, fused with the texture member T3); change them here, once,
when a better recipe is shipped.

``family`` is what a service training run trains: ``fused`` (the CNN and the texture model, cross-validated
on the same folds and fused per class, :mod:`training.fusion`; the product's default cell model since it was
checked on whole fields, :func:`analysis.models.fused.default_cell_model`) or ``cnn`` (the CNN alone, still
selectable per run). The texture family adds ~10-15% to a run (descriptors once plus one field-like copy, a
LightGBM fit per fold). A run is compared with the production version re-trained in that version's own
family on the same folds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from analysis.models.classifier import ModelConfig
    from training.trainer import TrainConfig


@dataclass(frozen=True)
class CellRecipe:
    """Architecture, input, optimisation and evaluation settings of one cell-classifier recipe."""

    arch: str = "resnet18_w32"
    img_size: int = 48
    use_mask: bool = True
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    patience: int = 0  # 0: the whole one-cycle schedule, last epoch kept (validation only logged)
    balance: Literal["sampler", "loss", "none"] = "sampler"
    field_aug: float = 0.5
    tta: int = 8
    precision: str = "auto"  # auto: AMP on CUDA, bf16 + channels-last on CPUs with native bf16, else fp32
    channels_last: bool | None = None  # None: NHWC on CUDA and with bf16 on the CPU
    folds: int = 5
    val_fraction: float = 0.125  # inner validation share of each training fold, drawn by group
    seed: int = 0  # initialisation, sampling, augmentation
    split_seed: int = 0  # folds and inner splits: runs with other training seeds share them
    family: Literal["cnn", "fused"] = "fused"  # service runs: the CNN alone, or CNN + texture fused (see above)
    texture_descriptor: dict[str, Any] | None = None  # DescriptorSpec fields; None: texture.SHIPPED_DESCRIPTOR
    texture_params: dict[str, Any] = field(default_factory=dict)  # LightGBM overrides of texture.DEFAULT_PARAMS
    texture_field_copies: int = 1  # field-like copies of each training cell for the texture model (T3)

    def __post_init__(self) -> None:
        if self.family not in ("cnn", "fused"):
            raise ValueError(f"family must be cnn or fused, not {self.family!r}")

    def model_config(self) -> ModelConfig:
        from analysis.models.classifier import ModelConfig  # torch: kept off `hep2 --help`, which reads RECIPE

        return ModelConfig(arch=self.arch, img_size=self.img_size, use_mask=self.use_mask)

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The trainer's settings; ``overrides`` replace any of them or add what is not part of the recipe
        (device, max_steps, ...)."""
        from training.trainer import TrainConfig  # torch: kept off `hep2 --help`, which reads RECIPE

        settings = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "patience": self.patience,
                    "balance": self.balance, "field_aug": self.field_aug, "precision": self.precision,
                    "channels_last": self.channels_last, "seed": self.seed}
        return TrainConfig(**{**settings, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> CellRecipe:
        """A copy with some fields changed (unknown names raise TypeError)."""
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


RECIPE = CellRecipe()
"""The default recipe (the shipped model's)."""
