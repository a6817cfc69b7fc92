"""Training datasets: reading them from manifests or crawler folders, deterministic splits, and checks.

A dataset is described by a :class:`DatasetSpec` (a pydantic model; JSON with ``model_dump()``) and
read with :func:`load_dataset` into one DataFrame row per item. :func:`assign_splits` puts every item in
``train``, ``validation`` or ``holdout`` by a stable hash of (salt, item id), so an item never changes split
from one night to the next. :func:`check_dataset` reports what would go wrong before training starts:
missing and unreadable images, duplicate photos (above all those crossing splits), target statistics,
class balance and split sizes.
"""
from __future__ import annotations

import glob as globlib
import hashlib
import itertools
import math
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.core.errors import InvalidRequest
from shared.core.paths import OutsideDataRoots, is_object_uri, object_inside, resolve_inside
from shared.core.vocab import MANIFEST_SUFFIXES, manifest_suffix
from shared.images.imaging import ImageError, content_hash, decode_rgb
from shared.images.item_reads import Places
from shared.images.manifests import check_suffix, read_columns
from shared.images.object_store import ObjectFile

SPLITS = ("train", "validation", "holdout")
EXAMPLES = 20  # how many example ids a report lists per problem
_GLOB_CHARS = ("*", "?", "[")
Column = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class DatasetSpec(BaseModel):
    """Where a dataset is and which columns mean what: the one description of a dataset. A train request's
    `dataset` and the body of POST /api/v1/datasets/check (shared.schemas.training.DatasetRef and
    DatasetCheckRequest) extend it with their own fields.

    ``path`` (relative to a data root, or absolute inside one) is a manifest file (.csv/.tsv/.parquet),
    a glob of manifests (``"crawl/2026-11-*/items.csv"``: all matches concatenated, in sorted order),
    or a crawler folder: one sub-folder of images per category plus one CSV per category, either
    ``<folder>/<category>.csv`` next to ``<folder>/<category>/`` or ``<folder>/<category>/<category>.csv``
    (or ``items.csv``) inside it. In a crawler folder the category is the label (unless ``label_column``
    is given) and item ids default to ``"<category>/<file>"``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Annotated[str, StringConstraints(min_length=1, max_length=4000)]
    image_column: Column = "image"  # image path, relative to the manifest's folder unless absolute
    id_column: Column | None = None  # default: the image path relative to the manifest folder
    target_columns: list[Column] = Field(default_factory=list, max_length=100)  # regression / keypoint targets
    label_column: Column | None = None  # classification label column

    def to_dict(self) -> dict:
        return self.model_dump()

    def only_dataset(self) -> DatasetSpec:
        """The dataset's own description, without the fields a request that extends it adds."""
        return DatasetSpec(**self.model_dump(include=set(DatasetSpec.model_fields)))


@dataclass(frozen=True)
class _Source:
    """One manifest to read: where its images live and, in a crawler folder, its category. A manifest in an object
    store (an ObjectFile) has `object_folder` (its own prefix, against which relative image paths are read) and the
    allowed `object_roots` instead of an image_base."""

    manifest: Path | ObjectFile
    image_base: Path | None
    category: str | None = None
    fallback_base: Path | None = None  # crawler CSV next to its folder: paths may also be relative to the CSV
    object_folder: str | None = None
    object_roots: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------- loading

def load_dataset(roots: tuple[Path, ...], spec: DatasetSpec, places: Places | None = None) -> pd.DataFrame:
    """One row per item: ``item_id`` (str), ``path`` (resolved absolute str, or None), ``error`` (None, or why
    the path is unusable, e.g. outside the data roots), ``label`` (str, with a label column or a crawler folder),
    ``category`` (crawler folder), each target column (float; empty cells are NaN) and ``manifest``.

    The files themselves are not opened (see :func:`check_dataset`); a path inside a root that does not exist
    is returned as is. Problems with the spec itself raise :class:`InvalidRequest` naming the field.

    With `places` (shared/images/item_reads.Places), `spec.path` may be one manifest in an object store
    (`s3://bucket/prefix/train.csv`, inside places.object_roots; no globs or crawler folders there): its images are
    read relative to its own prefix, or named by full `s3://` URIs, and a row's ``path`` is the image's URI.
    """
    roots = tuple(Path(r).expanduser().resolve() for r in roots)
    _validate_spec(spec)
    sources = [_object_source(places, spec)] if is_object_uri(spec.path) else _find_sources(roots, spec)
    frames = [_read_source(roots, spec, source) for source in sources]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if frame.empty:
        raise InvalidRequest(f"dataset {spec.path!r} has no rows", field="path")
    return frame


def _validate_spec(spec: DatasetSpec) -> None:
    if not isinstance(spec.path, str) or not spec.path.strip():
        raise InvalidRequest("path must name a manifest, a glob of manifests or a crawler folder", field="path")
    if not isinstance(spec.image_column, str) or not spec.image_column:
        raise InvalidRequest("image_column must be a column name", field="image_column")
    targets = list(spec.target_columns or [])
    if len(set(targets)) != len(targets):
        raise InvalidRequest("target_columns has a column twice", field="target_columns")
    reserved = {"item_id", "path", "error", "label", "category", "manifest", "split"}
    clash = [c for c in targets if c in reserved]
    if clash:
        raise InvalidRequest(f"target column {clash[0]!r} clashes with a column imgq adds; rename it",
                             field="target_columns")
    if spec.label_column is not None and spec.label_column in targets:
        raise InvalidRequest("label_column is also a target column", field="label_column")


def _find_sources(roots: tuple[Path, ...], spec: DatasetSpec) -> list[_Source]:
    if any(ch in spec.path for ch in _GLOB_CHARS):
        matches = _glob_inside(roots, spec.path)
        if not matches:
            raise InvalidRequest(f"nothing matches {spec.path!r} in the data roots", field="path")
        sources: list[_Source] = []
        for match in matches:
            sources.extend(_crawler_sources(roots, match) if match.is_dir() else [_manifest_source(match)])
        return sources
    try:
        target = resolve_inside(roots, spec.path)
    except OutsideDataRoots as exc:
        raise InvalidRequest(str(exc), field="path") from None
    if target.is_dir():
        return _crawler_sources(roots, target)
    if not target.is_file():
        raise InvalidRequest(f"dataset not found: {spec.path}", field="path")
    return [_manifest_source(target)]


def _object_source(places: Places | None, spec: DatasetSpec) -> _Source:
    """The one manifest a dataset in an object store names, checked against the allowed prefixes."""
    if any(ch in spec.path for ch in _GLOB_CHARS):
        raise InvalidRequest("a dataset in an object store is one manifest: no globs or crawler folders there",
                             field="path")
    try:
        uri = object_inside(places.object_roots if places else (), spec.path)
    except OutsideDataRoots as exc:
        raise InvalidRequest(str(exc), field="path") from None
    manifest = ObjectFile(uri, places.store)
    check_suffix(manifest, "path")
    return _Source(manifest=manifest, image_base=None, object_folder=manifest.folder,
                   object_roots=places.object_roots)


def _inside(roots: tuple[Path, ...], path: Path) -> bool:
    real = path.resolve()
    return any(real == root or root in real.parents for root in roots)


def _glob_inside(roots: tuple[Path, ...], pattern: str) -> list[Path]:
    """Matches of ``pattern`` under each root (or of an absolute pattern that starts inside a root).

    Nothing outside the roots is ever listed or named: a pattern may not climb with '..', an absolute
    pattern's fixed leading folders must resolve inside a root before anything is globbed (a relative one's
    too, when they exist: they may be a link), and a match that resolves outside (a link) is refused without
    naming it.
    """
    if "\x00" in pattern or "://" in pattern:
        raise InvalidRequest("path must be a local path inside the data roots", field="path")
    if ".." in Path(pattern).parts:
        raise InvalidRequest("a glob may not climb out of a folder with '..'", field="path")
    fixed = Path(*itertools.takewhile(lambda part: not any(ch in part for ch in _GLOB_CHARS), Path(pattern).parts))
    if os.path.isabs(pattern):
        if not _inside(roots, fixed):
            raise InvalidRequest(f"path outside the data roots: {pattern}", field="path")
        candidates = globlib.glob(pattern)
    else:
        if any(os.path.lexists(root / fixed) and not _inside(roots, root / fixed) for root in roots):
            raise InvalidRequest(f"path outside the data roots: {pattern}", field="path")  # a link, before globbing
        candidates = [p for root in roots for p in globlib.glob(os.path.join(globlib.escape(str(root)), pattern))]
    found: dict[Path, None] = {}
    for candidate in sorted(candidates):
        try:
            real = resolve_inside(roots, candidate)
        except OutsideDataRoots:
            raise InvalidRequest(f"a match of {pattern!r} is a link that leads outside the data roots",
                                 field="path") from None
        if real.is_dir() or manifest_suffix(real.name):
            found[real] = None
    return list(found)


def _manifest_source(path: Path) -> _Source:
    check_suffix(path, "path")
    return _Source(manifest=path, image_base=path.parent)


def _first_manifest(roots: tuple[Path, ...], folder: Path, stems: tuple[str, ...]) -> Path | None:
    """The first of folder/<stem><suffix> that is a file inside the roots (a link out of them is passed over)."""
    for stem in stems:
        for suffix in MANIFEST_SUFFIXES:
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file() and _inside(roots, candidate):
                return candidate
    return None


def _crawler_sources(roots: tuple[Path, ...], folder: Path) -> list[_Source]:
    """Categories of a crawler folder, sorted by name.

    For each sub-folder ``<category>`` the manifest is the first found of ``<category>/<category>.csv``,
    ``<category>/items.csv`` and ``<category>.csv`` next to it (the other manifest kinds are accepted too).
    Images are relative to the category folder; for a CSV next to the folder, also to the CSV's folder.
    A folder with no categories but an ``items.csv`` of its own is read as that one manifest. Sub-folders and
    manifests that are links out of the data roots are passed over.
    """
    sources = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and _inside(roots, p)):
        category = sub.name
        inside = _first_manifest(roots, sub, (category, "items"))
        if inside is not None:
            sources.append(_Source(manifest=inside, image_base=sub, category=category))
            continue
        beside = _first_manifest(roots, folder, (category,))
        if beside is not None:
            sources.append(_Source(manifest=beside, image_base=sub, category=category, fallback_base=folder))
    if not sources:
        plain = _first_manifest(roots, folder, ("items",))
        if plain is not None:  # a plain crawl folder holding its manifest (e.g. a glob of dated folders)
            return [_manifest_source(plain)]
        raise InvalidRequest(
            f"folder {folder.name!r} is not a crawler folder: expected <category>.csv next to each <category>/ "
            "sub-folder, or <category>/<category>.csv or <category>/items.csv inside it", field="path")
    return sources


def _read_table(path: Path, columns: list[str], spec: DatasetSpec) -> pd.DataFrame:
    """The needed columns of a manifest (see shared/manifests.read_columns), whole."""
    wanted = [("image_column", spec.image_column)]
    if spec.id_column:
        wanted.append(("id_column", spec.id_column))
    if spec.label_column:
        wanted.append(("label_column", spec.label_column))
    wanted.extend(("target_columns", c) for c in spec.target_columns or [])
    wanted.extend(("path", c) for c in columns if c not in {column for _, column in wanted})
    pieces = list(read_columns(path, wanted, field="path"))
    return pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame(columns=columns)


def _empty_rows(values: pd.Series) -> list[int]:
    """1-based data row numbers (header not counted) of empty cells."""
    mask = values.isna() | (values.astype(str).str.strip() == "")
    return [int(i) + 1 for i in np.flatnonzero(mask.to_numpy())]


def _read_source(roots: tuple[Path, ...], spec: DatasetSpec, source: _Source) -> pd.DataFrame:
    columns = list(dict.fromkeys(
        [spec.image_column, *([spec.id_column] if spec.id_column else []),
         *([spec.label_column] if spec.label_column else []), *(spec.target_columns or [])]))
    table = _read_table(source.manifest, columns, spec)
    name = source.manifest.name

    empty = _empty_rows(table[spec.image_column])
    if empty:
        raise InvalidRequest(f"manifest {name} has empty {spec.image_column!r} values (rows {_rows(empty)})",
                             field="image_column")
    images = table[spec.image_column].astype(str).str.strip().tolist()
    if spec.id_column:
        empty = _empty_rows(table[spec.id_column])
        if empty:
            raise InvalidRequest(f"manifest {name} has empty {spec.id_column!r} values (rows {_rows(empty)})",
                                 field="id_column")
        ids = [_id_text(v) for v in table[spec.id_column].tolist()]
    else:
        ids = [_relative_id(source, image) for image in images]

    paths: list[str | None] = []
    errors: list[str | None] = []
    for image in images:
        try:
            paths.append(str(_resolve_image(roots, source, image)))
            errors.append(None)
        except OutsideDataRoots as exc:
            paths.append(None)
            errors.append(str(exc))

    out = pd.DataFrame({"item_id": pd.Series(ids, dtype=object),
                        "path": pd.Series(paths, dtype=object),
                        "error": pd.Series(errors, dtype=object)})
    if spec.label_column:
        empty = _empty_rows(table[spec.label_column])
        if empty:
            raise InvalidRequest(f"manifest {name} has empty {spec.label_column!r} values (rows {_rows(empty)})",
                                 field="label_column")
        out["label"] = pd.Series([_id_text(v) for v in table[spec.label_column].tolist()], dtype=object)
    elif source.category is not None:
        out["label"] = pd.Series([source.category] * len(out), dtype=object)
    if source.category is not None:
        out["category"] = pd.Series([source.category] * len(out), dtype=object)
    for column in spec.target_columns or []:
        out[column] = _numeric(table[column], name, column)
    out["manifest"] = source.manifest.uri if isinstance(source.manifest, ObjectFile) else str(source.manifest)
    return out


def _rows(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:10]))
    return shown + (f" and {len(numbers) - 10} more" if len(numbers) > 10 else "")


def _id_text(value) -> str:
    """Ids and labels as text; a float that is an integer (Parquet/pandas upcasting) loses its '.0'."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _numeric(values: pd.Series, manifest: str, column: str) -> pd.Series:
    if values.dtype == bool:
        values = values.astype(float)
    text = values.astype(object)
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    blank = values.isna() | (text.astype(str).str.strip() == "")
    bad = numbers.isna() & ~blank
    if bad.any():
        rows = [int(i) + 1 for i in np.flatnonzero(bad.to_numpy())]
        example = text[bad].iloc[0]
        raise InvalidRequest(f"target column {column!r} of {manifest} is not numeric: {example!r} "
                             f"(rows {_rows(rows)})", field="target_columns")
    infinite = np.isinf(numbers.to_numpy())
    if infinite.any():
        rows = [int(i) + 1 for i in np.flatnonzero(infinite)]
        raise InvalidRequest(f"target column {column!r} of {manifest} has infinite values (rows {_rows(rows)})",
                             field="target_columns")
    return numbers.reset_index(drop=True)


def _relative_id(source: _Source, image: str) -> str:
    """Default item id: the image path relative to the manifest folder (in a crawler folder, '<category>/<file>')."""
    if source.object_folder is not None:
        return image.removeprefix(source.object_folder + "/")
    given = Path(image)
    if given.is_absolute():
        for base in (source.image_base, source.manifest.parent):
            try:
                rel = PurePosixPath(given.relative_to(base).as_posix())
                break
            except ValueError:
                continue
        else:
            return given.as_posix()
    else:
        rel = PurePosixPath(os.path.normpath(image).replace(os.sep, "/"))
    if source.category is None:
        return str(rel)
    if source.fallback_base is not None and rel.parts and rel.parts[0] == source.category \
            and not (source.image_base / rel).exists():
        rel = PurePosixPath(*rel.parts[1:])  # "<category>/x.jpg" written in a CSV next to the folder
    return f"{source.category}/{rel}"


def _resolve_image(roots: tuple[Path, ...], source: _Source, image: str) -> Path | str:
    if source.object_folder is not None:  # a manifest in a store: objects beside it, or named in full
        if is_object_uri(image):
            return object_inside(source.object_roots, image)
        if Path(image).is_absolute():
            return resolve_inside(roots, image)
        return object_inside(source.object_roots, f"{source.object_folder}/{image}")
    if is_object_uri(image):
        raise OutsideDataRoots(f"an object is read from a dataset in the object store only: {image}")
    if Path(image).is_absolute():
        return resolve_inside(roots, image)
    resolved = resolve_inside(roots, str(source.image_base / image))
    if source.fallback_base is not None and not resolved.exists():
        try:
            other = resolve_inside(roots, str(source.fallback_base / image))
        except OutsideDataRoots:
            return resolved
        if other.exists():
            return other
    return resolved


# ----------------------------------------------------------------------------------------------- splits

def _unit_hash(salt: str, item_id: str) -> float:
    digest = hashlib.sha256(f"{salt}\x00{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def _check_fractions(validation: float, holdout: float) -> None:
    for name, value in (("validation", validation), ("holdout", holdout)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name} fraction must be a number in [0, 1), got {value!r}")
    if validation + holdout >= 1.0:
        raise ValueError(f"validation + holdout must leave some training data, got {validation} + {holdout}")


def split_of(item_id: str, *, salt: str, validation: float = 0.1, holdout: float = 0.1) -> str:
    """``"train"``, ``"validation"`` or ``"holdout"`` for one item, deterministically.

    The item's number ``u`` in [0, 1) is the first 8 bytes of ``sha256(salt + "\\0" + item_id)``; it is in the
    holdout when ``u < holdout``, in validation when ``holdout <= u < holdout + validation``, else in train.
    So holdout membership depends only on (salt, item_id, holdout fraction): not on the other items, their
    order, the validation fraction, the day or the process (Python's ``hash()`` is not used). With the model
    name as the salt, a model's holdout stays fixed night after night, and new items never move old ones.
    """
    _check_fractions(validation, holdout)
    u = _unit_hash(salt, str(item_id))
    if u < holdout:
        return "holdout"
    if u < holdout + validation:
        return "validation"
    return "train"


def assign_splits(frame: pd.DataFrame, *, salt: str, validation: float = 0.1, holdout: float = 0.1) -> pd.DataFrame:
    """A copy of ``frame`` with a ``split`` column computed by :func:`split_of` from ``item_id``.

    Holdout membership depends only on (salt, item_id, holdout fraction).
    """
    _check_fractions(validation, holdout)
    out = frame.copy()
    out["split"] = pd.Series([split_of(i, salt=salt, validation=validation, holdout=holdout)
                              for i in frame["item_id"].astype(str)], index=frame.index, dtype=object)
    return out


# ----------------------------------------------------------------------------------------------- checks

def check_dataset(roots, spec: DatasetSpec, *, max_pixels: int, salt: str = "imgq", sample: int | None = None,
                  validation: float = 0.1, holdout: float = 0.1, threads: int | None = None) -> dict:
    """A JSON-serialisable report on a dataset, for a human to read before training on it.

    Every file is stat'ed; ``sample`` items (all when None; chosen by a stable hash of the item id, so the same
    ones each time) are also read, hashed and fully decoded with :func:`shared.images.imaging.decode_rgb` in a thread
    pool. Duplicate photos are found by content hash among the items read, and those whose copies lie in
    different splits (under ``salt``, the model name) are reported apart: they leak training data into
    evaluation. Spec errors raise :class:`InvalidRequest` (see :func:`load_dataset`).
    """
    if sample is not None and (not isinstance(sample, int) or isinstance(sample, bool) or sample < 1):
        raise InvalidRequest("sample must be a positive integer", field="sample")
    frame = assign_splits(load_dataset(roots, spec), salt=salt, validation=validation, holdout=holdout)
    ids = frame["item_id"].astype(str).tolist()
    paths = frame["path"].tolist()
    errors = frame["error"].tolist()
    splits = frame["split"].tolist()

    chosen = set(range(len(frame)))
    if sample is not None and sample < len(frame):
        order = sorted(range(len(frame)), key=lambda i: (_unit_hash("imgq-check-sample", ids[i]), i))
        chosen = set(order[:sample])

    def examine(i: int) -> tuple[str | None, str | None, str | None, tuple[int, int] | None]:
        """(missing reason, unreadable reason, content hash, size) for row i."""
        if paths[i] is None:
            return errors[i] or "no usable path", None, None, None
        path = Path(paths[i])
        try:
            st = path.stat()
        except FileNotFoundError:
            return "file not found", None, None, None
        except OSError as exc:
            return f"cannot stat: {exc.strerror or exc}", None, None, None
        if not path.is_file():
            return "not a regular file", None, None, None
        if i not in chosen:
            return None, ("empty file" if st.st_size == 0 else None), None, None
        try:
            data = path.read_bytes()
        except OSError as exc:
            return None, f"cannot read: {exc.strerror or exc}", None, None
        digest = content_hash(data)
        try:
            img = decode_rgb(data, max_pixels=max_pixels)
        except ImageError as exc:
            return None, str(exc), digest, None
        return None, None, digest, img.size

    workers = threads or min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(examine, range(len(frame))))

    missing = [(ids[i], r[0]) for i, r in enumerate(results) if r[0]]
    unreadable = [(ids[i], r[1]) for i, r in enumerate(results) if r[1]]
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(results):
        if r[2] is not None:
            by_hash[r[2]].append(i)
    groups = [rows for rows in by_hash.values() if len(rows) > 1]
    groups.sort(key=lambda rows: (-len(rows), ids[rows[0]]))
    crossing = [rows for rows in groups if len({splits[i] for i in rows}) > 1]
    labels = frame["label"].astype(str).tolist() if "label" in frame.columns else None
    conflicting = [rows for rows in groups if labels and len({labels[i] for i in rows}) > 1]
    sizes = [r[3] for r in results if r[3] is not None]

    id_counts = Counter(ids)
    repeated_ids = sorted(i for i, n in id_counts.items() if n > 1)
    hashed = sum(1 for r in results if r[2] is not None)

    report = {
        "path": spec.path,
        "spec": spec.only_dataset().model_dump(),
        "salt": salt,
        "rows": len(frame),
        "manifests": int(frame["manifest"].nunique()),
        "checked": {"stat": len(frame), "decoded": hashed, "sample": sample},
        "missing_files": {"count": len(missing),
                          "examples": [{"item_id": i, "reason": r} for i, r in missing[:EXAMPLES]]},
        "unreadable_images": {"count": len(unreadable),
                              "examples": [{"item_id": i, "reason": r} for i, r in unreadable[:EXAMPLES]]},
        "duplicate_ids": {"count": len(repeated_ids), "examples": repeated_ids[:EXAMPLES]},
        "duplicates": {
            "hashed": hashed,
            "groups": len(groups),
            "items": sum(len(g) for g in groups),
            "examples": [[ids[i] for i in g] for g in groups[:EXAMPLES]],
            "cross_split": {
                "count": len(crossing),
                "items": sum(len(g) for g in crossing),
                "examples": [{"content_hash": results[g[0]][2],
                              "items": [{"item_id": ids[i], "split": splits[i]} for i in g]}
                             for g in crossing[:EXAMPLES]],
            },
            "label_conflicts": {
                "count": len(conflicting),
                "examples": [[{"item_id": ids[i], "label": labels[i]} for i in g] for g in conflicting[:EXAMPLES]],
            },
        },
        "image_sizes": _size_stats(sizes),
        "targets": {c: _target_stats(frame[c]) for c in spec.target_columns or []},
        "classes": _class_balance(frame) if "label" in frame.columns else None,
        "splits": _split_sizes(frame, validation, holdout),
    }
    report["warnings"] = _warnings(report)
    return report


def _f(value) -> float | None:
    """A JSON-safe float: NaN and infinities become None."""
    value = float(value)
    return value if math.isfinite(value) else None


def _target_stats(values: pd.Series) -> dict:
    v = values.dropna().astype(float)
    stats: dict = {"count": int(v.size), "missing": int(values.isna().sum())}
    if v.empty:
        return {**stats, "mean": None, "std": None, "min": None, "p50": None, "p95": None, "max": None,
                "skew": None, "log1p_advisable": False, "why": "no values"}
    skew = _f(v.skew()) if v.size > 2 else None
    nonneg = bool((v >= 0).all())
    advisable = nonneg and skew is not None and skew > 2
    if advisable:
        why = f"all values >= 0 and skew {skew:.2f} > 2: a log1p target transform should help"
    elif not nonneg:
        why = "has negative values: log1p does not apply"
    elif skew is None:
        why = "too few values to judge the skew"
    else:
        why = f"skew {skew:.2f} <= 2: no need for log1p"
    stats.update({
        "mean": _f(v.mean()), "std": _f(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": _f(v.min()), "p50": _f(v.quantile(0.5)), "p95": _f(v.quantile(0.95)), "max": _f(v.max()),
        "skew": skew, "log1p_advisable": advisable, "why": why,
    })
    if advisable:
        logged = np.log1p(v.to_numpy())
        stats["skew_after_log1p"] = _f(pd.Series(logged).skew())
    return stats


def _class_balance(frame: pd.DataFrame) -> dict:
    counts = frame["label"].astype(str).value_counts()
    counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
    total = int(counts.sum())
    per_split = {split: {str(k): int(n) for k, n in frame.loc[frame["split"] == split, "label"].astype(str)
                         .value_counts().sort_index().items()} for split in SPLITS}
    return {
        "count": int(counts.size),
        "per_class": {str(k): {"count": int(n), "fraction": int(n) / total} for k, n in counts.items()},
        "imbalance_ratio": _f(counts.max() / counts.min()) if counts.size else None,
        "largest": str(counts.index[0]) if counts.size else None,
        "smallest": str(counts.index[-1]) if counts.size else None,
        "per_split": per_split,
    }


def _split_sizes(frame: pd.DataFrame, validation: float, holdout: float) -> dict:
    counts = frame["split"].value_counts()
    total = len(frame)
    return {split: {"count": int(counts.get(split, 0)),
                    "fraction": int(counts.get(split, 0)) / total if total else 0.0,
                    "expected_fraction": {"train": 1 - validation - holdout, "validation": validation,
                                          "holdout": holdout}[split]}
            for split in SPLITS}


def _size_stats(sizes: list[tuple[int, int]]) -> dict | None:
    if not sizes:
        return None
    arr = np.asarray(sizes, dtype=float)
    out = {}
    for k, name in enumerate(("width", "height")):
        col = arr[:, k]
        out[name] = {"min": int(col.min()), "p50": _f(np.median(col)), "max": int(col.max())}
    return out


def _warnings(report: dict) -> list[str]:
    out = []
    if report["missing_files"]["count"]:
        out.append(f"{report['missing_files']['count']} items have no usable file")
    if report["unreadable_images"]["count"]:
        out.append(f"{report['unreadable_images']['count']} images cannot be decoded")
    if report["duplicate_ids"]["count"]:
        out.append(f"{report['duplicate_ids']['count']} item ids appear more than once")
    cross = report["duplicates"]["cross_split"]["count"]
    if cross:
        out.append(f"{cross} identical photos sit in different splits: evaluation scores will be inflated")
    conflicts = report["duplicates"]["label_conflicts"]["count"]
    if conflicts:
        out.append(f"{conflicts} identical photos carry different labels")
    for name, stats in report["targets"].items():
        if stats.get("log1p_advisable"):
            out.append(f"target {name!r} is skewed ({stats['why']})")
        if stats["missing"]:
            out.append(f"target {name!r} is empty in {stats['missing']} rows")
    classes = report["classes"]
    if classes and classes["imbalance_ratio"] and classes["imbalance_ratio"] > 10:
        out.append(f"classes are imbalanced: {classes['largest']!r} has {classes['imbalance_ratio']:.1f}x "
                   f"the items of {classes['smallest']!r}")
    if classes and classes["count"] < 2:
        out.append("only one class")
    return out
