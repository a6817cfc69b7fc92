"""What a train request may say, validated with pydantic; stored as JSON on the train run."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.core.names import ModelRef, Name
from shared.core.vocab import Architecture, PixelScale, ResizeMode, TrainableTask
from shared.images.datasets import DatasetSpec


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DatasetRef(DatasetSpec):
    """A train request's dataset: the dataset's description, plus which of its rows to take."""
    model_config = ConfigDict(extra="forbid", frozen=False, protected_namespaces=())
    # only rows of manifests written after this time (a schedule sets it to its previous slot
    # when its dataset says "added_since_last_run": true)
    added_since: datetime | None = None
    added_since_last_run: bool = False


class TrainBase(Strict):
    """Either an existing version to fine-tune (`version`: "pageviews" or "pageviews@3"), or an architecture."""
    version: ModelRef | None = None
    architecture: Architecture | None = None
    backbone_weights: str | None = None  # a local file, inside the data roots or the model store
    width: int = Field(default=16, ge=4, le=256)  # VGG filter width

    @model_validator(mode="after")
    def _one(self):
        if (self.version is None) == (self.architecture is None):
            raise ValueError("base needs exactly one of 'version' or 'architecture'")
        return self


class Freeze(Strict):
    head_epochs: int = Field(default=0, ge=0)
    unfreeze_top: int | None = Field(default=None, ge=0)
    fine_tune_lr_factor: float = Field(default=0.1, gt=0, le=1)


class Optimizer(Strict):
    name: Literal["adam", "adamw", "sgd", "rmsprop", "nadam", "adagrad"] = "adam"
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    schedule: Literal["constant", "cosine", "step", "exponential"] = "constant"
    warmup_epochs: int = Field(default=0, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=1e-4, ge=0)


class EarlyStopping(Strict):
    patience: int = Field(default=5, ge=1)
    monitor: str = "val_loss"


class Splits(Strict):
    validation: float = Field(default=0.1, gt=0, lt=0.5)
    holdout: float = Field(default=0.1, gt=0, lt=0.5)


class MixIn(Strict):
    """Earlier training items mixed into a fine-tune so the model does not forget them."""
    dataset: DatasetRef | None = None  # default: the parent version's own dataset
    fraction: float = Field(default=0.3, gt=0, le=1)


class Gate(Strict):
    """Promote the new version to production only if its holdout metric beats production's by this much."""
    metric: str | None = None  # default: mae (regression, keypoints) or accuracy (classification)
    min_improvement: float = Field(default=0.0, ge=0)


class TrainRequest(Strict):
    model: Name  # the name the new version is registered under (a folder of the model store)
    task: TrainableTask  # an `embedding` model is imported, never trained
    dataset: DatasetRef
    base: TrainBase
    class_names: list[str] | None = None
    keypoint_names: list[str] | None = None
    input_size: int | None = Field(default=None, ge=16, le=1024)
    resize_mode: ResizeMode | None = None
    pixel_scale: PixelScale | None = None
    target_transform: Literal["none", "standardise", "log1p", "log1p_arctan"] = "none"
    freeze: Freeze = Field(default_factory=Freeze)
    optimizer: Optimizer = Field(default_factory=Optimizer)
    batch_size: int = Field(default=32, ge=1, le=4096)
    epochs: int = Field(default=10, ge=1, le=1000)
    early_stopping: EarlyStopping | None = None
    augmentation: dict = Field(default_factory=dict)
    splits: Splits = Field(default_factory=Splits)
    mix_in: MixIn | None = None
    seed: int = Field(default=0, ge=0, le=2**32 - 1)  # what numpy's generators take
    gate: Gate | None = None  # set: compare with production and promote when better
    shadow_sample: int = Field(default=200, ge=0, le=100_000)

    @model_validator(mode="after")
    def _consistent(self):
        if self.task == "classification" and not self.dataset.label_column:
            raise ValueError("classification needs dataset.label_column")
        if self.task in ("regression", "keypoints") and not self.dataset.target_columns:
            raise ValueError(f"{self.task} needs dataset.target_columns")
        if self.task == "keypoints" and len(self.dataset.target_columns) % 2:
            raise ValueError("keypoints need target_columns in x, y pairs")
        if self.base.architecture and self.input_size is None:
            raise ValueError("training an architecture needs input_size")
        if self.task == "keypoints" and self.augmentation and any(
                k in self.augmentation for k in ("flip", "rotation", "zoom", "translate")):
            raise ValueError("geometric augmentation would move the keypoints; use contrast or brightness")
        return self
