"""`seqr demo`: the whole system, end to end, on real text found on this machine.

The demo creates a fresh registry and loads SmolLM2-135M-Instruct offline. It creates a tenant
with three silos of real text, keeps part of each silo out of training, and trains and calibrates one adapter
per silo. Then it creates users with different grants. As each user it routes every silo's
held-out text, checks that no token at any layer went to an adapter outside the user's grants,
and generates a short completion. Finally the retention job handles an erasure request in one
silo (retrain, activate, destroy) and the audit trail is printed."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from seqr.api.admin import create_library, train_adapter, training_config
from seqr.api.session import load_shared_base
from seqr.demo.corpus import CorpusDocument, builtin_silos, folder_silos
from seqr.errors import ConflictError
from seqr.policies.retention import run_retention
from seqr.registry.registry import Registry
from seqr.training.base_model import BaseModel
from seqr.training.calibrate import CalibrationTokens

MARKER_FILE = ".seqr-demo"
ERASURE_SOURCE = "erasure-request-1"
Echo = Callable[[str], None]


@dataclass(frozen=True)
class DemoSettings:
    """Settings of a demo run; docs/benchmarks.md records how long the defaults take on a 2-core CPU."""

    directory: Path = Path("seqr-demo")
    data_dir: Path | None = None
    base_model: str | None = None
    train_documents: int = 24
    test_documents: int = 12
    epochs: int = 2
    rank: int = 8
    seed: int = 0
    max_length: int = 128
    chunk_chars: int = 600
    min_chars: int = 200
    users: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class DemoReport:
    """The numbers the demo prints, for tests and scripts."""

    silos: list[str] = field(default_factory=list)
    # user -> share of held-out texts whose mean routing score is highest for their own silo
    accuracy: dict[str, float] = field(default_factory=dict)
    # user -> share of (token, module) routing decisions on held-out text that chose the text's silo
    token_accuracy: dict[str, float] = field(default_factory=dict)
    outside_grants: dict[str, int] = field(default_factory=dict)  # user -> token-layer decisions outside grants
    retention: dict[str, object] = field(default_factory=dict)
    audit_events: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


@contextmanager
def _timed(report: DemoReport, step: str, echo: Echo) -> Iterator[None]:
    started = time.perf_counter()
    yield
    report.seconds[step] = time.perf_counter() - started
    echo(f"  [{step}: {report.seconds[step]:.1f}s]")


def _prepare_directory(directory: Path) -> None:
    if directory.exists():
        if not (directory / MARKER_FILE).exists():
            raise ConflictError(
                f"{directory} exists and is not a demo registry; pass --dir with a new or earlier demo directory"
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER_FILE).write_text("created by `seqr demo`; the demo deletes and recreates this directory\n")


def _split(documents: list[CorpusDocument], train: int, test: int, seed: int) -> tuple[list[CorpusDocument], list[CorpusDocument]]:
    shuffled = list(documents)
    random.Random(seed).shuffle(shuffled)
    test_count = min(test, max(1, len(shuffled) // 4))
    return shuffled[test_count:test_count + train], shuffled[:test_count]


def default_users(silos: list[str]) -> dict[str, tuple[str, ...]]:
    """alice may use every silo, bob all but the last, carol only the last (through a group)."""
    return {"alice": tuple(silos), "bob": tuple(silos[:-1]), "carol": (silos[-1],)}


def run_demo(settings: DemoSettings, *, echo: Echo = print, progress: bool = True) -> DemoReport:
    """Run every step of the demo, printing as it goes; return the numbers it printed."""
    report = DemoReport()
    started = time.perf_counter()
    directory = settings.directory

    echo(f"1. Creating a fresh registry in {directory}")
    _prepare_directory(directory)
    registry, created = Registry.init(directory, tenant="acme", admin="admin")
    try:
        admin = registry.authenticate(created.token)

        echo("2. Loading the base model (offline)")
        with _timed(report, "load model", echo):
            base = load_shared_base(settings.base_model)
        echo(f"   {base.name}, weights fingerprint {base.fingerprint[:12]}")

        echo("3. Creating silos of real text and adding their documents (encrypted)")
        chunking = {"chunk_chars": settings.chunk_chars, "min_chars": settings.min_chars}
        corpus = folder_silos(settings.data_dir, **chunking) if settings.data_dir else builtin_silos(**chunking)
        held_out: dict[str, list[CorpusDocument]] = {}
        for index, (silo, documents) in enumerate(corpus.items()):
            train, test = _split(documents, settings.train_documents, settings.test_documents, settings.seed + index)
            held_out[silo] = test
            registry.create_silo(admin, silo)
            for position, document in enumerate(train):
                # A few documents of the first silo carry the source that the erasure request names.
                source = ERASURE_SOURCE if index == 0 and position < 4 else document.source
                registry.add_document(admin, silo, json.dumps({"text": document.text}).encode(), metadata={"source": source})
            echo(f"   {silo}: {len(train)} training documents, {len(test)} held out")
        report.silos = list(corpus)

        echo("4. Training and calibrating one adapter per silo (shared A, only B trained)")
        library = create_library(registry, admin, "demo", base_model=settings.base_model, rank=settings.rank, seed=settings.seed)
        echo(f"   library {library.name}: rank {library.rank}, {len(library.target_modules)} modules, A {library.a_fingerprint[:12]}")
        config = replace(training_config(epochs=settings.epochs, seed=settings.seed),
                         max_length=settings.max_length, calibration_tokens=CalibrationTokens.ALL)
        with _timed(report, "train", echo):
            for silo in report.silos:
                result = train_adapter(registry, admin, silo, "demo", config=config, base_model=base, progress=progress)
                echo(f"   {silo}: version {result.version.number} active, final loss "
                     f"{result.version.metrics.get('final_epoch_loss', float('nan')):.3f}, {result.seconds:.1f}s")

        echo("5. Creating users with different grants and tokens")
        users = settings.users or default_users(report.silos)
        tokens = _create_users(registry, admin, users)
        for user, silos in users.items():
            echo(f"   {user}: may use {', '.join(silos)}")

        echo("6. Routing held-out text and generating, as each user")
        with _timed(report, "route and generate", echo):
            for user, token in tokens.items():
                _as_user(registry, token, base, user, set(users[user]), held_out, report, echo)

        echo(f"7. Erasure request: remove the documents of {report.silos[0]!r} whose source is {ERASURE_SOURCE!r}")
        requests = registry.request_removal(admin, report.silos[0], metadata_match={"source": ERASURE_SOURCE},
                                            reason="demo erasure request")
        echo(f"   recorded removal requests for {len(requests)} document(s)")
        with _timed(report, "retention", echo):
            summary = run_retention(registry, admin, load_model=lambda source: base, progress=progress)
        report.retention = summary.to_json()
        echo(f"   removed documents {summary.documents_removed}; retrained {summary.silos_retrained}; "
             f"activated versions {summary.versions_activated}; destroyed versions {summary.versions_destroyed}")

        echo("   audit trail (latest events):")
        for event in reversed(registry.list_audit_events(admin, limit=12)):
            echo(f"   {event.occurred_at:%H:%M:%S} {event.actor:<14} {event.action:<22} {event.target} ({event.outcome})")
        verified = registry.verify_audit(admin)
        report.audit_events = verified.events
        echo(f"   audit chain verified: {verified.events} events")
    finally:
        registry.close()

    report.seconds["total"] = time.perf_counter() - started
    echo(f"Done in {report.seconds['total']:.0f}s. Registry: {directory} (admin token: SEQR_TOKEN={created.token})")
    return report


def _create_users(registry: Registry, admin, users: dict[str, tuple[str, ...]]) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for user, silos in users.items():
        registry.create_principal(admin, user)
        if user == "carol":
            # Grants through a group work like direct grants.
            registry.create_group(admin, "legal-team")
            registry.set_group_member(admin, "legal-team", user, True)
            for silo in silos:
                registry.grant(admin, silo, group="legal-team")
        else:
            for silo in silos:
                registry.grant(admin, silo, principal=user)
        tokens[user] = registry.create_token(admin, user).token
    return tokens


def _as_user(
    registry: Registry,
    token: str,
    base: BaseModel,
    user: str,
    granted: set[str],
    held_out: dict[str, list[CorpusDocument]],
    report: DemoReport,
    echo: Echo,
) -> None:
    model = registry.login(token).load_model(base)
    try:
        correct = total = outside = token_hits = token_total = 0
        per_silo: list[str] = []
        for silo, documents in held_out.items():
            explanations = model.route_many([document.text for document in documents])
            outside += sum(
                1 for explanation in explanations for route in explanation.modules.values()
                for choice in route.chosen if choice is not None and choice not in granted
            )
            if silo in granted:
                hits = sum(1 for explanation in explanations if explanation.sequence_silo() == silo)
                correct += hits
                total += len(explanations)
                per_silo.append(f"{silo} {hits}/{len(explanations)}")
                decisions = [choice for explanation in explanations for route in explanation.modules.values()
                             for choice in route.chosen]
                token_hits += sum(1 for choice in decisions if choice == silo)
                token_total += len(decisions)
        report.accuracy[user] = correct / total if total else 0.0
        report.token_accuracy[user] = token_hits / token_total if token_total else 0.0
        report.outside_grants[user] = outside
        echo(f"   {user}: routes among {', '.join(model.silos)}")
        echo(f"     routing accuracy on held-out text of its silos: {report.accuracy[user]:.0%} of texts "
             f"({'; '.join(per_silo)}), {report.token_accuracy[user]:.0%} of token-layer decisions")
        echo(f"     token-layer decisions outside its grants, over all silos' held-out text: {outside}")
        (completion,) = model.generate("Write one sentence about Python.", max_new_tokens=24)
        echo(f"     generated: {completion.strip()!r}")
    finally:
        model.close()
