"""Figures for reports and panels, drawn with matplotlib's object API on an Agg canvas: no pyplot,
no global backend switch, no display needed, so plotting is safe in workers and on servers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

__all__ = ["agg_figure", "to_image"]


def agg_figure(
    rows: int = 1, cols: int = 1, size: tuple[float, float] = (6.0, 3.5), **figure_kwargs: Any
) -> tuple[Any, Any]:
    """A new figure and its (rows, cols) array of axes; `figure_kwargs` go to `Figure`
    (e.g. layout="constrained")."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, **figure_kwargs)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def to_image(pixels: Tensor) -> np.ndarray:
    """(3, H, W) pixels in [0, 1] as an (H, W, 3) array for `imshow`."""
    return pixels.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
