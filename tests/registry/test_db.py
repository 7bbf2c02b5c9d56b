"""SQLite connection settings and the write lock taken up front."""

from __future__ import annotations

import threading

from sqlalchemy import event, text

from seqr.registry.db import make_engine, read_transaction, write_transaction

from registry_helpers import World


def test_sqlite_pragmas_on_every_connection(sqlite_url: str):
    engine = make_engine(sqlite_url)
    try:
        connections = [engine.connect() for _ in range(2)]
        for connection in connections:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
            assert connection.execute(text("PRAGMA secure_delete")).scalar() == 1
            assert connection.execute(text("PRAGMA temp_store")).scalar() == 2  # memory
        for connection in connections:
            connection.close()
    finally:
        engine.dispose()


def test_writes_begin_immediate(sqlite_world: World):
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        statements.append(statement)

    engine = sqlite_world.registry.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        with write_transaction(engine):
            pass
        with read_transaction(engine) as session:
            session.execute(text("SELECT 1"))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert statements[0] == "BEGIN IMMEDIATE"
    assert statements[1].startswith("SELECT registry_state")  # the state row, read under the lock
    assert statements[2:] == ["BEGIN", "SELECT 1"]


def test_concurrent_writers_serialise(world: World):
    """Two threads creating silos at once both succeed, and the change counter counts both."""
    before = world.registry.generation()
    errors: list[BaseException] = []

    def create(name: str) -> None:
        try:
            for index in range(5):
                world.registry.create_silo(world.admin, f"{name}{index}", tenant="acme")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=create, args=(name,)) for name in ("x", "y")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert world.registry.generation() == before + 10
    world.registry.verify_audit(world.admin)
