"""The declared Python range (pyproject: >= 3.10), proved statically: these machines only run 3.11.

- vermin finds no syntax or standard-library use newer than 3.10 in any of goan's Python files;
- it cannot see methods called on a variable (`error.add_note(...)` on 3.10 is an AttributeError that
  replaced every exception of the sampling loop), so such 3.11+ methods are looked for by name;
- nothing calls what 3.12/3.13 deprecate or removed (`datetime.utcnow`, ...);
- `errors.add_note` keeps the note on an interpreter without `BaseException.add_note`.
"""

from __future__ import annotations

import ast
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from goan_core.errors import add_note, notes_of

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["goan_core", "nodes", "bench", "tests", "__init__.py"]
FLOOR = "3.10"
# 3.11+ methods vermin only sees when called on a literal or a class name, never through a variable
NEWER_METHODS = {"add_note": "goan_core.errors.add_note"}
# deprecated in 3.12 (and slated for removal) or removed in 3.12/3.13
DEPRECATED_CALLS = {"utcnow", "utcfromtimestamp", "get_event_loop_policy", "set_event_loop_policy",
                    "getdefaultlocale", "assertEquals", "assertNotEquals", "assertRegexpMatches",
                    "assertDictContainsSubset", "find_module", "load_module"}
REMOVED_MODULES = {"imp", "distutils", "asynchat", "asyncore", "smtpd", "cgi", "cgitb", "crypt", "pipes",
                   "telnetlib", "nntplib", "audioop", "aifc", "chunk", "imghdr", "mailcap", "msilib", "nis",
                   "ossaudiodev", "sndhdr", "spwd", "sunau", "uu", "xdrlib", "lib2to3", "pkg_resources"}


def python_files() -> list[Path]:
    found = []
    for name in CHECKED:
        path = ROOT / name
        found.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return [p for p in found if "node_modules" not in p.parts]


def test_the_declared_floor_is_the_one_checked():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.findall(r'^requires-python = "(.*)"$', text, re.MULTILINE) == [f">={FLOOR}"]


def vermin(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run vermin (a CI requirement: missing, the check fails rather than skip)."""
    try:
        import vermin  # noqa: F401
    except ImportError:
        pytest.fail("vermin is missing: pip install -r requirements-dev.txt")
    return subprocess.run([sys.executable, "-c", "import sys; from vermin import main; sys.exit(main())", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_vermin_finds_nothing_newer_than_the_floor():
    command = ["--no-config-file", f"--target={FLOOR}-", "--violations", "--no-tips", "--no-make-paths-absolute",
               "--exclude", "long",  # torch's Tensor.long(), not Python 2's long
               *CHECKED]
    done = vermin(*command)
    report = done.stdout + done.stderr
    assert done.returncode == 0 and "requires" not in report, f"code newer than Python {FLOOR}:\n{report}"


def test_vermin_would_catch_a_newer_api(tmp_path):
    """The check above can fail: vermin flags 3.11 modules and members in a file like ours."""
    probe = tmp_path / "probe.py"
    probe.write_text("import tomllib\nBaseException('x').add_note('y')\n", encoding="utf-8")
    done = vermin("--no-config-file", f"--target={FLOOR}-", "--violations", "--no-tips", str(probe), cwd=tmp_path)
    assert done.returncode != 0 and "tomllib" in done.stdout and "add_note" in done.stdout


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node.func.attr, node.lineno


def test_no_newer_methods_called_through_variables():
    found = []
    for path in python_files():
        if path.name == Path(__file__).name:
            continue
        for name, line in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            if name in NEWER_METHODS and not _guarded(path, line):
                found.append(f"{path.relative_to(ROOT)}:{line}: .{name}() needs Python 3.11; "
                             f"use {NEWER_METHODS[name]}")
    assert not found, "\n".join(found)


def _guarded(path: Path, line: int) -> bool:
    """The one place allowed to call it: errors.add_note, which looks it up with getattr first."""
    return path == ROOT / "goan_core" / "errors.py"


def test_nothing_deprecated_in_3_12_or_removed_in_3_13():
    found = []
    for path in python_files():
        if path.name == Path(__file__).name:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [f"{path.relative_to(ROOT)}:{line}: .{name}()" for name, line in _calls(tree)
                  if name in DEPRECATED_CALLS]
        for node in ast.walk(tree):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: import {m}" for m in modules
                      if m.split(".")[0] in REMOVED_MODULES]
    assert not found, "\n".join(found)


class Python310Error(RuntimeError):
    """An exception as Python 3.10 makes them: no `add_note`."""

    def __getattribute__(self, name):
        if name == "add_note":
            raise AttributeError(f"{type(self).__name__!r} object has no attribute 'add_note'")
        return super().__getattribute__(name)


def test_add_note_without_add_note_keeps_the_note_and_logs_it(caplog):
    error = Python310Error("cancelled")
    with pytest.raises(AttributeError):
        error.add_note("x")  # the simulation holds
    with caplog.at_level(logging.WARNING, logger="goan"):
        add_note(error, "goan: progress saved to f.goan_resume")
        add_note(error, "second")
    assert notes_of(error) == ["goan: progress saved to f.goan_resume", "second"]
    assert "progress saved to f.goan_resume" in caplog.text


def test_add_note_uses_the_native_method_where_there_is_one():
    error = ValueError("x")
    add_note(error, "a note")
    assert error.__notes__ == ["a note"] and notes_of(ValueError()) == []


# -- dependency floors: `make test` runs the whole suite again on the lowest versions allowed -----------

def _pyproject_floors() -> dict[str, str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = {}
    for match in re.finditer(r'^\s*"([A-Za-z0-9_.-]+)>=([0-9][0-9A-Za-z.]*)",', text, flags=re.MULTILINE):
        found[match[1]] = match[2]
    return found


def test_pyproject_declares_the_floors_requirements_txt_tests():
    from dependency_floors import REQUIREMENTS, floors

    declared = floors(REQUIREMENTS.read_text(encoding="utf-8"))
    assert declared and declared == _pyproject_floors()
    assert {"diffusers", "transformers"} <= set(declared)


def test_make_test_runs_the_suite_on_the_floors():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "-m pytest" in recipe and "$(FLOORS_PY) -m pytest" in recipe
    assert "dependency_floors.py" in makefile


def test_requirements_lines_carry_no_inline_comments():
    """ComfyUI's managers hand each line to pip on its own; keep comments on lines of their own."""
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        assert line.startswith("#") or "#" not in line, line


def test_installed_versions_meet_the_floors():
    from importlib.metadata import version

    from dependency_floors import REQUIREMENTS, floors

    def numbers(text):
        return tuple(int(part) for part in re.findall(r"\d+", text)[:3])

    for name, lowest in floors(REQUIREMENTS.read_text(encoding="utf-8")).items():
        assert numbers(version(name)) >= numbers(lowest), f"{name} {version(name)} is older than {lowest}"
