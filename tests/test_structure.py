"""The shape of the code: goan_core's parts, their import order, their size, and who may import what.

- no import cycle inside goan_core, between modules or between its parts (function-level imports count);
- no goan_core module over 400 lines, and each one opens with a docstring saying what it is for;
- goan_core never imports ComfyUI;
- nodes/ and bench/ use only the public names of goan_core's parts (each part's `__all__`);
- README's layout section names every part of goan_core, and everything it names exists.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "goan_core"
MAX_LINES = 400
COMFY_MODULES = {"comfy", "comfy_execution", "folder_paths", "server", "nodes", "latent_preview", "execution"}
TOP_MODULES = {"params", "errors", "vocabulary"}  # top-level goan_core modules anyone may import whole


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def core_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) for every import statement anywhere in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append((target, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


def module_graph() -> dict[str, set[str]]:
    """goan_core module -> the goan_core modules it imports (a `from pkg import mod` names the module)."""
    modules = core_modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for target, names in imports_of(path):
            if target not in modules:
                continue
            submodules = {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}
            graph[name] |= submodules or {target}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def part_of(module: str) -> str:
    """goan_core.sampling.engine -> goan_core.sampling; top-level modules are parts of their own."""
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_modules():
    assert find_cycle(module_graph()) is None


def test_no_import_cycle_between_parts():
    parts: dict[str, set[str]] = {}
    for module, targets in module_graph().items():
        parts.setdefault(part_of(module), set()).update(
            part_of(t) for t in targets if part_of(t) != part_of(module) and part_of(t) != "goan_core")
    assert find_cycle(parts) is None


def test_the_graph_sees_function_level_imports():
    graph = module_graph()
    assert "goan_core.cli.commands" in graph["goan_core.cli.main"]  # imported inside main()


@pytest.mark.parametrize("name", sorted(core_modules()))
def test_core_modules_are_small_and_say_what_they_are_for(name):
    path = core_modules()[name]
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_LINES, f"{path} has {len(text.splitlines())} lines"
    assert ast.get_docstring(ast.parse(text)) or path.name == "__main__.py", f"{path} has no docstring"
    if path.name != "__main__.py":
        assert text.startswith('"""'), f"{path}: the first line must be the docstring"


def test_core_never_imports_comfyui():
    for name, path in core_modules().items():
        for target, _ in imports_of(path):
            assert target.split(".")[0] not in COMFY_MODULES, f"{name} imports {target}"


def public_names() -> dict[str, set[str]]:
    """goan_core part -> the names its `__all__` lists."""
    names = {}
    for init in CORE.glob("*/__init__.py"):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        listed = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                      and any(getattr(t, "id", None) == "__all__" for t in node.targets))
        names[f"goan_core.{init.parent.name}"] = set(ast.literal_eval(listed))
    return names


@pytest.mark.parametrize("folder", ["nodes", "bench"])
def test_front_ends_use_only_public_names(folder):
    public = public_names()
    for path in sorted((ROOT / folder).glob("*.py")):
        for target, names in imports_of(path):
            if target is None or "goan_core" not in target.split("."):
                continue
            core = "goan_core" + target.split("goan_core", 1)[1]  # nodes import it as ..goan_core
            where = f"{path.relative_to(ROOT)} imports {core}"
            if core.removeprefix("goan_core.") in TOP_MODULES:
                continue
            assert core in public, f"{where}: import a part of goan_core ({', '.join(sorted(public))}), not a module"
            hidden = sorted(set(names) - public[core])
            assert not hidden, f"{where}: {hidden} are not in its __all__"


def test_every_public_name_exists():
    import importlib

    for part, names in public_names().items():
        module = importlib.import_module(part)
        assert not [n for n in names if not hasattr(module, n)], part


def test_readme_layout_matches_the_tree():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Layout\n.*?```text\n(.*?)```", readme, re.S)
    assert block, "README.md needs a '## Layout' section with a ```text tree"
    named = set()
    for line in block[1].splitlines():  # "  sampling/   what it holds" lines below goan_core/
        entry = re.match(r" {2}(\S+(?: \S+)*?) {2,}", line)
        if entry:
            named.update(f"goan_core/{name}" for name in entry[1].split())
    for entry in named:
        assert (ROOT / entry.rstrip("/")).exists(), f"README names {entry}, which does not exist"
    parts = {f"goan_core/{p.name}/" for p in CORE.iterdir() if (p / "__init__.py").is_file()}
    assert parts <= named, f"README's layout lacks {sorted(parts - named)}"
