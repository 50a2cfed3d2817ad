"""Writes the notebooks from the cell sources in notebooks/sources/*.py and executes them in
place (outputs and plots are committed so they render on a repository page).

    python notebooks/build_notebooks.py                 # all
    python notebooks/build_notebooks.py 01 03           # those whose name starts with 01 / 03

A source file is plain Python split into cells by lines `# %% [markdown]` (a Markdown cell whose
lines are comments `# ...`) and `# %%` (a code cell), the "percent" format editors understand.
The kernel is `python3` run by this interpreter (jupyter_client maps it to sys.executable), and
the repository root is put on PYTHONPATH so this checkout's convops is the one imported.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOURCES = HERE / "sources"


def cells_from_source(text: str) -> list:
    cells, kind, lines = [], None, []

    def flush():
        body = "\n".join(lines).strip("\n")
        if kind is None or not body:
            return
        if kind == "markdown":
            body = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(body))
        else:
            cells.append(nbformat.v4.new_code_cell(body))

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    return cells


def build(source: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells_from_source(source.read_text())
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 600) -> nbformat.NotebookNode:
    """Runs every cell in a fresh python3 kernel started from the notebooks folder."""
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(HERE)}})
    client.execute()
    return nb


def main(argv=None) -> int:
    prefixes = (argv if argv is not None else sys.argv[1:]) or [""]
    for source in sorted(SOURCES.glob("*.py")):
        if not any(source.stem.startswith(p) for p in prefixes):
            continue
        target = HERE / f"{source.stem}.ipynb"
        print(f"building {target.name} ...", flush=True)
        nb = execute(build(source))
        nbformat.write(nb, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
