"""Resolve a principal's authorised adapters among thousands of silos of one tenant, on SQLite and PostgreSQL.

The registry holds ``--silos`` silos, each with one active adapter version of a tiny library
(one 8 x 8 module), the first ``--api-silos`` filled through the registry API and the rest
inserted as rows (see :func:`fill`), and three users: ``direct`` has a use grant on ``--direct`` silos,
``group`` is a member of a group granted every silo, ``nobody`` has no grant. Per user it times
the two reads of a request: ``check_principal`` (run by every request) and ``authorized_adapters``
(run when the change counter moved), each as the fastest and the median of ``--repeats`` calls.
It also times ``load_adapters`` of the user's authorised versions among the API-filled silos,
the only ones with factors to decrypt.

PostgreSQL: a fresh database is created on the server of ``--postgres-url`` and dropped at the end.
After filling it the script runs ANALYZE, as autovacuum would within a minute or so of the bulk
insert (``--skip-analyze`` measures the state before that). Without statistics, PostgreSQL 15's
planner estimated a handful of rows per table and joined every active version of the tenant row by
row, even for a user without grants.

Example (the recorded run):
    python benchmarks/bench_resolve.py --silos 10000 --json resolve.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from seqr.registry.enums import AdapterStatus, Permission
from seqr.registry.models import AdapterVersion, Grant, Group, Library as LibraryRow, Principal as PrincipalRow
from seqr.registry.models import RegistryState, Silo
from seqr.registry.registry import Registry
from seqr.registry.views import Principal
from seqr.routing.benchmark import describe_machine
from seqr.routing.factors import AdapterFactors, ModuleFactors

logger = logging.getLogger("bench_resolve")

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MODULE = "layer.proj"
RANK = 8
WIDTH = 8


@contextmanager
def postgres_database(base_url: str) -> Iterator[str]:
    """Create a fresh database on the server of ``base_url``, yield its URL and drop it afterwards."""
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    name = f"seqr_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def tiny_factors(seed: int) -> AdapterFactors:
    generator = torch.Generator().manual_seed(seed)
    b = torch.randn(WIDTH, RANK, generator=generator)
    return AdapterFactors({MODULE: ModuleFactors.from_b(b, mu=1.0, sigma=0.5)})


def fill(registry: Registry, admin: Principal, silos: int, direct: int, api_silos: int) -> dict[str, Any]:
    """Create the silos, their active adapters, the users and the grants; return the users' tokens and fill times.

    The first ``api_silos`` silos go through the registry API (encrypted factors, audit events).
    The rest are inserted as rows in one transaction: a silo, an active version without a data
    key or blob, and the grants. Resolving reads only those rows and tables. Filling through the API took about 70 ms per
    silo on the 2-core benchmark machine (200 silos), too slow for 10,000.
    """
    generator = torch.Generator().manual_seed(0)
    registry.add_library(
        admin, "bench", base_model_fingerprint="bench", target_modules=[MODULE], rank=RANK, alpha=2.0 * RANK,
        seed=0, shared_a={MODULE: torch.randn(RANK, WIDTH, generator=generator)},
    )
    for user in ("direct", "group", "nobody"):
        registry.create_principal(admin, user)
    registry.create_group(admin, "everyone")
    registry.set_group_member(admin, "everyone", "group", True)

    start = time.perf_counter()
    for i in range(min(silos, api_silos)):
        name = f"silo-{i:05d}"
        registry.create_silo(admin, name)
        version = registry.add_adapter_version(admin, name, "bench", tiny_factors(i))
        registry.activate_adapter_version(admin, version.id)
        registry.grant(admin, name, group="everyone")
        if i < direct:
            registry.grant(admin, name, principal="direct")
        if (i + 1) % 1000 == 0:
            logger.info("filled %d silos in %.1f s", i + 1, time.perf_counter() - start)
    api_seconds = time.perf_counter() - start
    start = time.perf_counter()
    insert_rows(registry, admin, range(api_silos, silos), direct)
    rows_seconds = time.perf_counter() - start
    tokens = {user: registry.create_token(admin, user).token for user in ("direct", "group", "nobody")}
    return {"tokens": tokens, "api_seconds": api_seconds, "rows_seconds": rows_seconds}


def insert_rows(registry: Registry, admin: Principal, numbers: range, direct: int) -> None:
    """Insert silos with one active version and their grants as rows, in one transaction."""
    if not numbers:
        return
    with Session(registry.engine) as session, session.begin():
        tenant_id = admin.tenant_id
        library_id = session.scalars(select(LibraryRow.id).where(LibraryRow.tenant_id == tenant_id)).one()
        group_id = session.scalars(select(Group.id).where(Group.tenant_id == tenant_id, Group.name == "everyone")).one()
        direct_id = session.scalars(
            select(PrincipalRow.id).where(PrincipalRow.tenant_id == tenant_id, PrincipalRow.name == "direct")
        ).one()
        now = registry.clock()
        silo_rows = [Silo(tenant_id=tenant_id, name=f"silo-{i:05d}", created_at=now) for i in numbers]
        session.add_all(silo_rows)
        session.flush()
        for i, silo in zip(numbers, silo_rows, strict=True):
            session.add(AdapterVersion(
                tenant_id=tenant_id, silo_id=silo.id, library_id=library_id, number=1, status=AdapterStatus.ACTIVE,
                manifest={}, config={}, metrics={}, created_by=admin.id, created_at=now, activated_at=now,
            ))
            session.add(Grant(tenant_id=tenant_id, silo_id=silo.id, group_id=group_id, permission=Permission.USE, created_at=now))
            if i < direct:
                session.add(Grant(tenant_id=tenant_id, silo_id=silo.id, principal_id=direct_id, permission=Permission.USE,
                                  created_at=now))
        state = session.get(RegistryState, 1)
        assert state is not None
        state.generation += 1


def silo_number(name: str) -> int:
    """Return the index of a silo named by :func:`fill` (``silo-00042`` -> 42)."""
    return int(name.removeprefix("silo-"))


def timed(call: Callable[[], object], repeats: int) -> dict[str, float]:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"best_ms": min(times) * 1e3, "median_ms": statistics.median(times) * 1e3}


def measure(
    url: str | None, directory: Path, silos: int, direct: int, api_silos: int, repeats: int, analyze: bool
) -> dict[str, Any]:
    registry, created = Registry.init(directory, url)
    try:
        admin = registry.authenticate(created.token)
        filled = fill(registry, admin, silos, direct, api_silos)
        if url is not None and analyze:
            with registry.engine.connect() as connection:
                connection.execute(text("ANALYZE"))
                connection.commit()
        results: dict[str, Any] = {
            "api_silos": min(silos, api_silos), "api_fill_seconds": filled["api_seconds"],
            "row_fill_seconds": filled["rows_seconds"], "users": {},
        }
        for user, token in filled["tokens"].items():
            principal = registry.authenticate(token)
            versions = registry.authorized_adapters(principal)
            adapters = len(versions)
            loadable = [version.id for version in versions if silo_number(version.silo) < api_silos]
            results["users"][user] = {
                "authorized_adapters": adapters,
                "check_principal": timed(lambda p=principal: registry.check_principal(p), repeats),
                "authorized_adapters_call": timed(lambda p=principal: registry.authorized_adapters(p), repeats),
                "load_adapters": len(loadable),
                "load_adapters_call": timed(lambda p=principal, ids=loadable: registry.load_adapters(p, ids), repeats),
            }
            logger.info("%s: %d adapters, %s", user, adapters, results["users"][user])
        return results
    finally:
        registry.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silos", type=int, default=10_000, help="Silos in the tenant, each with one active adapter.")
    parser.add_argument("--direct", type=int, default=100, help="Silos granted directly to the user 'direct'.")
    parser.add_argument("--api-silos", type=int, default=200, help="Silos filled through the registry API; the rest as rows.")
    parser.add_argument("--repeats", type=int, default=20, help="Timed calls per measurement.")
    parser.add_argument("--backends", default="sqlite,postgresql", help="Comma-separated: sqlite, postgresql.")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL, help="Server to create the database on.")
    parser.add_argument("--skip-analyze", action="store_true", help="Do not run ANALYZE on PostgreSQL after filling.")
    parser.add_argument("--json", type=Path, default=None, help="Write the results as JSON to this file.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("seqr").setLevel(logging.WARNING)

    report: dict[str, Any] = {
        "machine": describe_machine(torch.device("cpu")), "command": " ".join(sys.argv),
        "silos": args.silos, "direct": args.direct, "repeats": args.repeats, "analyze": not args.skip_analyze,
        "backends": {},
    }
    for backend in [part.strip() for part in args.backends.split(",") if part.strip()]:
        with tempfile.TemporaryDirectory(prefix="seqr-bench-resolve-") as directory:
            if backend == "sqlite":
                report["backends"][backend] = measure(
                    None, Path(directory) / "registry", args.silos, args.direct, args.api_silos, args.repeats, False
                )
            elif backend == "postgresql":
                with postgres_database(args.postgres_url) as url:
                    report["backends"][backend] = measure(
                        url, Path(directory) / "registry", args.silos, args.direct, args.api_silos, args.repeats,
                        not args.skip_analyze,
                    )
            else:
                parser.error(f"unknown backend {backend!r}; use sqlite or postgresql")
    output = json.dumps(report, indent=2)
    if args.json is not None:
        args.json.write_text(output, encoding="utf-8")
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
