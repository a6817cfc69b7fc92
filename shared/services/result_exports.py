"""A job's results as a Parquet (or CSV) file, streamed: one row group per keyset page of results, each page read in a
short transaction of its own and written out before the next is read.

Invariants: at most one page (`row_group_rows` results) is held in memory, never the whole job; the file's columns
are those of the CSV download (id, status, error, from_cache and the model's output columns, shared/services/jobs),
typed once for the whole file (`label` and `category` text, `dim` an integer, every other output a double, a
missing value null), so every row group has the same schema whatever its rows hold; the bytes a writer produces
leave with the page that made them (the footer with the last), and the file ends only after the last page.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from shared.core import keyset
from shared.core.db import session_scope
from shared.core.tables import Result
from shared.services import jobs

ROW_GROUP_ROWS = 10_000
MEDIA_TYPE = "application/vnd.apache.parquet"
TEXT_OUTPUTS = frozenset({"label", "category"})
INTEGER_OUTPUTS = frozenset({"dim"})


class _Spool(io.RawIOBase):
    """A write-only file whose bytes are taken away as they come; it counts its position for the writer's
    offsets, so taking bytes never moves it."""

    def __init__(self):
        super().__init__()
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        self._parts.append(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def parquet_schema(columns: list[str]) -> pa.Schema:
    def kind(column: str) -> pa.DataType:
        return pa.string() if column in TEXT_OUTPUTS else pa.int64() if column in INTEGER_OUTPUTS else pa.float64()

    return pa.schema([("id", pa.string()), ("status", pa.string()), ("error", pa.string()),
                      ("from_cache", pa.bool_()), *[(c, kind(c)) for c in columns]])


def _pages(job_id: str, rows: int, url: str | None) -> Iterator[list]:
    """The job's results (item id, status, error, from_cache, outputs[, category]) by item id, `rows` at a time."""
    after = None
    while True:
        with session_scope(url) as session:
            job = jobs.get_job(session, job_id)
            q = jobs.result_columns_query(job)
            page, after = keyset.page(session, q, (Result.item_id,), after=after, limit=rows,
                                      key_of=lambda row: (row[0],))
        yield page
        if after is None:
            return


def _table(page: list, schema: pa.Schema) -> pa.Table:
    columns = schema.names[4:]
    records = []
    for item_id, status, error, from_cache, outputs, *category in page:
        outputs = {**(outputs or {}), **({"category": category[0]} if category else {})}
        records.append({"id": item_id, "status": status, "error": error, "from_cache": bool(from_cache),
                        **{c: outputs.get(c) for c in columns}})
    return pa.Table.from_pylist(records, schema=schema)


def results_parquet(job_id: str, *, row_group_rows: int = ROW_GROUP_ROWS, url: str | None = None) -> Iterator[bytes]:
    """The job's results as Parquet bytes in pieces, a row group per `row_group_rows` results (`url`: another
    database than the configured one). A job that is not there raises NotFound at the first piece."""
    with session_scope(url) as session:
        schema = parquet_schema(jobs.output_columns_of(session, jobs.get_job(session, job_id)))
    spool = _Spool()
    writer = pq.ParquetWriter(spool, schema)
    try:
        for page in _pages(job_id, row_group_rows, url):
            if page:
                writer.write_table(_table(page, schema), row_group_size=row_group_rows)
            yield spool.take()
    finally:
        writer.close()
    yield spool.take()


def results_csv(job_id: str, *, rows: int = ROW_GROUP_ROWS, url: str | None = None) -> Iterator[bytes]:
    """The job's results as CSV bytes (UTF-8) in pieces, the CSV download's columns and cells, read a page of `rows`
    at a time in short transactions (for a writer that may wait on a store between pages)."""
    with session_scope(url) as session:
        columns = jobs.output_columns_of(session, jobs.get_job(session, job_id))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "status", "error", "from_cache", *columns])
    for page in _pages(job_id, rows, url):
        for item_id, status, error, from_cache, outputs, *category in page:
            outputs = {**(outputs or {}), **({"category": category[0]} if category else {})}
            writer.writerow([item_id, status, error or "", int(bool(from_cache)),
                             *[outputs.get(c, "") for c in columns]])
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
