"""The registry commands as an operator runs them: init, users, tokens, grants, audit, keys."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest
import torch

from seqr.cli.main import main
from seqr.cli.registry_commands import parse_duration
from seqr.registry import Registry
from seqr.routing.factors import AdapterFactors, ModuleFactors


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
        self.capsys, self.monkeypatch, self.home = capsys, monkeypatch, home
        monkeypatch.setenv("SEQR_HOME", str(home))
        monkeypatch.delenv("SEQR_TOKEN", raising=False)
        monkeypatch.delenv("SEQR_MASTER_KEY", raising=False)

    def run(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["--quiet", *args])
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def ok(self, *args: str) -> str:
        code, out, err = self.run(*args)
        assert code == 0, f"seqr {' '.join(args)} exited {code}: {err}"
        return out

    def json(self, *args: str):
        return json.loads(self.ok(*args, "--json"))

    def login(self, token: str) -> None:
        self.monkeypatch.setenv("SEQR_TOKEN", token)
        self.token = token


def _init(capsys, monkeypatch, home: Path, database_url: str | None) -> Cli:
    runner = Cli(capsys, monkeypatch, home)
    extra = [] if database_url is None else ["--database-url", database_url]
    created = runner.json("init", "--dir", str(runner.home), *extra)
    runner.login(created["token"])
    return runner


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path: Path) -> Cli:
    """A registry on the default SQLite database; the commands do not depend on the database."""
    return _init(capsys, monkeypatch, tmp_path / "registry", None)


@pytest.fixture
def any_cli(capsys, monkeypatch, tmp_path: Path, database_url: str) -> Cli:
    """A registry on SQLite and on PostgreSQL (given with --database-url)."""
    return _init(capsys, monkeypatch, tmp_path / "registry", None if database_url.startswith("sqlite") else database_url)


def test_init_prints_token_once_and_keeps_key_private(cli: Cli):
    assert stat.S_IMODE((cli.home / "master.key").stat().st_mode) == 0o600
    listed = cli.json("token", "list")
    assert len(listed) == 1
    assert "token" not in listed[0]


def test_acceptance_flow(any_cli: Cli):
    cli = any_cli
    cli.ok("tenant", "create", "acme")
    cli.ok("user", "create", "alice", "--tenant", "acme")
    alice_token = cli.json("token", "create", "alice", "--tenant", "acme", "--expires-in", "30d")["token"]
    cli.ok("group", "create", "analysts", "--tenant", "acme")
    cli.ok("group", "add", "analysts", "alice", "--tenant", "acme")
    cli.ok("silo", "create", "finance", "--tenant", "acme")
    cli.ok("silo", "create", "legal", "--tenant", "acme")
    cli.ok("grant", "finance", "--tenant", "acme", "--user", "alice")
    cli.ok("grant", "legal", "--tenant", "acme", "--group", "analysts")
    assert cli.json("adapter", "list", "--tenant", "acme") == []

    cli.login(alice_token)
    assert sorted(s["name"] for s in cli.json("silo", "list")) == ["finance", "legal"]
    code, _out, err = cli.run("tenant", "create", "evil")
    assert code == 1
    assert "registry_admin" in err


def test_revoked_token_rejected_next_command(cli: Cli):
    cli.ok("user", "create", "bob")
    created = cli.json("token", "create", "bob")
    cli.ok("token", "revoke", created["public_id"])
    cli.login(created["token"])
    code, _out, err = cli.run("silo", "list")
    assert code == 1
    assert "revoked" in err
    assert created["token"] not in err


def test_revoke_grant(cli: Cli):
    cli.ok("user", "create", "carol")
    cli.ok("silo", "create", "ops")
    cli.ok("grant", "ops", "--user", "carol")
    cli.ok("revoke", "ops", "--user", "carol")
    code, _out, err = cli.run("revoke", "ops", "--user", "carol")
    assert code == 1
    assert "has no use grant" in err


def test_grant_needs_exactly_one_grantee(cli: Cli):
    cli.ok("silo", "create", "ops")
    code, _out, err = cli.run("grant", "ops")
    assert code == 1
    assert "exactly one grantee" in err


def test_keys_rotate_and_audit_verify(any_cli: Cli):
    cli = any_cli
    cli.ok("silo", "create", "ops")
    rotated = cli.json("keys", "rotate")
    assert rotated["master_version"] == 2
    assert cli.json("audit", "verify")["ok"] is True
    events = cli.json("audit", "list", "--limit", "5")
    actions = [event["action"] for event in events]
    assert actions[0] == "login"
    assert "keys.rotate" in actions


_SWAP_EVENTS_2_AND_3 = [
    "UPDATE audit_events SET id = -2 WHERE id = 2",
    "UPDATE audit_events SET id = 2 WHERE id = 3",
    "UPDATE audit_events SET id = 3 WHERE id = -2",
]


@pytest.mark.parametrize(
    ("statements", "first_bad"),
    [
        (["UPDATE audit_events SET target = 'silo default/other' WHERE id = 4"], 4),
        (["DELETE FROM audit_events WHERE id = 3"], 3),
        (_SWAP_EVENTS_2_AND_3, 2),
    ],
    ids=["edited", "deleted", "reordered"],
)
def test_audit_verify_names_first_bad_event(cli: Cli, statements: list[str], first_bad: int):
    cli.ok("silo", "create", "ops")
    assert cli.json("audit", "verify")["ok"] is True
    with sqlite3.connect(cli.home / "registry.db") as connection:
        for statement in statements:
            connection.execute(statement)
    code, _out, err = cli.run("audit", "verify")
    assert code == 1
    assert f"audit event {first_bad}" in err


def test_db_upgrade_is_idempotent(cli: Cli):
    first = cli.json("db", "upgrade")
    assert cli.json("db", "upgrade") == first


def test_missing_registry_reported(cli: Cli, tmp_path: Path):
    code, _out, err = cli.run("--registry", str(tmp_path / "nowhere"), "silo", "list")
    assert code == 1
    assert "seqr init" in err


def test_every_listing_has_json(cli: Cli):
    for command in (["tenant", "list"], ["user", "list"], ["token", "list"], ["group", "list"], ["silo", "list"],
                    ["adapter", "list"], ["audit", "list"]):
        assert isinstance(cli.json(*command), list)


@pytest.mark.parametrize(("text", "seconds"), [("30d", 30 * 86400), ("12h", 43200), ("15m", 900), ("2w", 14 * 86400)])
def test_parse_duration(text: str, seconds: int):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["0d", "30", "d", "-1d", "1y"])
def test_parse_duration_rejects(text: str):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_adapter_lifecycle_commands(cli: Cli):
    cli.ok("silo", "create", "ops")
    module = "model.layers.0.mlp.up_proj"
    with Registry.open(cli.home) as registry:
        admin = registry.authenticate(cli.token)
        registry.add_library(admin, "lib", base_model_fingerprint="m", target_modules=["up_proj"], rank=2, alpha=4.0,
                             seed=0, shared_a={module: torch.randn(2, 8)})
        factors = AdapterFactors({module: ModuleFactors.from_b(torch.randn(8, 2), mu=1.0, sigma=1.0)})
        first = registry.add_adapter_version(admin, "ops", "lib", factors).id
        second = registry.add_adapter_version(admin, "ops", "lib", factors).id

    assert cli.json("adapter", "activate", str(first))["status"] == "active"
    assert cli.json("adapter", "activate", str(second))["status"] == "active"
    statuses = {v["id"]: v["status"] for v in cli.json("adapter", "list")}
    assert statuses == {first: "retired", second: "active"}
    code, _out, err = cli.run("adapter", "destroy", str(second))
    assert code == 1
    assert "is active" in err
    assert cli.json("adapter", "destroy", str(first))["status"] == "destroyed"
    assert cli.json("adapter", "retire", str(second))["status"] == "retired"
