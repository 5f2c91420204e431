"""tools/draw_figure.py writes a readable framework figure (matplotlib only, no external images)."""

import os
import subprocess
import sys

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_draw_figure_writes_png(tmp_path):
    out = tmp_path / "sub" / "Figure1.png"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "draw_figure.py"), "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert result.returncode == 0, result.stderr
    assert "Glyph" not in result.stderr, result.stderr  # every character has a glyph in the font
    assert out.is_file()
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
        image.load()
    assert width >= 900 and 400 <= height <= width
