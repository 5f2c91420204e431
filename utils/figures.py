"""The one way this repository draws: a matplotlib ``Figure`` on the Agg canvas (no pyplot, no global
backend switch, nothing left open), saved as PNG atomically."""

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.checkpoint import atomic_path


def new_figure(rows: int = 1, cols: int = 1, figsize: tuple[float, float] = (6.0, 4.0), **subplot_kw):
    """(figure, axes): a grid of ``rows`` x ``cols`` axes (always a 2-D array, ``squeeze=False``);
    ``subplot_kw`` goes to ``Figure.subplots`` (e.g. ``gridspec_kw``). ``rows=cols=0`` gives no axes."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **subplot_kw) if rows and cols else None
    return fig, axes


def save_figure(fig: Figure, path: str, dpi: int = 100) -> None:
    """Save ``fig`` as PNG, atomically (a temporary file in the same folder renamed over ``path``)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
