"""Training requests: a train job (POST /api/v1/jobs/train), a sweep of them (POST /api/v1/sweeps), a nightly
schedule (POST /api/v1/schedules, PATCH /api/v1/schedules/<id>) and a dataset check (POST /api/v1/datasets/check).

Invariants:
- A train request is stored as JSON on its run and read back by the worker with this same model; its words
  (optimizers, schedules, augmentations, early-stopping monitors, gate metrics) come from shared/core/vocab.py,
  which worker/training builds from, so a request valid here is one the worker can run.
- Checks that span fields (a task's columns, a keypoint model's augmentations, a task's metrics) name the field at
  fault, as a field's own type would.
- A sweep's every grid point and a schedule's train template are validated as train requests here, before any
  job or row is made.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import string
from datetime import datetime, timezone
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StringConstraints,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from shared.core.names import ModelRef, Name
from shared.core.vocab import (
    AUGMENTATIONS,
    DEFAULT_GATE_METRIC,
    GATE_GUARDS,
    GEOMETRIC_AUGMENTATIONS,
    HOLDOUT_METRICS,
    MAX_AUGMENTATION,
    SWITCH_AUGMENTATIONS,
    Architecture,
    FitMonitor,
    HoldoutMetric,
    LrSchedule,
    OptimizerName,
    PixelScale,
    ResizeMode,
    TargetTransformKind,
    TrainableTask,
    fit_monitors,
)
from shared.images.datasets import DatasetSpec
from shared.schemas.common import Strict, refuse

Label = Annotated[str, StringConstraints(min_length=1, max_length=200)]


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
    """Over learned weights: the head alone for `head_epochs`, then the top `unfreeze_top` backbone layers (None:
    all) at the learning rate times `fine_tune_lr_factor`."""
    head_epochs: int = Field(default=0, ge=0, le=1000)
    unfreeze_top: int | None = Field(default=None, ge=0)
    fine_tune_lr_factor: float = Field(default=0.1, gt=0, le=1)


class Optimizer(Strict):
    name: OptimizerName = "adam"
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    schedule: LrSchedule = "constant"
    warmup_epochs: int = Field(default=0, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)  # sgd only
    weight_decay: float = Field(default=1e-4, ge=0)  # adamw only


class EarlyStopping(Strict):
    patience: int = Field(default=5, ge=1)
    monitor: FitMonitor = "val_loss"  # the task's own metric or the loss (shared/core/vocab.fit_monitors)


class Splits(Strict):
    validation: float = Field(default=0.1, gt=0, lt=0.5)
    holdout: float = Field(default=0.1, gt=0, lt=0.5)


class MixIn(Strict):
    """Earlier training items mixed into a fine-tune so the model does not forget them."""
    dataset: DatasetRef | None = None  # default: the parent version's own dataset
    fraction: float = Field(default=0.3, gt=0, le=1)


Tolerance = Annotated[float, Field(ge=0)]


class GateGuards(Strict):
    """How much worse than production each guard may get (None: not checked), whatever the gate's metric says.
    A guard of another task is not measured (shared/core/vocab.GUARDS_OF_TASK)."""
    log_loss: Tolerance | None = 0.10  # classification: relative rise of the holdout log-loss
    worst_class_recall: Tolerance | None = 0.05  # classification: absolute drop of the lowest per-class recall
    error_p90: Tolerance | None = 0.10  # regression, keypoints: relative rise of the per-item error's 90th percentile
    # the shadow diff's share of large changes (a changed class; a change beyond production's holdout error p90)
    # above the same share on the holdout (where the changes were measured to be improvements)
    shadow_large_changes: Annotated[float, Field(ge=0, le=1)] | None = 0.10


class Gate(Strict):
    """Promote the new version to production only if its holdout metric beats production's by at least
    `min_improvement` AND a paired test on the same holdout finds the improvement significant at `confidence`
    (worker/training/gate.py), and no guard got worse beyond its tolerance."""
    metric: HoldoutMetric | None = None  # one of the task's (HOLDOUT_METRICS); default DEFAULT_GATE_METRIC
    min_improvement: float = Field(default=0.0, ge=0)
    confidence: float = Field(default=0.95, ge=0.5, le=0.9999)
    guards: GateGuards = Field(default_factory=GateGuards)


assert set(GateGuards.model_fields) == set(GATE_GUARDS)


class CrawlCheck(Strict):
    """Checks of the rows a scheduled fine-tune adds (`dataset.added_since`) against production, before training:
    a crawl that fails one is quarantined (the job fails naming the check and its figures; nothing is trained)."""
    enabled: bool = True
    # classification: the new labels' agreement with production's predictions may fall at most this far below
    # production's accuracy on its own holdout; per class (of at least min_class_rows new rows), at most
    # max_class_agreement_drop below production's holdout recall of that class
    max_agreement_drop: float = Field(default=0.25, gt=0, le=1)
    max_class_agreement_drop: float = Field(default=0.5, gt=0, le=1)
    min_class_rows: int = Field(default=20, ge=1)
    # regression, keypoints: production's error on the new rows at most this many times its holdout error
    max_error_ratio: float = Field(default=3.0, gt=1)
    # the new rows' class shares (total variation distance) or targets (Kolmogorov-Smirnov statistic) against the
    # training data's, both from 0 to 1
    max_distribution_shift: float = Field(default=0.5, gt=0, le=1)
    max_holdout_duplicates: float = Field(default=0.02, ge=0, le=1)  # share of new rows whose image is a holdout's
    max_unreadable: float = Field(default=0.10, ge=0, le=1)  # share of new rows whose file cannot be read


class _Augmentations(Strict):
    def asked(self) -> dict[str, bool | float]:
        """The augmentations switched on (a switch true, a fraction above 0), in vocabulary order."""
        return {name: value for name, value in self if value}


Fraction = Annotated[StrictFloat, Field(ge=0, le=MAX_AUGMENTATION)]
# one field per word of shared/core/vocab.AUGMENTATIONS: the worker's make_augmentation reads this same model
Augmentation = create_model(
    "Augmentation", __base__=_Augmentations, __module__=__name__,
    __doc__="Random augmentation of training images: flip true/false, the others a fraction in [0, 1] (0: off).",
    **{name: (StrictBool, False) if name in SWITCH_AUGMENTATIONS else (Fraction, 0.0) for name in AUGMENTATIONS})


class TrainRequest(Strict):
    model: Name  # the name the new version is registered under (a folder of the model store)
    task: TrainableTask  # an `embedding` model is imported, never trained
    dataset: DatasetRef
    base: TrainBase
    class_names: list[Label] | None = None
    keypoint_names: list[Label] | None = None
    input_size: int | None = Field(default=None, ge=16, le=1024)
    resize_mode: ResizeMode | None = None
    pixel_scale: PixelScale | None = None
    target_transform: TargetTransformKind = "none"
    freeze: Freeze = Field(default_factory=Freeze)
    optimizer: Optimizer = Field(default_factory=Optimizer)
    batch_size: int = Field(default=32, ge=1, le=4096)
    epochs: int = Field(default=10, ge=1, le=1000)
    early_stopping: EarlyStopping | None = None
    augmentation: Augmentation = Field(default_factory=Augmentation)
    splits: Splits = Field(default_factory=Splits)
    mix_in: MixIn | None = None
    seed: int = Field(default=0, ge=0, le=2**32 - 1)  # what numpy's generators take
    # true: TensorFlow's op determinism too, for bit-identical weights on the same machine (slower); false: the
    # same data order and augmentation, the same losses up to float rounding (worker/training/fitting.seed)
    deterministic: StrictBool = False
    gate: Gate | None = None  # set: compare with production and promote when better
    crawl_check: CrawlCheck = Field(default_factory=CrawlCheck)  # applies when dataset.added_since is set
    shadow_sample: int = Field(default=200, ge=0, le=100_000)

    @model_validator(mode="after")
    def _consistent(self):
        refuse(type(self).__name__, [*self._column_problems(), *self._recipe_problems(),
                                     *gate_problems(self.task, self.gate, ("gate",))])
        return self

    def _column_problems(self):
        task, dataset = self.task, self.dataset
        if task == "classification" and not dataset.label_column:
            yield ("dataset", "label_column"), "classification needs dataset.label_column", None
        if task in ("regression", "keypoints") and not dataset.target_columns:
            yield ("dataset", "target_columns"), f"{task} needs dataset.target_columns", []
        if task == "keypoints" and len(dataset.target_columns) % 2:
            yield ("dataset", "target_columns"), "keypoints need target_columns in x, y pairs", dataset.target_columns
        if self.base.architecture and self.input_size is None:
            yield ("input_size",), "training an architecture needs input_size", None

    def _recipe_problems(self):
        if self.task == "keypoints":
            photometric = ", ".join(a for a in AUGMENTATIONS if a not in GEOMETRIC_AUGMENTATIONS)
            for name, value in self.augmentation.asked().items():
                if name in GEOMETRIC_AUGMENTATIONS:
                    yield (("augmentation", name), f"{name} is geometric and would move the keypoints; keypoint "
                           f"models take only {photometric}", value)
        monitors = fit_monitors(self.task)
        if self.early_stopping is not None and self.early_stopping.monitor not in monitors:
            yield (("early_stopping", "monitor"), f"training a {self.task} model records "
                   f"{', '.join(monitors)}; not {self.early_stopping.monitor}", self.early_stopping.monitor)


def gate_problems(task: str, gate: Gate | None, loc: tuple):
    """A gate's metric must be one its task's holdout measures."""
    if gate is not None and gate.metric is not None and gate.metric not in HOLDOUT_METRICS[task]:
        yield ((*loc, "metric"), f"the holdout of a {task} model measures {', '.join(HOLDOUT_METRICS[task])} "
               f"(default {DEFAULT_GATE_METRIC[task]}); not {gate.metric}", gate.metric)


# --------------------------------------------------------------------------------------------- sweeps

MAX_SWEEP_BYTES = 256 * 1024  # a train request is under a kilobyte; each of up to 64 jobs stores a copy
MAX_SWEEP_POINTS = 64
MAX_GRID_KEYS = 32


def _scalar(value):
    if isinstance(value, (dict, list)):
        raise ValueError("a grid value is a number, a string, true, false or null (grid keys name single settings)")
    return value


GridValue = Annotated[bool | int | float | Annotated[str, StringConstraints(max_length=4000)] | None,
                      BeforeValidator(_scalar)]


def _model_in(annotation) -> type[BaseModel] | None:
    """The pydantic model a field holds (also when optional), or None for a leaf."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def setting_paths(model: type[BaseModel] = TrainRequest, prefix: str = "") -> frozenset[str]:
    """Every leaf setting of a train request as a dotted path, e.g. "optimizer.learning_rate"."""
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        inner = _model_in(field.annotation)
        paths |= setting_paths(inner, f"{prefix}{name}.") if inner else {prefix + name}
    return frozenset(paths)


SETTING_PATHS = setting_paths()


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, keys in sorted order (count them first: see SweepRequest)."""
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def with_settings(spec: dict, point: dict) -> dict:
    """A copy of the request `spec` with each dotted path of `point` set (missing or null sections made)."""
    spec = copy.deepcopy(spec)
    for dotted, value in point.items():
        node = spec
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[leaf] = value
    return spec


class SweepRequest(Strict):
    """One train job per point of `grid` (setting paths of a train request -> the values to try) over `base`; all
    are compared on the same holdout (same model name, same salt)."""
    base: TrainRequest
    grid: dict[Annotated[str, StringConstraints(min_length=1, max_length=200)], list[GridValue]] = \
        Field(max_length=MAX_GRID_KEYS)
    _requests: list[TrainRequest] = PrivateAttr(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _small(cls, data):
        size = len(json.dumps(data, default=str))
        if size > MAX_SWEEP_BYTES:
            raise ValueError(f"base and grid take {size} bytes as JSON; at most {MAX_SWEEP_BYTES}")
        return data

    @model_validator(mode="after")
    def _points(self):
        """Paths first, then the count (before any point is built), then every point as a train request."""
        refuse("SweepRequest", [(("grid", key), f"{key!r} is not a setting of a train request (such as "
                                 "optimizer.learning_rate)", key) for key in self.grid if key not in SETTING_PATHS])
        if not self.grid or not all(self.grid.values()):
            refuse("SweepRequest", [(("grid",), "grid must map setting paths (e.g. 'optimizer.learning_rate') to "
                                     "non-empty lists", self.grid)])
        count = math.prod(len(values) for values in self.grid.values())
        if count > MAX_SWEEP_POINTS:
            refuse("SweepRequest", [(("grid",), f"the grid has {count} points; at most {MAX_SWEEP_POINTS}", count)])
        base = self.base_spec()
        requests = []
        for point in grid_points(self.grid):
            try:
                requests.append(TrainRequest.model_validate(with_settings(base, point)))
            except ValidationError as exc:
                refuse("SweepRequest", [_point_problem(point, error) for error in exc.errors()])
        self._requests = requests
        return self

    def base_spec(self) -> dict:
        """The base as the client gave it (what it left out stays out), as JSON."""
        return self.base.model_dump(mode="json", exclude_unset=True)

    def train_requests(self) -> list[TrainRequest]:
        """One validated train request per grid point, in grid_points order."""
        return list(self._requests)


def _point_problem(point: dict, error: dict) -> tuple[tuple, str, object]:
    """A grid point's validation error, placed at the grid key that set the value at fault (else at `grid`)."""
    where = ".".join(str(p) for p in error["loc"])
    key = next((k for k in point if where == k or where.startswith(k + ".")), None)
    shown = ", ".join(f"{k}={point[k]!r}" for k in point)
    return (("grid", key) if key else ("grid",)), f"at {shown}: {where or 'body'}: {error['msg']}", point


# --------------------------------------------------------------------------------------------- schedules

def _check_path_pattern(path: str) -> str:
    """Only {date:<strftime>} and {previous_date:<strftime>}: no attribute or index lookups, conversions or
    nested fields (`{date.year:>999999999}` would build a gigabyte string each night)."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(path)
                  if name is not None]
    except ValueError as exc:
        raise ValueError(f"bad pattern: {exc}") from None
    for name, spec, conversion in fields:
        if name not in ("date", "previous_date") or conversion or "{" in (spec or ""):
            raise ValueError("may hold only {date:<strftime pattern>} and {previous_date:<strftime pattern>}")
    now = datetime.now(timezone.utc)
    try:
        path.format(date=now, previous_date=now)
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise ValueError(f"bad pattern: {exc}") from None
    return path


class ScheduleDataset(DatasetRef):
    """A schedule's dataset: `path` may hold {date:<strftime>} and {previous_date:<strftime>}, each slot's local
    date and the previous slot's (e.g. "crawl/{date:%Y-%m-%d}/items.csv")."""
    @field_validator("path")
    @classmethod
    def _pattern(cls, path: str) -> str:
        return _check_path_pattern(path)


class ScheduleTrain(TrainRequest):
    """A schedule's train template: a train request whose dataset path is a pattern, rendered for each slot."""
    model: Name | None = None  # the schedule's `model` names the versions (a name here is replaced by it)
    dataset: ScheduleDataset


class ScheduleRequest(Strict):
    """POST /api/v1/schedules. `gate` applies to each slot's train request that sets no gate of its own."""
    name: Name
    cron: str = Field(min_length=1, max_length=100)
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    model: Name
    train: ScheduleTrain
    gate: Gate | None = None
    enabled: bool = True

    @model_validator(mode="after")
    def _gate_fits_task(self):
        refuse("ScheduleRequest", gate_problems(self.train.task, self.gate, ("gate",)))
        return self

    def train_template(self) -> dict:
        """The train template as stored: what the client set, as JSON."""
        return self.train.model_dump(mode="json", exclude_unset=True)


class ScheduleUpdate(Strict):
    enabled: bool


# --------------------------------------------------------------------------------------------- datasets

class DatasetCheckRequest(DatasetSpec):
    """Body of POST /api/v1/datasets/check: a dataset's description plus how to check it (extra fields are
    refused, so typos are caught)."""
    sample: int | None = Field(default=None, ge=1)
    salt: Annotated[str, StringConstraints(min_length=1, max_length=200)] = "imgq"  # the model name
