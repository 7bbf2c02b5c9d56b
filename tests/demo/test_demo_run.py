from pathlib import Path

import pytest

from seqr.demo.run import DemoSettings, run_demo
from seqr.errors import ConflictError


def _silo_folders(root: Path) -> Path:
    texts = {
        "kitchen": "Stir the soup slowly and add a pinch of salt before serving.\n",
        "ledger": "Invoice 42 is due at the end of the month; pay the balance in EUR.\n",
    }
    for silo, line in texts.items():
        (root / silo).mkdir(parents=True)
        for number in range(12):
            (root / silo / f"{number}.txt").write_text(line * 2)
    return root


def test_demo_runs_end_to_end_on_tiny_model(tmp_path: Path, tiny_model_dir: Path):
    lines: list[str] = []
    settings = DemoSettings(
        directory=tmp_path / "demo", data_dir=_silo_folders(tmp_path / "data"), base_model=str(tiny_model_dir),
        train_documents=8, test_documents=3, epochs=1, rank=4, max_length=64, chunk_chars=150, min_chars=40,
    )
    report = run_demo(settings, echo=lines.append, progress=False)

    assert report.silos == ["kitchen", "ledger"]
    assert set(report.accuracy) == {"alice", "bob", "carol"}
    assert report.outside_grants == {"alice": 0, "bob": 0, "carol": 0}
    assert report.retention["silos_retrained"] == ["acme/kitchen/demo"]
    assert len(report.retention["documents_removed"]) == 4
    assert len(report.retention["versions_destroyed"]) == 1
    assert report.audit_events > 0
    assert any("audit chain verified" in line for line in lines)


def test_demo_refuses_foreign_directory(tmp_path: Path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(ConflictError, match="not a demo registry"):
        run_demo(DemoSettings(directory=tmp_path / "precious"), echo=lambda line: None)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"
