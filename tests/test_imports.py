"""The package's structure: its import graph has no cycle, and the rule that picks the model predicting a net's
latency (the learned correction, else the calibration, else the plain table sum) is written once, in
`tvm_nas/profile/model.py`.

Both read the source with `ast` only: nothing is imported, so they run in a fraction of a second.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PKG = Path(__file__).resolve().parent.parent / "tvm_nas"
MODEL = "tvm_nas.profile.model"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """`name` or the nearest package above it that is a module of ours (``a.b.c`` -> ``a.b`` when c is a name)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> nx.DiGraph:
    """Module -> the modules of the package it imports, at the top level or inside a function alike (an import
    inside a function only postpones a cycle to the call). ``from . import x`` counts as importing ``pkg.x`` when x
    is a module, else ``pkg``."""
    known = _modules()
    g = nx.DiGraph()
    for mod, path in known.items():
        g.add_node(mod)
        is_pkg = path.name == "__init__.py"
        here = mod if is_pkg else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for t in targets:
                dep = _resolve(t, known) if t.startswith("tvm_nas") else None
                if dep and dep != mod:
                    g.add_edge(mod, dep)
    return g


def test_the_import_graph_has_no_cycle():
    g = import_graph()
    # the graph is the package's: inside-function imports and relative ones are seen
    assert len(g) > 30 and g.has_edge("tvm_nas.deploy.validate", "tvm_nas.backend.measure")
    assert g.has_edge("tvm_nas.profile.profiler", "tvm_nas.profile.table")
    cycles = list(nx.simple_cycles(g))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join([*c, c[0]]) for c in cycles[:5])


# -- the prediction rule, once -----------------------------------------------------------------------------------
# A choice between the fitted models names both: an attribute or a name, or a field of a file or a row.
CORRECTION = {"correction", "corrected_us"}
CALIBRATION = {"calibration", "calibrated_us"}
CHOICES = (ast.If, ast.IfExp, ast.BoolOp, ast.Compare, ast.Tuple, ast.List, ast.Dict, ast.Set, ast.comprehension,
           ast.Match)


def _words(node: ast.AST) -> set[str]:
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            out.add(n.value)
    return out


def _chain(node: ast.If | ast.IfExp) -> set[str]:
    """The words of an ``if``'s test and of every ``elif`` (or chained ``... if ... else``) after it."""
    out = set()
    while True:
        out |= _words(node.test)
        nxt = node.orelse[0] if isinstance(node, ast.If) and len(node.orelse) == 1 else node.orelse
        if not isinstance(nxt, type(node)):
            return out
        node = nxt


def choices_between_fitted_models(path: Path) -> list[int]:
    """Lines of `path` where one condition, literal or loop names both the correction and the calibration: where
    code decides (or lists in an order) which fitted model predicts. An ``if`` counts by its tests (with its
    ``elif``s), not by its body."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, CHOICES):
            continue
        if isinstance(node, (ast.If, ast.IfExp)):
            w = _chain(node)
        elif isinstance(node, ast.comprehension):
            w = set().union(*map(_words, [node.iter, *node.ifs]))
        else:
            w = _words(node)
        if w & CORRECTION and w & CALIBRATION:
            lines.append(node.lineno if hasattr(node, "lineno") else node.iter.lineno)
    return sorted(set(lines))


def test_the_prediction_rule_is_written_once():
    found = {str(p.relative_to(PKG.parent)): lines for m, p in _modules().items()
             if m != MODEL and (lines := choices_between_fitted_models(p))}
    assert not found, f"a choice between the correction and the calibration outside {MODEL}: {found}"
    assert choices_between_fitted_models(_modules()[MODEL])  # the detector sees the rule where it is
    # and nothing else reads which fitted models a loaded table has: it asks the model
    read = {str(p.relative_to(PKG.parent)): n.lineno for m, p in _modules().items() if m != MODEL
            for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Attribute)
            and n.attr in ("calibration", "correction")}
    assert not read, f"a fitted model read outside {MODEL}: {read}"


def test_the_detectors_see_what_they_look_for(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("how = 'learned correction' if t.correction else 'calibrated' if t.calibration else 'table'\n"
                 "fields = (('corrected_us', 'a'), ('calibrated_us', 'b'))\n"
                 "cal = m.get('calibration') or {}\n")
    assert choices_between_fitted_models(p) == [1, 2]
