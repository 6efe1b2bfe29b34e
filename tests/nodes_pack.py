"""Loads the repository as the ComfyUI pack it is: a package whose nodes use relative imports.

ComfyUI imports the pack folder as a package under a path-like name; tests do the same under the
name `goan_pack`, so `nodes/` sees `..goan_core` exactly as it does inside ComfyUI. Use the pack's
own goan_core (`goan_pack.goan_core`) in these tests, so classes and exceptions are the same objects.
"""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACK = "goan_pack"


def load_pack(name: str = PACK):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
