"""Reading manifests (CSV, gzipped CSV, TSV or Parquet; shared.core.vocab.MANIFEST_SUFFIXES) in bounded pieces.

The one reader for score- and embed-job manifests (`iter_manifest`: item ids and image paths, and for embed jobs
their categories) and training datasets (`read_columns`, used by shared/images/datasets.py). Cells are strings
(numeric Parquet columns keep their type); empty cells are NaN. Errors are InvalidRequests naming the manifest as
the client named it (never its server path) and the request field at fault.

A manifest may be a local file (a Path) or an object in a store (`ObjectFile`, its uri checked by the caller); its
relative image paths are read against its own folder either way, and `s3://` image uris are kept as they are.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from shared.core.config import Settings
from shared.core.errors import InvalidRequest, ObjectStoreUnavailable
from shared.core.paths import OutsideDataRoots, is_object_uri, object_inside, resolve_inside
from shared.core.vocab import MANIFEST_SUFFIXES, manifest_suffix
from shared.images.imaging import ImageError
from shared.images.object_store import ObjectFile, StoreConfig, classify

PIECE_ROWS = 5000


def locate(settings: Settings, manifest: str) -> Path | ObjectFile:
    """The manifest a request names: a file inside the data roots, or an object under their URI prefixes."""
    try:
        if is_object_uri(manifest):
            return ObjectFile(object_inside(settings.object_roots, manifest), StoreConfig.from_settings(settings))
        return resolve_inside(settings.data_roots, manifest)
    except OutsideDataRoots as exc:
        raise InvalidRequest(f"manifest: {exc}", field="manifest") from None


def size_of(path: Path | ObjectFile) -> int:
    """The manifest's size in bytes (cheaper than counting its rows); InvalidRequest when it is not there."""
    _check_exists(path)
    try:
        return path.size() if isinstance(path, ObjectFile) else path.stat().st_size
    except ImageError as exc:
        raise InvalidRequest(f"manifest: {exc}", field="manifest") from None


def check_suffix(path: Path | ObjectFile, field: str) -> str:
    """The manifest's kind (its suffix), or an InvalidRequest naming the kinds there are."""
    suffix = manifest_suffix(path.name)
    if suffix is None:
        raise InvalidRequest(f"a manifest must be a {', '.join(MANIFEST_SUFFIXES[:-1])} or {MANIFEST_SUFFIXES[-1]} "
                             f"file: {path.name}", field=field)
    return suffix


def read_columns(path: Path | ObjectFile, wanted: list[tuple[str, str]], *, field: str, rows: int = PIECE_ROWS,
                 optional: tuple[str, ...] = ()) -> Iterator[pd.DataFrame]:
    """Pieces of at most `rows` rows holding the `wanted` columns [(request field, column name)]. A missing
    column is an InvalidRequest naming its request field, unless that field is `optional` (the pieces then lack
    the column); an unreadable file names `field`."""
    suffix = check_suffix(path, field)
    opened = path.open if isinstance(path, ObjectFile) else lambda: path
    compression = "gzip" if suffix == ".csv.gz" else None
    try:
        if suffix == ".parquet":
            parquet = pq.ParquetFile(opened())
            columns = _check_columns(path, parquet.schema_arrow.names, wanted, optional)
            pieces = (batch.to_pandas() for batch in parquet.iter_batches(batch_size=rows, columns=columns))
        else:
            sep = "\t" if suffix == ".tsv" else ","
            header = pd.read_csv(opened(), sep=sep, nrows=0, compression=compression).columns.tolist()
            columns = _check_columns(path, header, wanted, optional)
            pieces = pd.read_csv(opened(), sep=sep, usecols=columns, dtype=str, keep_default_na=False,
                                 na_values=[""], chunksize=rows, compression=compression)
        yield from pieces
    except (InvalidRequest, ObjectStoreUnavailable):
        raise
    except ImageError as exc:  # an object's 404 or 403
        raise InvalidRequest(f"cannot read the manifest {path.name}: {exc}", field=field) from None
    except pd.errors.EmptyDataError:
        raise InvalidRequest(f"manifest {path.name} is empty", field=field) from None
    except Exception as exc:
        raise _unreadable(path, exc, field) from None


def _unreadable(path: Path | ObjectFile, exc: Exception, field: str) -> Exception:
    """What a manifest that failed while being read is: the store's outage (a 503 to the client), or the
    manifest's fault (a 400 naming it; pandas' and pyarrow's parse errors may quote the server path: not shown)."""
    if isinstance(path, ObjectFile) and classify(exc)[0] == "transient":
        return ObjectStoreUnavailable(f"the object store failed while reading {path.uri}: {classify(exc)[1]}")
    if isinstance(exc, OSError):
        return InvalidRequest(f"cannot read the manifest {path.name}: {exc.strerror or type(exc).__name__}",
                              field=field)
    return InvalidRequest(f"cannot read the manifest {path.name}: {str(exc).replace(str(path), path.name)}",
                          field=field)


def iter_manifest(path: Path | ObjectFile, id_column: str, image_column: str, category_column: str | None = None, *,
                  category_required: bool = True, rows: int = PIECE_ROWS) -> Iterator[list[tuple]]:
    """A job's items: lists of (item id, image uri), `rows` at a time; with `category_column`, lists of
    (item id, image uri, category), the category None for an empty cell, or for every item when the manifest has no
    such column and it is not `category_required`.

    Image paths in the manifest are relative to the manifest's own folder unless absolute or `s3://` uris.
    """
    _check_exists(path)
    join = _joiner(path)
    wanted = [("id_column", id_column), ("image_column", image_column)]
    if category_column is not None:
        wanted.append(("category_column", category_column))
    optional = () if category_required else ("category_column",)
    for frame in read_columns(path, wanted, field="manifest", rows=rows, optional=optional):
        if frame[id_column].isna().any() or frame[image_column].isna().any():
            raise InvalidRequest(f"manifest has empty values in {id_column!r} or {image_column!r}",
                                 field="manifest")
        ids = frame[id_column].astype(str).tolist()
        uris = [join(u) for u in frame[image_column].astype(str)]
        if category_column is None:
            yield list(zip(ids, uris))
        elif category_column in frame.columns:
            yield list(zip(ids, uris, [None if pd.isna(c) else str(c) for c in frame[category_column]]))
        else:
            yield [(item_id, uri, None) for item_id, uri in zip(ids, uris)]


def source_pieces(settings: Settings, source: dict, rows: int = PIECE_ROWS) -> Iterator[list[tuple]]:
    """The items of the manifest a score or embed job's `source` names (`manifest`, `id_column`, `image_column`;
    an embed job's `category_column` and `category_required`), as `iter_manifest` gives them."""
    path = locate(settings, source["manifest"])
    if "category_column" not in source:
        return iter_manifest(path, source["id_column"], source["image_column"], rows=rows)
    return iter_manifest(path, source["id_column"], source["image_column"], source["category_column"],
                         category_required=source["category_required"], rows=rows)


def _check_exists(path: Path | ObjectFile) -> None:
    if isinstance(path, ObjectFile):
        try:
            path.check()
        except ImageError as exc:  # "object not found: <uri>", "access denied (403) to <uri>"
            raise InvalidRequest(f"manifest: {exc}", field="manifest") from None
    elif not path.is_file():
        raise InvalidRequest(f"manifest not found: {path.name}", field="manifest")


def _joiner(path: Path | ObjectFile):
    """How a manifest's image path becomes an item uri: absolute paths and URIs as they are, relative ones under
    the manifest's folder."""
    if isinstance(path, ObjectFile):
        folder = path.folder
        return lambda u: u if u.startswith("/") or "://" in u else f"{folder}/{u}"
    base = path.parent
    return lambda u: u if Path(u).is_absolute() or "://" in u else str(base / u)


def _check_columns(path: Path | ObjectFile, found: list[str], wanted: list[tuple[str, str]],
                   optional: tuple[str, ...] = ()) -> list[str]:
    """The columns to read: the wanted ones, each once; a missing one is an error unless its field is optional."""
    for field, column in wanted:
        if column not in found and field not in optional:
            raise InvalidRequest(f"manifest {path.name} has no column {column!r}; it has {', '.join(map(str, found))}",
                                 field=field)
    return list(dict.fromkeys(column for _, column in wanted if column in found))
