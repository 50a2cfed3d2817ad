"""The notebooks execute from top to bottom in a fresh kernel of this interpreter (nbclient,
kernel `python3`, this checkout on PYTHONPATH), and the committed copies carry their outputs
and plots so they render on a repository page."""
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbformat (requirements.txt)")
pytest.importorskip("nbclient", reason="notebook tests need nbclient (requirements.txt)")
pytest.importorskip("ipykernel", reason="notebook tests need ipykernel (requirements.txt)")

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
sys.path.insert(0, str(NOTEBOOKS_DIR))
import build_notebooks  # noqa: E402

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
SOURCES = sorted((NOTEBOOKS_DIR / "sources").glob("*.py"))


def test_every_source_has_its_notebook():
    assert SOURCES, "no notebook sources"
    assert {p.stem for p in SOURCES} == {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_outputs_and_plots(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "notebook committed unexecuted"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot in the committed notebook"
    # the committed cells are the ones the source generates (regenerate with build_notebooks.py)
    expected = build_notebooks.build(NOTEBOOKS_DIR / "sources" / f"{path.stem}.py")
    assert [c.source for c in nb.cells] == [c.source for c in expected.cells]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path):
    nb = build_notebooks.build(NOTEBOOKS_DIR / "sources" / f"{path.stem}.py")
    # the kernel must be this interpreter's environment (where convops' requirements are)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    build_notebooks.execute(nb, timeout=300)  # raises CellExecutionError on any failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert code[-1].outputs[0]["text"].strip() == sys.prefix
