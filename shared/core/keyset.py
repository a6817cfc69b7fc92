"""Keyset pagination: one page of a query in a stable order, and the key the next page starts after.

Invariants:
- The order is the `keys` columns, all ascending or all descending, and the last key is unique per row (an id, a
  name, a version number), so the order is total and stable: following the keys from page to page yields every row
  once, even while rows are added (no OFFSET: a page never shifts when earlier rows come or go).
- A page holds at most `limit` rows; its next key is None exactly when no row follows it (one row more than the
  limit is read to know, so the last page is never an empty one).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

Key = tuple[Any, ...]


def after_key(keys: Sequence, after: Key, descending: bool = False):
    """The condition "the row's keys come after `after`" in the order of `keys` (written out, not as a row-value
    comparison, so each value is bound with its column's type)."""
    clauses = []
    for i, column in enumerate(keys):
        beyond = column < after[i] if descending else column > after[i]
        clauses.append(and_(*[keys[j] == after[j] for j in range(i)], beyond))
    return or_(*clauses)


def page(session: Session, query: Select, keys: Sequence, *, after: Key | None, limit: int,
         key_of: Callable[[Any], Key], descending: bool = False) -> tuple[list, Key | None]:
    """At most `limit` rows of `query` (Row objects) after the key `after`, and the key of the last one when more
    rows follow (else None). `key_of(row)` reads a row's keys in the order of `keys`."""
    if after is not None:
        if len(after) != len(keys):
            raise ValueError(f"a key of this list has {len(keys)} parts, got {len(after)}")
        query = query.where(after_key(keys, after, descending))
    order = [column.desc() if descending else column.asc() for column in keys]
    rows = session.execute(query.order_by(None).order_by(*order).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (key_of(rows[-1]) if more else None)
