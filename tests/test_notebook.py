"""The example notebook runs as a user runs it (a Jupyter kernel, every cell in order) on a real photo, the bundled
model and the AHE64 training images, and shows what it says it shows."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parent.parent / "examples" / "explore.ipynb"


@pytest.mark.realdata
def test_the_example_notebook_runs_from_a_photo_to_a_class_image(ahe_root, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from PIL import Image

    from heritagelens.model.card import BUNDLED, model_card

    classes = model_card(BUNDLED)["classes"]
    photo = tmp_path / "my photo.jpg"  # a real photo, upscaled as a camera's would be
    src = sorted((ahe_root / "train" / "gargoyle").glob("*.jpg"))[0]
    Image.open(src).convert("RGB").resize((900, 1200), Image.Resampling.BICUBIC).save(photo, quality=90)
    monkeypatch.setenv("PHOTO", str(photo))
    monkeypatch.setenv("AHE_DATA", str(ahe_root))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    lines = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout").splitlines()
    top5 = [(ln.split()[0], float(ln.split()[1].rstrip("%"))) for ln in lines[:5]]
    shares = [p for _, p in top5]
    assert all(name in classes for name, _ in top5) and shares == sorted(shares, reverse=True)
    assert lines[5].startswith(f"{top5[0][0]} ({top5[0][1]:.1f}%); conv4_2 channel ")  # the maps explain the top class
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 3  # the maps, the top 9 and their projections, the class image
