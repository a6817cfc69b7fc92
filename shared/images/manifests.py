"""Reading manifests (CSV, gzipped CSV, TSV or Parquet; shared.core.vocab.MANIFEST_SUFFIXES) in bounded pieces.

The one reader for score-job manifests (`iter_manifest`: item ids and image paths) and training datasets
(`read_columns`, used by shared/images/datasets.py). Cells are strings (numeric Parquet columns keep their type);
empty cells are NaN. Errors are InvalidRequests naming the manifest as the client named it (never its server
path) and the request field at fault.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from shared.core.errors import InvalidRequest
from shared.core.vocab import MANIFEST_SUFFIXES, manifest_suffix

PIECE_ROWS = 5000


def check_suffix(path: Path, field: str) -> str:
    """The manifest's kind (its suffix), or an InvalidRequest naming the kinds there are."""
    suffix = manifest_suffix(path.name)
    if suffix is None:
        raise InvalidRequest(f"a manifest must be a {', '.join(MANIFEST_SUFFIXES[:-1])} or {MANIFEST_SUFFIXES[-1]} "
                             f"file: {path.name}", field=field)
    return suffix


def read_columns(path: Path, wanted: list[tuple[str, str]], *, field: str,
                 rows: int = PIECE_ROWS) -> Iterator[pd.DataFrame]:
    """Pieces of at most `rows` rows holding the `wanted` columns [(request field, column name)]. A missing
    column is an InvalidRequest naming its request field; an unreadable file names `field`."""
    suffix = check_suffix(path, field)
    columns = list(dict.fromkeys(column for _, column in wanted))
    try:
        if suffix == ".parquet":
            parquet = pq.ParquetFile(path)
            _check_columns(path, parquet.schema_arrow.names, wanted)
            pieces = (batch.to_pandas() for batch in parquet.iter_batches(batch_size=rows, columns=columns))
        else:
            sep = "\t" if suffix == ".tsv" else ","
            _check_columns(path, pd.read_csv(path, sep=sep, nrows=0).columns.tolist(), wanted)
            pieces = pd.read_csv(path, sep=sep, usecols=columns, dtype=str, keep_default_na=False, na_values=[""],
                                 chunksize=rows)
        yield from pieces
    except InvalidRequest:
        raise
    except pd.errors.EmptyDataError:
        raise InvalidRequest(f"manifest {path.name} is empty", field=field) from None
    except OSError as exc:
        raise InvalidRequest(f"cannot read the manifest {path.name}: {exc.strerror or type(exc).__name__}",
                             field=field) from None
    except Exception as exc:  # pandas' and pyarrow's parse errors; the server path may appear in the text
        raise InvalidRequest(f"cannot read the manifest {path.name}: {str(exc).replace(str(path), path.name)}",
                             field=field) from None


def iter_manifest(path: Path, id_column: str, image_column: str) -> Iterator[list[tuple[str, str]]]:
    """A score job's items: lists of (item id, image uri), PIECE_ROWS at a time.

    Image paths in the manifest are relative to the manifest's own folder unless absolute.
    """
    if not path.is_file():
        raise InvalidRequest(f"manifest not found: {path.name}", field="manifest")
    base = path.parent
    for frame in read_columns(path, [("id_column", id_column), ("image_column", image_column)], field="manifest"):
        if frame[id_column].isna().any() or frame[image_column].isna().any():
            raise InvalidRequest(f"manifest has empty values in {id_column!r} or {image_column!r}",
                                 field="manifest")
        ids = frame[id_column].astype(str).tolist()
        uris = [u if Path(u).is_absolute() else str(base / u) for u in frame[image_column].astype(str)]
        yield list(zip(ids, uris))


def _check_columns(path: Path, found: list[str], wanted: list[tuple[str, str]]) -> None:
    for field, column in wanted:
        if column not in found:
            raise InvalidRequest(f"manifest {path.name} has no column {column!r}; it has {', '.join(map(str, found))}",
                                 field=field)
