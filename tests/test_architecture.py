"""The dependency rule of docs/architecture.md, checked on the source: shared parts never
import a family, and the package has no import cycles."""

import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, "t2i")
FAMILIES = ("imagen", "vqgan", "parti", "clip", "classifier")
# The application layer (commands) may import anything; everything else not in a
# family folder is shared.
APPLICATION = ("t2i.cli",)


def _modules():
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                yield module.removesuffix(".__init__"), path


def _imports(path, top_level_only=False):
    """The t2i modules a file imports (every import, or only those run at import time)."""
    tree = ast.parse(open(path).read())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("t2i"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("t2i"))
    return found


def _family(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FAMILIES else None


def test_shared_parts_import_no_family():
    offenders = []
    for module, path in _modules():
        if _family(module) or module in APPLICATION:
            continue
        for imported in _imports(path):
            if _family(imported):
                offenders.append(f"{module} imports {imported}")
    assert not offenders, offenders


def test_no_import_cycles_at_import_time():
    modules = dict(_modules())
    graph = {
        module: {m for m in _imports(path, top_level_only=True) if m in modules and m != module}
        for module, path in modules.items()
    }
    state = {}

    def visit(module, stack):
        state[module] = "open"
        for nxt in graph[module]:
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_every_registered_family_resolves():
    from t2i.families import FAMILIES as REGISTRY
    from t2i.families import resolve

    for name, family in REGISTRY.items():
        assert _family(family.task.split(":")[0]), name  # a family's task lives in its package
        assert callable(resolve(family.task))
        if family.options:
            options = resolve(family.options)
            assert all(isinstance(kind, type) and help_text for kind, help_text in options.values())
