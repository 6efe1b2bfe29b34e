"""The frontend's words (js/lib/vocabulary.js) equal the Python enums (goan_core/vocabulary.py).

Loads the ES module with node and compares its STATUS and FILE_KIND with Status and FileKind:
same member names, same values. Skips when node is not installed.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from goan_core.vocabulary import FileKind, Status

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "js" / "lib" / "vocabulary.js"


@pytest.fixture(scope="module")
def js_words():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = f"import({json.dumps(MODULE.as_uri())}).then((m) => console.log(JSON.stringify({{s: m.STATUS, k: m.FILE_KIND}})))"
    proc = subprocess.run([node, "--input-type=module", "-e", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_status_matches_python(js_words):
    assert js_words["s"] == {m.name: m.value for m in Status}


def test_file_kind_matches_python(js_words):
    assert js_words["k"] == {m.name: m.value for m in FileKind}
