"""The docs document what is there: every file they name exists, every module is in the architecture page, every
subpackage is packaged.

A path counts when it starts with one of the repository's tracked top-level folders and holds no placeholder
(``<...>``, ``*``, ``{a,b}``): ``runs/<timestamp>/`` or ``<logs_dir>/<target>/`` name outputs, not files of the
repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "pyproject.toml"]
TOPS = (".ci", "bench", "docs", "search_space", "targets", "tests", "tvm_nas")
PLACEHOLDER = set("<>*{}…")
# a path is a run of characters that are neither space nor the quotes, brackets and separators around it in prose
TOKEN = re.compile(r"[^\s`'\"()\[\],;|]+")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
PACKAGE = ROOT / "tvm_nas"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _installed_only() -> dict[str, Path]:
    """Paths that exist inside the installed package only: `[tool.setuptools.package-dir]` maps them to folders of
    the repository (``tvm_nas/_builtin/search_space`` is ``search_space/``)."""
    dirs = _pyproject()["tool"]["setuptools"].get("package-dir", {})
    return {pkg.replace(".", "/"): ROOT / folder for pkg, folder in dirs.items()}


def _exists(path: str) -> bool:
    if (ROOT / path).exists():
        return True
    bare = path.rstrip("/")
    for pkg, folder in _installed_only().items():
        if bare == pkg or pkg.startswith(bare + "/"):
            return True  # a folder above a mapped package
        if bare.startswith(pkg + "/") and (folder / bare[len(pkg) + 1:]).exists():
            return True
    return False


def named_paths(text: str) -> list[tuple[int, str]]:
    """(line, path) of every repository path a text names: backticked or bare, `docs/x.md`, `bench/y.py`, ...,
    and bare page names (`NOTES.md`, `formats.md`)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in TOKEN.finditer(line):
            t = m.group(0).rstrip(".:")
            if PLACEHOLDER & set(t):
                continue
            if t.startswith(tuple(f"{top}/" for top in TOPS)) or re.fullmatch(r"[\w.-]+\.md", t):
                out.append((n, t))
    return out


def linked_paths(text: str) -> list[tuple[int, str]]:
    """(line, target) of every relative markdown link outside code spans."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in LINK.finditer(CODE_SPAN.sub("", line)):
            if "://" not in m.group(1) and not m.group(1).startswith("mailto:"):
                out.append((n, m.group(1)))
    return out


def test_the_scanner_finds_paths_and_skips_placeholders():
    text = ("see `docs/measurement.md`, bench/nasbench.py (and `tests/test_docs.py`).\n"
            "`runs/<timestamp>/`, `<logs_dir>/<target>/x.json`, `targets/*.yaml`, `bench/results/a-{b,c}.json`, "
            "`search_space/<name>.yaml`, `tuning_logs/host/tiny.latency.json`, (see NOTES.md).")
    assert [p for _, p in named_paths(text)] == ["docs/measurement.md", "bench/nasbench.py", "tests/test_docs.py",
                                                 "NOTES.md"]
    assert linked_paths("[formats](formats.md), `vm[\"main\"](x)`, [web](https://tvm.apache.org)") == \
        [(1, "formats.md")]


def test_a_missing_file_is_reported():
    assert not _exists("docs/no-such-page.md")
    assert not _exists("tvm_nas/_builtin/search_space/no-such-space.yaml")
    assert _exists("tvm_nas/_builtin/search_space/tiny.yaml")  # search_space/tiny.yaml, installed in the package
    assert _exists("tvm_nas/_builtin/")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_file_a_doc_names_exists(doc: Path):
    text = doc.read_text(encoding="utf-8")
    # a bare page name is relative to the page that names it (docs/x.md names formats.md) or to the repository
    missing = [f"line {n}: {p}" for n, p in named_paths(text)
               if not (_exists(p) or "/" not in p and (doc.parent / p).exists())]
    missing += [f"line {n}: link {p}" for n, p in linked_paths(text) if not (doc.parent / p).exists()]
    assert not missing, f"{doc.relative_to(ROOT)} names files that do not exist: " + "; ".join(missing)


def _modules() -> list[str]:
    """Every source file of the package as the architecture page names it, relative to tvm_nas/ (`timing.py`,
    `backend/measure.py`); a subpackage's `__init__.py` is named by its folder."""
    out = []
    for f in sorted(PACKAGE.rglob("*")):
        if f.suffix not in (".py", ".cc") or "__pycache__" in f.parts:
            continue
        rel = f.relative_to(PACKAGE).as_posix()
        out.append(rel.removesuffix("__init__.py") or "__init__.py")
    return out


def test_every_module_is_in_the_architecture_page():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([^`\s]+)`", page))
    missing = [m for m in _modules() if m not in named]
    assert not missing, f"docs/architecture.md does not name (in backticks) these modules of tvm_nas/: {missing}"


def test_every_subpackage_is_packaged():
    packages = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = {".".join(f.parent.relative_to(ROOT).parts) for f in PACKAGE.rglob("__init__.py")
             if "__pycache__" not in f.parts}
    assert found, "no package found under tvm_nas/"
    missing = sorted(found - packages)
    assert not missing, f"pyproject.toml [tool.setuptools] packages does not list {missing}: they would not install"
    stale = sorted(p for p in packages - found if not p.startswith("tvm_nas._builtin."))
    assert not stale, f"pyproject.toml lists packages that do not exist: {stale}"
