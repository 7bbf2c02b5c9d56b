"""Plain-text summary of an evaluation report, for the terminal."""

from __future__ import annotations

from collections.abc import Mapping


def _percent(value: object) -> str:
    return f"{100 * value:5.1f}" if isinstance(value, (int, float)) else "    -"


def format_report(report: Mapping[str, object]) -> str:
    """Return per-task accuracies, normalised scores and routing accuracy as aligned text tables."""
    per_task: Mapping[str, Mapping[str, object]] = report["per_task"]  # type: ignore[assignment]
    tasks = list(per_task)
    labels = list(next(iter(per_task.values()))["accuracy"])  # type: ignore[index]
    width = max(len(label) for label in labels) + 2
    lines = ["Task accuracy (%), held-out examples", " " * width + "".join(f"{task[:9]:>10}" for task in tasks)]
    for label in labels:
        cells = "".join(f"{_percent(per_task[task]['accuracy'][label]):>10}" for task in tasks)  # type: ignore[index]
        lines.append(f"{label:<{width}}{cells}")

    lines += ["", f"{'router':<{width}}{'normalised':>11}{'routed ex.':>11}{'routed tok.':>12}"]
    routing: Mapping[str, Mapping[str, object]] = report["routing_accuracy"]  # type: ignore[assignment]
    normalized: Mapping[str, object] = report["normalized_score"]  # type: ignore[assignment]
    for label in labels:
        if label == "oracle":
            continue
        shares = routing.get(label, {})
        lines.append(
            f"{label:<{width}}{_percent(normalized.get(label)):>11}"
            f"{_percent(shares.get('examples')):>11}{_percent(shares.get('tokens')):>12}"
        )
    lines += ["", f"SEQR agrees with NAIVE on {_percent(report['seqr_naive_agreement']).strip()}% of prompt tokens"]
    return "\n".join(lines)
