"""No plaintext at rest: canaries in a document and in B never reach any file of the registry."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import torch
from sqlalchemy import inspect, select, text

from seqr.registry import Registry
from seqr.registry.models import Blob, DataKey
from seqr.routing.factors import AdapterFactors, ModuleFactors

from registry_helpers import MODULES, OUT_FEATURES, RANK, World

DOCUMENT_CANARY = b"CANARY-7f3e9a1c-the-quarterly-numbers"
METADATA_CANARY = "CANARY-meta-51d2"


def _canary_factors() -> tuple[AdapterFactors, list[bytes]]:
    """Factors whose Q and R hold a recognisable float pattern; return them and the byte patterns."""
    modules = {}
    patterns = []
    for index, name in enumerate(MODULES):
        q = torch.zeros(OUT_FEATURES, RANK)  # (m, r) with orthonormal columns
        q[:RANK, :RANK] = torch.eye(RANK)
        r = torch.full((RANK, RANK), 1234.5678 + index).triu()  # (r, r)
        modules[name] = ModuleFactors(q=q, r=r, mu=3.25, sigma=0.75)
        patterns.append(r[0].numpy().tobytes())
    return AdapterFactors(modules=modules), patterns


def _files(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if path.is_file()]


def test_no_canary_in_any_file(sqlite_world: World, tmp_path: Path):
    world = sqlite_world
    factors, patterns = _canary_factors()
    version = world.registry.add_adapter_version(world.admin, "finance", "lib", factors, tenant="acme")
    world.registry.activate_adapter_version(world.admin, version.id)
    document = world.registry.add_document(
        world.admin, "finance", DOCUMENT_CANARY * 50, metadata={"source": METADATA_CANARY}, tenant="acme"
    )

    # The data round-trips, so the canaries really were written.
    assert world.registry.read_document(world.admin, document.id).content == DOCUMENT_CANARY * 50
    loaded = world.registry.load_adapter(world.admin, version.id).factors
    assert torch.equal(loaded.modules[MODULES[0]].r, factors.modules[MODULES[0]].r)

    database = world.directory / "registry.db"
    assert (world.directory / "registry.db-wal").exists(), "WAL mode should leave a -wal file while open"
    for name in ("registry.db", "registry.db-wal", "registry.db-shm", "master.key"):
        assert (world.directory / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"
    needles = [DOCUMENT_CANARY, METADATA_CANARY.encode(), *patterns]
    files = _files(world.directory)
    assert database in files
    for path in files:
        content = path.read_bytes()
        for needle in needles:
            assert needle not in content, f"plaintext {needle[:16]!r} found in {path.name}"

    # Checkpoint the WAL into the main file and search again.
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for path in _files(world.directory):
        content = path.read_bytes()
        for needle in needles:
            assert needle not in content, f"plaintext {needle[:16]!r} found in {path.name} after checkpoint"


def test_removed_document_ciphertext_overwritten(sqlite_world: World):
    """secure_delete zeroes freed pages, so the removed document's ciphertext leaves the file."""
    world = sqlite_world
    document = world.registry.add_document(world.admin, "finance", DOCUMENT_CANARY * 200, tenant="acme")
    with world.registry._read() as session:
        key = session.scalars(select(DataKey).where(DataKey.document_id == document.id)).one()
        ciphertext = session.scalars(select(Blob.ciphertext).where(Blob.data_key_id == key.id)).first()
    assert ciphertext is not None
    world.registry.remove_document(world.admin, document.id)
    world.registry.close()
    database = world.directory / "registry.db"
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert ciphertext[:64] not in database.read_bytes()
    assert Registry.open(world.directory).generation() > 0


def test_no_canary_in_any_column(world: World):
    """Read every column of every table back through SQL (SQLite and PostgreSQL) and search it."""
    factors, patterns = _canary_factors()
    version = world.registry.add_adapter_version(world.admin, "finance", "lib", factors, tenant="acme")
    world.registry.activate_adapter_version(world.admin, version.id)
    world.registry.add_document(world.admin, "finance", DOCUMENT_CANARY, metadata={"source": METADATA_CANARY}, tenant="acme")
    token = world.registry.create_token(world.admin).token

    needles = [DOCUMENT_CANARY, METADATA_CANARY.encode(), token.encode(), *patterns]
    binary_values = 0
    with world.registry.engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):
                for value in row:
                    data = bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode()
                    binary_values += isinstance(value, (bytes, memoryview))
                    for needle in needles:
                        assert needle not in data, f"plaintext {needle[:16]!r} found in table {table}"
    assert binary_values >= 3, "the search should have seen the ciphertext and wrapped-key columns"
