"""``seqr bench routing`` on the tiny setting: the report's fields, not its speed."""

from __future__ import annotations

import json

import pytest

from seqr.cli.main import main
from seqr.routing.benchmark import run_routing_benchmark

TINY = ["bench", "routing", "--setting", "tiny", "--layer-setting", "tiny", "--repeats", "1"]


def test_json_lists_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    status = main([*TINY, "--layer-adapters", "3", "--json"])

    assert status == 0
    report = json.loads(capsys.readouterr().out)
    tiny = report["selection"]["tiny"]
    assert set(tiny["methods"]) == {"seqr", "arrow", "spectr", "lag", "naive"}
    for timing in tiny["methods"].values():
        assert timing["us_per_token"] > 0
        assert timing["flops_per_token"] > 0
    assert tiny["methods"]["seqr"]["ratio_to_seqr"] == 1.0
    assert tiny["floor_us_per_token"] > 0
    assert tiny["matmul_gflops"] > 0
    implementations = {row["implementation"] for row in report["layer"]["results"]}
    assert implementations == {"seqr.routing seqr", "seqr.routing arrow", "peft arrow"}


def test_text_report_has_floor_line(capsys: pytest.CaptureFixture[str]) -> None:
    status = main([*TINY, "--no-layer"])

    assert status == 0
    output = capsys.readouterr().out
    assert "floor: SEQR's FLOPs at the dense float32 rate" in output
    assert "peft arrow" not in output


def test_flop_counts_follow_formulas() -> None:
    report = run_routing_benchmark(["tiny"], repeats=1, layer_adapter_counts=())
    methods = report.selection[0].methods
    n_adapters, n, m, r, k = 50, 64, 64, 4, 5

    pairs = r * (r + 1) // 2
    assert methods["seqr"].flops_per_token == 2 * r * n + pairs + 2 * n_adapters * pairs + 3 * n_adapters
    assert methods["arrow"].flops_per_token == 2 * n_adapters * n + n_adapters
    assert methods["spectr"].flops_per_token == 2 * n_adapters * r * n + 2 * n_adapters * r + 3 * n_adapters
    assert methods["lag"].flops_per_token == 2 * n_adapters * n + n_adapters + 2 * k * r * n + 2 * k * r + 3 * k
    assert methods["naive"].flops_per_token == 2 * r * n + 2 * n_adapters * m * r + 2 * n_adapters * m + 3 * n_adapters


def test_unknown_setting_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["bench", "routing", "--setting", "huge", "--no-layer"])

    assert status == 1
    assert "unknown benchmark setting 'huge'" in capsys.readouterr().err
