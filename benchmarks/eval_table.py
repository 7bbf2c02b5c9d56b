"""Print the Markdown tables of a `seqr eval --json` report, as recorded in docs/benchmarks.md.

    python benchmarks/eval_table.py report.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _percent(value: object) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) else "-"


def main() -> None:
    report = json.loads(Path(sys.argv[1]).read_text())
    per_task = report["per_task"]
    tasks = list(per_task)
    labels = list(next(iter(per_task.values()))["accuracy"])

    print("| accuracy (%) | " + " | ".join(tasks) + " |")
    print("|---" * (len(tasks) + 1) + "|")
    for label in labels:
        print(f"| {label} | " + " | ".join(_percent(per_task[t]["accuracy"][label]) for t in tasks) + " |")

    print()
    print("| router | normalised score (%) | examples routed to own adapter (%) | prompt tokens × modules (%) |")
    print("|---|---|---|---|")
    for label in labels:
        if label == "oracle":
            continue
        shares = report["routing_accuracy"].get(label, {})
        print(
            f"| {label} | {_percent(report['normalized_score'].get(label))} | "
            f"{_percent(shares.get('examples'))} | {_percent(shares.get('tokens'))} |"
        )
    print()
    print(f"SEQR–NAIVE agreement: {_percent(report['seqr_naive_agreement'])}% of prompt tokens × modules.")
    print()
    print("| task | final-epoch loss | examples routed to (seqr-sequence) |")
    print("|---|---|---|")
    for task in tasks:
        routed = per_task[task]["routed_to"].get("seqr-sequence", {})
        spread = ", ".join(f"{name} {count}" for name, count in routed.items() if count)
        print(f"| {task} | {per_task[task]['training']['final_epoch_loss']:.3f} | {spread} |")


if __name__ == "__main__":
    main()
