"""The user-editable YAML files (search spaces, targets): where they live, how they are read and validated.

Search spaces and targets share everything but their model: a name in the shipped folder or a path, a safe YAML
read that turns every problem into one line naming the file, a `name` that is a plain identifier (it becomes a
file name under ``--logs-dir``), and pydantic validation whose first error names the field.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import TvmNasError
from .io import MAX_DEPTH, read_bounded

# searchable blocks of a whole space (proxyless-imagenet has 21); here, not in space.py, so that the records that
# bound their op lists by it load without torch
MAX_BLOCKS = 256

KINDS = ("search_space", "targets")
_PACKAGE = Path(__file__).resolve().parent
PROJECT_ROOT = _PACKAGE.parent
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_NAME = 100

M = TypeVar("M", bound=BaseModel)


def data_dir(kind: str) -> Path:
    """Folder of the shipped YAML files of `kind` (``search_space`` or ``targets``).

    ``TVM_NAS_HOME`` overrides the root. A source checkout (or editable install) reads the repository's folders;
    a plain ``pip install .`` ships them inside the package as ``tvm_nas/_builtin/<kind>``.
    """
    if kind not in KINDS:
        raise ValueError(kind)
    if "TVM_NAS_HOME" in os.environ:
        return Path(os.environ["TVM_NAS_HOME"]) / kind
    packaged = _PACKAGE / "_builtin" / kind
    return packaged if packaged.is_dir() else PROJECT_ROOT / kind


def list_names(kind: str) -> list[str]:
    return sorted(p.stem for p in data_dir(kind).glob("*.yaml"))


def resolve(name_or_path: str | os.PathLike, kind: str) -> Path:
    """A name in the shipped folder of `kind` or a path to a YAML file."""
    try:
        return _resolve(name_or_path, kind)
    except OSError as e:  # a name longer than the file system takes (a damaged run.json's config, a typo'd option)
        shown = str(name_or_path)
        shown = shown if len(shown) <= 80 else shown[:80] + "…"
        raise TvmNasError(f"{kind} '{shown}': not a name or a path this machine can open "
                          f"({e.strerror or e.__class__.__name__})") from None


def _resolve(name_or_path: str | os.PathLike, kind: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise TvmNasError(f"{p}: no such file")
        return p
    cand = data_dir(kind) / f"{name_or_path}.yaml"
    if not cand.is_file():
        names = ", ".join(list_names(kind))
        raise TvmNasError(f"{kind} '{name_or_path}' not found in {data_dir(kind)} (known: {names}); or give a path")
    return cand


# A space or target file is a page of text: anything bigger, or nested deeper, was not written as one.
MAX_YAML_BYTES = 1 << 20
MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, minus what a hand-written space or target never needs and an attacker would use.

    - Aliases (``*name``, and the merge key ``<<``) are refused: one alias can stand for a tree that another alias
      repeats, so nine lines expand to 10⁹ values (the "billion laughs"). Each is refused where it appears, before
      anything is expanded.
    - A key given twice in one mapping is refused (YAML would silently keep the last one).
    - Nesting deeper than :data:`~tvm_nas.io.MAX_DEPTH` levels is refused before Python's recursion limit is reached.
    """

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} is not accepted in tvm-nas files (write the value out)",
                event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                              self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        if isinstance(node, yaml.MappingNode):
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:
                    raise yaml.constructor.ConstructorError(
                        None, None, "merge key '<<' is not accepted in tvm-nas files (write the fields out)",
                        key_node.start_mark)
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} is given twice (first at line {seen[key] + 1})",
                            key_node.start_mark)
                    seen[key] = key_node.start_mark.line
                except TypeError:
                    continue  # an unhashable key: the base constructor says so
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        """An integer of thousands of digits (Python's int() refuses it with a ValueError) is a YAML error."""
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(node.value)} digits is not a number tvm-nas reads",
                node.start_mark) from None


StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)


def load_yaml(path: Path) -> dict:
    """A YAML mapping read with :class:`StrictLoader`; any problem is one line naming the file."""
    data = read_bounded(Path(path), MAX_YAML_BYTES, "space or target file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TvmNasError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise TvmNasError(f"{path}: malformed YAML{at}: {problem}") from None
    except RecursionError:
        raise TvmNasError(f"{path}: malformed YAML: nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(data, dict):
        raise TvmNasError(f"{path}: expected a mapping of fields at the top level")
    return data


def validation_error(where: str | os.PathLike, e: ValidationError, rename: dict[str, str] | None = None,
                     prefix: str = "") -> TvmNasError:
    """The first error of a pydantic validation as one line: ``where: field 'a.b': message (and N more)``.

    Args:
        where: the file the values came from ('' for a command's options: its error line names the command).
        e: the validation error.
        rename: field name -> how the user wrote it (e.g. ``latency_budget_us`` -> ``--latency-ms``).
        prefix: where the validated object sits in the file (``space.definition.``).
    """
    err = e.errors()[0]
    field = prefix + ".".join(str(x) for x in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    extra = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    head = f"{where}: " if str(where) else ""
    if rename and field in rename:
        return TvmNasError(f"{head}{rename[field]}: {msg}{extra}")
    return TvmNasError(f"{head}field '{field}': {msg}{extra}")


def check_name(name: object) -> str:
    """A space or target name: it names files under ``--logs-dir``, so only letters, digits and ``._-``."""
    if isinstance(name, str) and len(name) > MAX_NAME:
        raise ValueError(f"a name of {len(name)} characters is too long for a file name (at most {MAX_NAME})")
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise ValueError(f"{name!r} is not a valid name: use letters, digits, '.', '_' and '-', starting with a "
                         "letter or digit (it becomes a file name under --logs-dir)")
    return name


def load_spec(name_or_path: str | os.PathLike, kind: str, model: type[M]) -> tuple[M, Path]:
    """Read, default the name to the file's stem, and validate one YAML file of `kind` as `model`."""
    path = resolve(name_or_path, kind)
    data = load_yaml(path)
    data.setdefault("name", path.stem)
    try:
        return model.model_validate(data), path
    except ValidationError as e:
        raise validation_error(path, e) from None
    except TvmNasError as e:
        raise TvmNasError(f"{path}: {e}") from None
