"""Engines and transactions for SQLite and PostgreSQL.

Every SQLite connection sets WAL journaling, foreign keys, a busy timeout, ``secure_delete``
(freed pages are overwritten with zeros, so deleted ciphertext and wrapped keys do not linger in
the file) and in-memory temporary storage. pysqlite's own transaction handling is switched off so that write transactions can
start with ``BEGIN IMMEDIATE`` and take the write lock before their first read.

On PostgreSQL every write transaction starts by locking the single state row with
``SELECT ... FOR UPDATE`` (see :func:`lock_state`), which serialises writers the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session

from seqr.errors import InvalidInputError, RegistryError
from seqr.registry.models import RegistryState

BUSY_TIMEOUT_MS = 30_000
_WRITE_OPTION = "seqr_write"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA secure_delete = ON")
        # Sorts and temporary indexes stay in memory, so no plaintext-bearing temp file is written.
        cursor.execute("PRAGMA temp_store = MEMORY")
    finally:
        cursor.close()


def _on_sqlite_begin(connection: Any) -> None:
    immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str) -> Engine:
    """Create an engine for ``url`` with the registry's connection settings."""
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise InvalidInputError(f"invalid database URL {url!r}; expected sqlite:///PATH or postgresql+psycopg://...") from error
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _on_sqlite_connect)
        event.listen(engine, "begin", _on_sqlite_begin)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(parsed, pool_pre_ping=True)
    raise InvalidInputError(f"unsupported database {parsed.get_backend_name()!r}; use SQLite or PostgreSQL")


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Session]:
    """Open a transaction that only reads and commits nothing."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """Open a transaction that starts with ``BEGIN IMMEDIATE`` on SQLite; commits on normal exit."""
    write_engine = engine.execution_options(**{_WRITE_OPTION: True})
    with Session(write_engine, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def write_transaction(engine: Engine) -> Iterator[tuple[Session, RegistryState]]:
    """Open a transaction that takes the registry's write lock before its first read.

    Yields the session and the locked state row; commits when the block exits normally.
    """
    with write_session(engine) as session:
        yield session, lock_state(session)


def lock_state(session: Session) -> RegistryState:
    state = session.scalars(
        select(RegistryState).where(RegistryState.id == 1).with_for_update()
    ).one_or_none()
    if state is None:
        raise RegistryError("the registry database has no state row; create it with `seqr init`")
    return state
