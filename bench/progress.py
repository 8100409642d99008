"""Progress bars and plots shared by the benchmarks (tqdm on stderr; matplotlib's Agg backend).

tqdm is what transformers and huggingface_hub draw their own bars with, so one library shows
every bar of a run; rich draws nicer panels but would be a second rendering stack in the same
terminal for no gain here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

__all__ = ["bar", "line_callback", "new_figure", "save_figure"]


def bar(total: int | None, desc: str, *, unit: str = "it") -> Any:
    """A tqdm progress bar on stderr."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


def line_callback(progress: Any) -> Callable[[str], None]:
    """A ``progress(line)`` callback that advances ``progress`` by one and shows the line."""

    def advance(line: str) -> None:
        progress.update()
        progress.set_postfix_str(line[-60:])

    return advance


def new_figure(rows: int, cols: int, *, width: float = 11, height: float = 3.4) -> Any:
    """``(figure, axes)`` of matplotlib on the file-only Agg backend; axes is 2-D."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(
        rows, cols, figsize=(width, height * rows), squeeze=False, constrained_layout=True
    )


def save_figure(figure: Any, path: Path, *, note: str | None = None) -> None:
    """Write ``figure`` as a PNG at ``path`` (with a footnote such as the machine) and close it."""
    import matplotlib.pyplot as plt

    if note:
        figure.suptitle(note, fontsize=8, color="grey")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
