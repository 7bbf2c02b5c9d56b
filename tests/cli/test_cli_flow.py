"""The whole administrator and user flow through the `seqr` command, on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seqr.cli.main import main

KITCHEN = [f"Stir the soup {i} times, then add salt." for i in range(6)]
LEDGER = [f"Invoice {i}: pay {i * 7} EUR by Friday." for i in range(6)]


class Cli:
    """Run `seqr` in-process with a registry and a token, returning (exit status, stdout)."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("SEQR_HOME", str(home))

    def as_token(self, token: str) -> Cli:
        self.monkeypatch.setenv("SEQR_TOKEN", token)
        return self

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        status = main(["--quiet", *args])
        captured = self.capsys.readouterr()
        return status, captured.out, captured.err

    def json(self, *args: str):
        status, out, err = self(*args, "--json")
        assert status == 0, f"seqr {' '.join(args)} failed: {err}"
        return json.loads(out)


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path


def test_cli_flow(tmp_path: Path, tiny_model_dir: Path, capsys, monkeypatch):
    home = tmp_path / "registry"
    cli = Cli(capsys, monkeypatch, home)

    admin_token = cli.json("init", "--dir", str(home))["token"]
    cli.as_token(admin_token)
    cli.json("user", "create", "alice")
    alice_token = cli.json("token", "create", "alice")["token"]
    cli.json("group", "create", "kitchen-staff")
    cli.json("group", "add", "kitchen-staff", "alice")
    for silo in ("kitchen", "ledger"):
        cli.json("silo", "create", silo)
    cli.json("grant", "kitchen", "--group", "kitchen-staff")
    cli.json("grant", "ledger", "--user", "alice")

    cli.json("library", "create", "main", "--base-model", str(tiny_model_dir), "--rank", "4")
    cli.json("data", "add", "kitchen", str(_jsonl(tmp_path / "kitchen.jsonl", KITCHEN)), "--meta", "source=crm-7")
    cli.json("data", "add", "kitchen", str(_jsonl(tmp_path / "kitchen2.jsonl", KITCHEN[:3])))
    cli.json("data", "add", "ledger", str(_jsonl(tmp_path / "ledger.jsonl", LEDGER)))
    for silo in ("kitchen", "ledger"):
        trained = cli.json("adapter", "train", silo, "--library", "main", "--epochs", "1")
        assert trained["status"] == "active"

    exported = tmp_path / "kitchen-lora"
    cli.json("adapter", "export", "kitchen", str(exported))
    assert (exported / "adapter_config.json").is_file()
    assert (exported / "adapter_model.safetensors").is_file()
    cli.json("silo", "create", "kitchen-copy")
    imported = cli.json("adapter", "import", "kitchen-copy", str(exported), "--library", "main")
    assert imported["status"] == "active"

    cli.as_token(alice_token)
    route = cli.json("route", "Stir the soup twice.")
    assert route["silos"] == ["kitchen", "ledger"]
    status, out, _ = cli("generate", "Stir", "--max-new-tokens", "3")
    assert status == 0

    cli.as_token(admin_token)
    cli.json("revoke", "ledger", "--user", "alice")
    cli.as_token(alice_token)
    route = cli.json("route", "Invoice 3: pay now.")
    assert route["silos"] == ["kitchen"]
    assert set(route["silo_shares"]) == {"kitchen"}

    cli.as_token(admin_token)
    old = cli.json("adapter", "show", "kitchen", "--manifest")
    removal = cli.json("data", "remove", "kitchen", "--where", "source=crm-7")
    assert len(removal["requests"]) == 1
    summary = cli.json("retention", "run")
    assert summary["silos_retrained"] == ["default/kitchen/main"]
    versions = cli.json("adapter", "show", "kitchen", "--manifest")
    active = [version for version in versions if version["status"] == "active"]
    assert len(active) == 1
    removed_id = removal["requests"][0]["document_id"]
    assert removed_id not in [document["id"] for document in active[0]["manifest"]["documents"]]
    assert old[0]["id"] in [version["id"] for version in versions if version["status"] == "destroyed"]
    assert cli.json("retention", "verify")
    assert cli.json("audit", "verify")["ok"] is True


def test_cli_rejects_bad_token(tmp_path: Path, capsys, monkeypatch):
    home = tmp_path / "registry"
    cli = Cli(capsys, monkeypatch, home)
    cli.json("init", "--dir", str(home))
    status, _, err = cli.as_token("seqr_not_a_real_token")("silo", "list")
    assert status == 1
    assert err.startswith("error: ")
    assert "Traceback" not in err


def test_cli_rejects_missing_registry(tmp_path: Path, capsys, monkeypatch):
    cli = Cli(capsys, monkeypatch, tmp_path / "nowhere")
    status, _, err = cli.as_token("seqr_x")("silo", "list")
    assert status == 1
    assert "seqr init" in err
    assert not (tmp_path / "nowhere").exists()


def test_cli_rejects_directory_that_is_not_a_registry(tmp_path: Path, capsys, monkeypatch):
    (tmp_path / "plain").mkdir()
    cli = Cli(capsys, monkeypatch, tmp_path / "plain")
    status, _, err = cli.as_token("seqr_x")("silo", "list")
    assert status == 1
    assert "registry.json" in err or "no registry" in err
    assert list((tmp_path / "plain").iterdir()) == []


def test_cli_usage_error_exit_status(capsys):
    assert main(["grant"]) == 2
