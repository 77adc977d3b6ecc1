"""Notebook helpers: `show_graph` draws a graph as a picture, offline.

    from handrail.notebook import show_graph
    show_graph(graph)            # an SVG drawn by Graphviz's ``dot``, no network

Without ``dot``: a PNG from mermaid.ink when the network may be used, else ASCII art, else the
mermaid source. Set ``HANDRAIL_OFFLINE=1`` (the notebook tests do) to keep off the network.
"""

from __future__ import annotations

import os
from typing import Literal, Protocol

from langchain_core.runnables.graph import Graph

from handrail.drawing import DrawingError, graph_svg

__all__ = ["OFFLINE_ENV", "Drawn", "show_graph"]

OFFLINE_ENV = "HANDRAIL_OFFLINE"
"""Set this environment variable to ``1`` to keep `show_graph` off the network."""

Drawn = Literal["svg", "png", "ascii", "mermaid"]
"""What `show_graph` drew."""


class _HasGraph(Protocol):
    def get_graph(self) -> Graph: ...


def show_graph(graph: _HasGraph, *, png: bool | None = None) -> Drawn:
    """Show ``graph``'s nodes and edges in a notebook (or on stdout); returns what it drew.

    ``"svg"``: a picture drawn offline by Graphviz's ``dot`` (`handrail.drawing`), displayed
    with ``IPython.display.SVG``. Always tried first.

    ``"png"``: without ``dot``, a picture rendered by mermaid.ink (over the network), displayed
    with ``IPython.display.Image``. Tried when ``png`` is True, or when it is None (the default)
    and the environment variable ``HANDRAIL_OFFLINE`` is not ``1``. ``png=False`` never tries.

    ``"ascii"``: otherwise, or when the PNG fails for any reason, ASCII art (needs ``grandalf``,
    in the ``notebooks`` extra), printed. Grandalf cannot route an edge from a node to itself,
    so self-loops (``execute → execute`` in Handrail's graphs) are left out of the drawing and
    named below it.

    ``"mermaid"``: when that fails too, the graph's mermaid source, printed; paste it into any
    mermaid renderer.
    """
    drawable = graph.get_graph()
    try:
        from IPython.display import SVG, display

        svg = graph_svg(drawable)
    except (ImportError, DrawingError):  # no IPython, or no `dot` on PATH: the fallbacks
        pass
    else:
        display(SVG(svg))  # type: ignore[no-untyped-call]
        return "svg"
    try_png = png if png is not None else os.environ.get(OFFLINE_ENV) != "1"
    if try_png:
        try:
            from IPython.display import Image, display

            display(Image(drawable.draw_mermaid_png()))  # type: ignore[no-untyped-call]
        except Exception:  # offline, mermaid.ink down, no IPython: fall back to text
            pass
        else:
            return "png"
    loops = sorted({e.source for e in drawable.edges if e.source == e.target})
    try:
        plain = Graph(
            nodes=dict(drawable.nodes),
            edges=[e for e in drawable.edges if e.source != e.target],
        )
        art = plain.draw_ascii()
    except Exception:  # no grandalf, or a layout it cannot draw
        print(drawable.draw_mermaid())
        return "mermaid"
    print(art)
    if loops:
        print(f"(not drawn: {', '.join(f'{n} → {n}' for n in loops)})")
    return "ascii"
