"""`handrail.drawing`: graphs drawn offline with Graphviz's ``dot``."""

from __future__ import annotations

from pathlib import Path

import pytest
from web_support import POLICY, Bank

from handrail import build_agent
from handrail.drawing import DrawingError, graph_dot, graph_png, graph_svg
from handrail.graph import HandrailGraph
from handrail.testing import ScriptedChatModel

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/dot").exists(), reason="needs Graphviz's dot (Debian: graphviz)"
)


@pytest.fixture
def graph() -> HandrailGraph:
    return build_agent(ScriptedChatModel([]), Bank().tools(), POLICY)


def test_dot_names_every_node_and_dashes_conditional_edges(graph: HandrailGraph) -> None:
    dot = graph_dot(graph)
    for node in ("agent", "policy_check", "approval", "execute", "classify_error"):
        assert f'"{node}" [label="{node}"]' in dot
    assert '"__start__" -> "agent";' in dot
    assert '"agent" -> "policy_check" [style=dashed];' in dot


def test_svg_and_png_are_drawn_offline(graph: HandrailGraph) -> None:
    svg = graph_svg(graph)
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "classify_error" in svg
    png = graph_png(graph)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_dot_on_the_path_is_a_clear_error(
    graph: HandrailGraph, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DrawingError) as caught:
        graph_svg(graph)
    assert "`dot` program is not on PATH" in caught.value.problem
