"""Reading item lists from CSV or Parquet manifests in bounded pieces, never whole."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from shared.errors import InvalidRequest

PIECE_ROWS = 5000


def iter_manifest(path: Path, id_column: str, image_column: str) -> Iterator[list[tuple[str, str]]]:
    """Yields lists of (item id, image uri), PIECE_ROWS at a time.

    Image paths in the manifest are relative to the manifest's own folder unless absolute.
    """
    if not path.is_file():
        raise InvalidRequest(f"manifest not found: {path.name}", field="manifest")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        pieces = _parquet_pieces(path, id_column, image_column)
    elif suffix in (".csv", ".tsv", ".txt") or path.name.endswith(".csv.gz"):
        pieces = _csv_pieces(path, id_column, image_column, sep="\t" if suffix == ".tsv" else ",")
    else:
        raise InvalidRequest("manifest must be a .csv, .tsv or .parquet file", field="manifest")
    base = path.parent
    for frame in pieces:
        if frame[id_column].isna().any() or frame[image_column].isna().any():
            raise InvalidRequest(f"manifest has empty values in {id_column!r} or {image_column!r}",
                                 field="manifest")
        ids = frame[id_column].astype(str).tolist()
        uris = [u if Path(u).is_absolute() else str(base / u) for u in frame[image_column].astype(str)]
        yield list(zip(ids, uris))


def _reason(exc: BaseException, path: Path) -> str:
    """The library's reason, with the manifest named as the client named it, never by its server path."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).replace(str(path), path.name)


def _check_columns(found: list[str], id_column: str, image_column: str) -> None:
    missing = [c for c in (id_column, image_column) if c not in found]
    if missing:
        raise InvalidRequest(f"manifest has no column {missing[0]!r}; it has {', '.join(map(str, found))}",
                             field="id_column" if missing[0] == id_column else "image_column")


def _csv_pieces(path: Path, id_column: str, image_column: str, sep: str):
    try:
        header = pd.read_csv(path, sep=sep, nrows=0).columns.tolist()
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InvalidRequest(f"cannot read the manifest: {_reason(exc, path)}", field="manifest") from None
    _check_columns(header, id_column, image_column)
    reader = pd.read_csv(path, sep=sep, usecols=[id_column, image_column], dtype=str,
                         chunksize=PIECE_ROWS, keep_default_na=False, na_values=[""])
    try:
        yield from reader
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot read the manifest: {_reason(exc, path)}", field="manifest") from None


def _parquet_pieces(path: Path, id_column: str, image_column: str):
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise InvalidRequest(f"cannot read the manifest: {_reason(exc, path)}", field="manifest") from None
    _check_columns(pf.schema_arrow.names, id_column, image_column)
    for batch in pf.iter_batches(batch_size=PIECE_ROWS, columns=[id_column, image_column]):
        yield batch.to_pandas()
