"""Run every notebook here top to bottom and save it with its outputs (``make notebooks``).

Each runs as the tests run it (`tests/test_notebooks.py`): a fresh ``python3`` kernel, in a
temporary directory, with ``HANDRAIL_OFFLINE=1``, so the committed outputs are what a reader
gets offline: graphs drawn by Graphviz, no network.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).parent


def main() -> int:
    os.environ["HANDRAIL_OFFLINE"] = "1"
    names = sys.argv[1:]
    for path in sorted(HERE.glob("*.ipynb")):
        if names and path.stem not in names and path.name not in names:
            continue
        notebook = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
        with tempfile.TemporaryDirectory() as tmp:
            client = NotebookClient(
                notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": tmp}}
            )
            client.execute()
        for cell in notebook.cells:  # when each cell ran: noise in every diff
            cell.metadata.pop("execution", None)
        nbformat.write(notebook, path)  # type: ignore[no-untyped-call]
        print(f"ran {path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
