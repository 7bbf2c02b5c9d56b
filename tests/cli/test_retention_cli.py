"""`seqr data` and `seqr retention`: the commands a person or cron runs, with their output and exit codes."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from seqr.cli.main import EXIT_ERROR, EXIT_LOCKED, main
from seqr.policies.job_lock import HeldLock
from seqr.policies.training_jobs import train_silo_adapter
from seqr.registry.registry import Registry
from seqr.registry.retention import RETENTION_LOCK
from seqr.training.base_model import load_base_model
from seqr.training.library import create_library
from seqr.training.presets import TrainingConfig

TRAINING = TrainingConfig(epochs=1, batch_size=4, learning_rate=5e-3, max_length=32, seed=5)


@dataclass(frozen=True)
class CliWorld:
    directory: Path
    token: str


@pytest.fixture(scope="module")
def cli_template(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> CliWorld:
    """A registry with one library (its base model source set) and a silo with a trained, active adapter."""
    directory = tmp_path_factory.mktemp("retention-cli") / "registry"
    registry, created = Registry.init(directory)
    admin = registry.authenticate(created.token)
    base = load_base_model(tiny_model_dir)
    library = create_library(base.model, base_fingerprint=base.fingerprint, rank=4, alpha=8.0, seed=2)
    registry.add_library(
        admin, "main", base_model_fingerprint=base.fingerprint, target_modules=list(library.module_names),
        rank=library.rank, alpha=library.alpha, seed=library.seed, shared_a=library.a,
        base_model_source=str(tiny_model_dir),
    )
    registry.create_silo(admin, "support")
    for index in range(3):
        text = "\n".join(json.dumps({"text": f"ticket {index}.{line}: reset the router"}) for line in range(3))
        registry.add_document(admin, "support", text.encode(), metadata={"source": f"crm-export-{index}"})
    result = train_silo_adapter(registry, admin, "support", "main", base, TRAINING, progress=False)
    registry.activate_adapter_version(admin, result.version.id)
    registry.close()
    return CliWorld(directory, created.token)


@pytest.fixture
def cli_world(cli_template: CliWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliWorld:
    directory = tmp_path / "registry"
    shutil.copytree(cli_template.directory, directory)
    config = directory / "registry.json"
    document = json.loads(config.read_text())
    document["database_url"] = f"sqlite:///{directory.resolve() / 'registry.db'}"
    config.write_text(json.dumps(document))
    monkeypatch.setenv("SEQR_HOME", str(directory))
    monkeypatch.setenv("SEQR_TOKEN", cli_template.token)
    return CliWorld(directory, cli_template.token)


def seqr(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def seqr_json(capsys: pytest.CaptureFixture[str], *args: str):
    status, out, err = seqr(capsys, *args, "--json")
    assert status == 0, err
    return json.loads(out)


def test_data_add_and_list(cli_world, capsys, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("call the customer back")

    added = seqr_json(capsys, "data", "add", "support", str(file), "--expires-in", "30d", "--meta", "source=phone")
    listed = seqr_json(capsys, "data", "list", "support")

    assert added["size"] == len("call the customer back")
    assert added["expires_at"] is not None
    assert [document["id"] for document in listed][-1] == added["id"]
    assert len(listed) == 4


def test_remove_request_then_run_and_verify(cli_world, capsys):
    requested = seqr_json(capsys, "data", "remove", "support", "--where", "source=crm-export-1", "--reason", "erasure request")
    pending = seqr_json(capsys, "retention", "requests", "--pending")
    dry = seqr_json(capsys, "retention", "run", "--dry-run")
    done = seqr_json(capsys, "retention", "run")
    verified = seqr_json(capsys, "retention", "verify")
    again = seqr_json(capsys, "retention", "run")

    document = requested["requests"][0]["document_id"]
    assert requested["removed_now"] == []
    assert [request["document_id"] for request in pending] == [document]
    assert dry["dry_run"] and dry["documents_removed"] == [document]
    assert done["documents_removed"] == [document]
    assert done["silos_retrained"] == ["default/support/main"]
    assert len(done["versions_destroyed"]) == 1
    assert verified["ok"] and verified["problems"] == []
    assert again["run_id"] is None
    assert again["documents_removed"] == []
    assert seqr_json(capsys, "retention", "requests", "--pending") == []


def test_run_text_summary(cli_world, capsys):
    seqr_json(capsys, "data", "remove", "support", "--id", "1")

    status, out, _err = seqr(capsys, "retention", "run")

    assert status == 0
    assert "documents removed: 1 [1]" in out
    assert "silos retrained: 1 ['default/support/main']" in out


def test_remove_now_then_verify_fails_until_run(cli_world, capsys):
    removed = seqr_json(capsys, "data", "remove", "support", "--id", "2", "--now")

    status, out, err = seqr(capsys, "retention", "verify")

    assert removed["removed_now"] == [2]
    assert status == EXIT_ERROR
    assert "removed document(s) [2]" in out
    assert "retention verification found 1 problem(s)" in err
    seqr_json(capsys, "retention", "run")
    assert seqr_json(capsys, "retention", "verify")["ok"]


def test_legal_hold_blocks_removal(cli_world, capsys):
    policy = seqr_json(capsys, "retention", "policy", "set", "--silo", "support", "--hold", "--max-age", "365d")
    shown = seqr_json(capsys, "retention", "policy", "show", "--silo", "support")
    listed = seqr_json(capsys, "retention", "policy", "list")

    status, _out, err = seqr(capsys, "data", "remove", "support", "--id", "3", "--now")
    held_run = seqr_json(capsys, "retention", "run")

    assert policy["legal_hold"] and policy["max_age_seconds"] == 365 * 86400
    assert shown == policy
    assert [entry["silo"] for entry in listed] == ["support"]
    assert status == EXIT_ERROR
    assert "legal hold" in err
    assert held_run["documents_held"] == [3]
    assert held_run["documents_removed"] == []

    seqr_json(capsys, "retention", "policy", "set", "--silo", "support", "--release")
    assert seqr_json(capsys, "retention", "run")["documents_removed"] == [3]


def test_run_exits_3_while_lock_held(cli_world, capsys):
    registry = Registry.open(cli_world.directory)
    try:
        with HeldLock(registry, RETENTION_LOCK):
            status, _out, err = seqr(capsys, "retention", "run")
    finally:
        registry.close()

    assert status == EXIT_LOCKED
    assert "holds the registry's lock" in err


def test_remove_without_selector_fails(cli_world, capsys):
    status, _out, err = seqr(capsys, "data", "remove", "support")

    assert status == EXIT_ERROR
    assert "--id ID or --where KEY=VALUE" in err


def test_policy_rejects_both_age_options(cli_world, capsys):
    status, _out, err = seqr(capsys, "retention", "policy", "set", "--max-age", "3d", "--no-max-age")

    assert status == EXIT_ERROR
    assert "not both" in err


def test_adapter_manifest_after_removal(cli_world, capsys):
    seqr_json(capsys, "data", "remove", "support", "--id", "2")
    seqr_json(capsys, "retention", "run")

    versions = seqr_json(capsys, "adapter", "show", "support", "--manifest")
    status, out, _err = seqr(capsys, "adapter", "show", "support", "--manifest")

    by_status = {version["status"]: version for version in versions}
    active = by_status["active"]["manifest"]
    assert [entry["id"] for entry in active["documents"]] == [1, 3]
    assert active["replaces_version"] == by_status["destroyed"]["id"]
    assert status == 0
    assert "trained on 2 document(s): 1, 3" in out
