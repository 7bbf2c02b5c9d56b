"""PNG heatmaps of mean activation norms, tasks by adapters (the SEQR paper's Figure 3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from seqr.training.atomic import atomic_path


def write_heatmaps(heatmaps: Mapping[str, object], names: Sequence[str], directory: Path) -> list[Path]:
    """Write ``mean_raw_norm.png`` and ``mean_z_score.png`` into ``directory``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    paths = []
    titles = {"mean_raw_norm": "Mean ||B A x|| (raw)", "mean_z_score": "Mean z-scored norm"}
    for key, title in titles.items():
        values = heatmaps[key]
        figure, axes = pyplot.subplots(figsize=(1.0 + 0.7 * len(names), 0.8 + 0.6 * len(names)))
        image = axes.imshow(values, cmap="viridis")
        axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
        axes.set_yticks(range(len(names)), names)
        axes.set_xlabel("adapter")
        axes.set_ylabel("task of the prompt")
        axes.set_title(title)
        for row, line in enumerate(values):
            for column, value in enumerate(line):
                axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white")
        figure.colorbar(image, ax=axes)
        figure.tight_layout()
        path = Path(directory) / f"{key}.png"
        with atomic_path(path) as staging:
            figure.savefig(staging, format="png", dpi=120)
        pyplot.close(figure)
        paths.append(path)
    return paths
