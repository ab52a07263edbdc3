"""The Python API: the README's example runs as printed (paths, layer and class swapped for the tiny model's)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import heritagelens

README = Path(__file__).parent.parent / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## From Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(trained, tmp_path):
    root, run = trained
    code = readme_example()
    photo = next((root / "train" / "dome").iterdir())
    mine = f'RUN, DATA = {str(run)!r}, {str(root)!r}\nLAYER, CLASS = "conv2_1", "dome"\nPHOTO = {str(photo)!r}\n'
    code, swaps = re.subn(r"^RUN, DATA = .*\nLAYER, CLASS = .*\nPHOTO = .*\n", mine, code, flags=re.M)
    assert swaps == 1
    code += 'assert why.maps["grad_cam"].shape == (64, 64) and why.maps["deconvnet"].shape == (3, 64, 64)\n'
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    first, one, shape = p.stdout.strip().splitlines()
    assert first.startswith("['") and any(c in first for c in ("arch", "bell", "dome"))
    name, prob = one.split()
    assert name in ("arch", "bell", "dome") and 1 / 3 <= float(prob) <= 1
    assert shape == "torch.Size([4, 3, 64, 64])"


def test_every_public_name_is_documented_and_listed_in_the_readme():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## From Python") : text.index("```python")]
    for name in heritagelens.__all__:
        if name == "__version__":
            continue
        value = getattr(heritagelens, name)
        assert (value.__doc__ or "").strip(), name
        assert f"`{name}`" in section, name


def test_an_unknown_name_is_an_attribute_error():
    try:
        heritagelens.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("no error")
