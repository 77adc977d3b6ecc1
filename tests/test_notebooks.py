"""The notebooks run top to bottom, offline, and each ends by checking its own outcome.

Every ``notebooks/*.ipynb`` is executed with nbclient in a fresh ``python3`` kernel, from a
temporary directory, with ``HANDRAIL_OFFLINE=1`` (no network: graphs are drawn by Graphviz). A
failing cell fails its notebook's test with that cell's error. Committed notebooks carry the
outputs of a run (`make notebooks`), so a reader sees them on GitHub. Last,
`handrail.notebook.show_graph`: an SVG from Graphviz, and its fallbacks without ``dot``.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from langchain_core.messages import AIMessage
from langchain_core.runnables.graph import Graph
from langchain_core.tools import tool
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from handrail import Policy, build_agent
from handrail.drawing import graph_svg
from handrail.graph import HandrailGraph
from handrail.notebook import OFFLINE_ENV, show_graph
from handrail.testing import ScriptedChatModel

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 120
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _read(path: Path, as_version: object) -> Any:
    return nbformat.read(path, as_version=as_version)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_offline_top_to_bottom(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(OFFLINE_ENV, "1")  # the kernel inherits this process's environment
    notebook = _read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        failed = next(
            (
                n
                for n, cell in enumerate(notebook.cells)
                if any(o.get("output_type") == "error" for o in cell.get("outputs", []))
            ),
            None,
        )
        pytest.fail(f"{path.name}, cell {failed}: {_ANSI.sub('', str(exc))}", pytrace=False)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_with_its_outputs(path: Path) -> None:
    notebook = _read(path, as_version=nbformat.NO_CONVERT)
    assert notebook.nbformat == 4
    nbformat.validate(notebook)
    code = [(n, cell) for n, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    counts = [cell.execution_count for _, cell in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: run it top to bottom"
    failed = [n for n, cell in code if any(o.get("output_type") == "error" for o in cell.outputs)]
    assert not failed, f"{path.name}: cells {failed} were committed with an error"
    pictures = [n for n, cell in code for o in cell.outputs if "image/svg+xml" in o.get("data", {})]
    assert pictures, f"{path.name}: no graph drawn as a picture"


# -- show_graph -----------------------------------------------------------------------------------


@pytest.fixture
def graph() -> HandrailGraph:
    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        return q

    policy = Policy.from_data({"rules": [{"id": "r", "tools": ["lookup"], "effect": "allow"}]})
    return build_agent(ScriptedChatModel([AIMessage("ok")]), [lookup], policy)


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stands in for mermaid.ink: records each PNG asked for and answers with PNG bytes."""
    asked: list[str] = []

    def draw_mermaid_png(self: Graph, *args: object, **kwargs: object) -> bytes:
        asked.append("png")
        return b"\x89PNG\r\n\x1a\n"

    monkeypatch.setattr(Graph, "draw_mermaid_png", draw_mermaid_png)
    return asked


@pytest.fixture
def no_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH on which Graphviz's ``dot`` cannot be found."""
    monkeypatch.setenv("PATH", str(tmp_path))


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_draws_an_svg_with_graphviz_offline(
    graph: HandrailGraph,
    renders: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(OFFLINE_ENV, "1")
    assert show_graph(graph) == "svg"
    assert "SVG" in capsys.readouterr().out  # IPython's display, outside a notebook
    svg = graph_svg(graph)
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert all(f">{node}</text>" in svg for node in ("agent", "policy_check", "execute"))
    monkeypatch.delenv(OFFLINE_ENV)
    assert show_graph(graph, png=True) == "svg"  # dot first, even where the network is allowed
    assert renders == []


@pytest.mark.usefixtures("no_dot")
def test_offline_draws_ascii_without_the_network(
    graph: HandrailGraph,
    renders: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(OFFLINE_ENV, "1")
    assert show_graph(graph) == "ascii"
    out = capsys.readouterr().out
    assert all(f"| {node} |" in out for node in ("agent", "policy_check", "approval", "execute"))
    assert "(not drawn: " in out and "execute → execute" in out  # grandalf cannot route these
    monkeypatch.delenv(OFFLINE_ENV)
    assert show_graph(graph, png=False) == "ascii"
    assert renders == []


@pytest.mark.usefixtures("no_dot")
def test_online_draws_a_png(
    graph: HandrailGraph,
    renders: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    assert show_graph(graph) == "png"
    assert "Image" in capsys.readouterr().out  # IPython's display, outside a notebook
    monkeypatch.setenv(OFFLINE_ENV, "1")
    assert show_graph(graph, png=True) == "png"
    assert renders == ["png", "png"]


@pytest.mark.usefixtures("no_dot")
def test_a_failed_png_falls_back_to_ascii(
    graph: HandrailGraph, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unreachable(self: Graph, *args: object, **kwargs: object) -> bytes:
        raise ValueError("Failed to reach https://mermaid.ink/ API while trying to render")

    monkeypatch.setattr(Graph, "draw_mermaid_png", unreachable)
    assert show_graph(graph, png=True) == "ascii"
    assert "| policy_check |" in capsys.readouterr().out


@pytest.mark.usefixtures("no_dot")
def test_without_grandalf_prints_the_mermaid_source(
    graph: HandrailGraph, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m == "grandalf" or m.startswith("grandalf.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "grandalf", None)  # `import grandalf…` raises ImportError
    assert show_graph(graph, png=False) == "mermaid"
    out = capsys.readouterr().out
    assert "graph TD;" in out and "execute -.-> execute;" in out
