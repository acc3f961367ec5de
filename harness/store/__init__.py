"""The results store: every run, attempt, raw sample, device fact and verdict, kept as written.

``Store(location)`` opens the backend the location names:

- a file path (or nothing: ``results.sqlite`` in the state directory): SQLite, the embedded default
  (``harness.store.sqlite``);
- a ``postgresql://`` URL: PostgreSQL, one store for several controllers (``harness.store.postgres``).

Both keep the same schema at the same version and migrate it the same steps (``base.SCHEMA_VERSION``).
The store keeps persistence only: writes, and raw reads. What the rows mean (the attempt and samples that
count, percentiles, RTF, summaries) is ``harness.results``.
"""

from __future__ import annotations

import os
from typing import Any

from harness.store.base import (
    ATTEMPT_STATUSES,
    INTERFERENCE_COLUMNS,
    LENGTH_CLASSES,
    MAX_ERROR_CHARS,
    RAW_SAMPLE_COLUMNS,
    RUN_STATUSES,
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    STREAMING_COLUMNS,
    Store,
    StoreError,
    bounded_error,
    config_hash,
    new_run_id,
)
from harness.store.postgres import is_url, redacted
from harness.store.sqlite import default_store_path

__all__ = [
    "ATTEMPT_STATUSES", "INTERFERENCE_COLUMNS", "LENGTH_CLASSES", "MAX_ERROR_CHARS", "RAW_SAMPLE_COLUMNS",
    "RUN_STATUSES", "SAMPLE_COLUMNS", "SCHEMA_VERSION", "STREAMING_COLUMNS", "Store", "StoreError",
    "backend_for", "bounded_error", "config_hash", "default_store_path", "describe", "is_url", "new_run_id",
]


def backend_for(location: Any) -> type[Store]:
    """The Store class for a location: PostgreSQL for a ``postgresql://`` URL, else SQLite."""
    if is_url(location):
        from harness.store.postgres import PostgresStore

        return PostgresStore
    if isinstance(location, str) and "://" in location:
        raise StoreError(f"{location}: unknown store URL (a file path, or postgresql://user@host/db)")
    from harness.store.sqlite import SQLiteStore

    return SQLiteStore


def describe(location: str | os.PathLike | None) -> str:
    """A location fit to print or store (a URL's password hidden)."""
    if location is None:
        return str(default_store_path())
    return redacted(location) if is_url(location) else str(location)
