"""Pictures of graphs, drawn offline with Graphviz's ``dot`` program (no network, no Python
bindings to build).

The web inbox shows the graph a request paused in; notebooks display it::

    from IPython.display import Image, SVG
    from handrail.drawing import graph_png, graph_svg

    SVG(graph_svg(graph))          # or Image(graph_png(graph))

Each node of ``graph.get_graph()`` is a box (start and end are ovals); a conditional edge is
dashed, a fixed one solid, and an edge's label (LangGraph's ``data``) is written on it. ``dot``
is looked up on ``PATH`` (Debian's ``graphviz`` package, Homebrew's ``graphviz``, ...).
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Protocol

from langchain_core.runnables.graph import Graph

from handrail.errors import DrawingError

__all__ = ["Drawable", "DrawingError", "graph_dot", "graph_png", "graph_svg"]

DOT_TIMEOUT_S = 30.0
"""How long ``dot`` may take to lay a graph out."""

_ENDS = frozenset({"__start__", "__end__"})


class Drawable(Protocol):
    """A compiled LangGraph graph (anything with ``get_graph()``)."""

    def get_graph(self) -> Graph: ...


def graph_dot(graph: Drawable | Graph) -> str:
    """The graph in Graphviz's DOT language (top to bottom)."""
    drawn = graph if isinstance(graph, Graph) else graph.get_graph()
    lines = [
        "digraph handrail {",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fillcolor="#eef2f7", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for key, node in drawn.nodes.items():
        if key in _ENDS:
            label = "start" if key == "__start__" else "end"
            end = 'shape=oval, fillcolor="#d9d9d9"'
            lines.append(f"  {_quote(key)} [label={_quote(label)}, {end}];")
        else:
            lines.append(f"  {_quote(key)} [label={_quote(node.name)}];")
    for edge in drawn.edges:
        attrs = ["style=dashed"] if edge.conditional else []
        if edge.data is not None:
            attrs.append(f"label={_quote(str(edge.data))}")
        shown = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"  {_quote(edge.source)} -> {_quote(edge.target)}{shown};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def graph_svg(graph: Drawable | Graph) -> str:
    """The graph drawn as an SVG document (text)."""
    return _dot(graph_dot(graph), "svg").decode("utf-8")


def graph_png(graph: Drawable | Graph) -> bytes:
    """The graph drawn as a PNG image."""
    return _dot(graph_dot(graph), "png")


def _dot(source: str, fmt: str) -> bytes:
    program = shutil.which("dot")
    if program is None:
        raise DrawingError(
            "Graphviz's `dot` program is not on PATH (install the graphviz package: "
            "`apt-get install graphviz` or `brew install graphviz`)"
        )
    try:
        done = subprocess.run(
            [program, f"-T{fmt}"],
            input=source.encode("utf-8"),
            capture_output=True,
            timeout=DOT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DrawingError(f"`dot` took longer than {DOT_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DrawingError(f"`dot` exited with {done.returncode}: {said[0] if said else '?'}")
    return done.stdout


def _quote(text: str) -> str:
    """``text`` as a DOT string: in double quotes, with backslashes and quotes escaped."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
