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

KINDS = ("search_space", "targets")
_PACKAGE = Path(__file__).resolve().parent
PROJECT_ROOT = _PACKAGE.parent
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

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


def load_yaml(path: Path) -> dict:
    """A YAML mapping read with the safe loader; any problem is one line naming the file."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise TvmNasError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the file as UTF-8") from None
    except OSError as e:
        raise TvmNasError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise TvmNasError(f"{path}: malformed YAML{at}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise TvmNasError(f"{path}: expected a mapping of fields at the top level")
    return data


def validation_error(where: str | os.PathLike, e: ValidationError, rename: dict[str, str] | None = None,
                     prefix: str = "") -> TvmNasError:
    """The first error of a pydantic validation as one line: ``where: field 'a.b': message (and N more)``.

    Args:
        where: the file (or command) the values came from.
        e: the validation error.
        rename: field name -> how the user wrote it (e.g. ``latency_budget_us`` -> ``--latency-ms``).
        prefix: where the validated object sits in the file (``space.definition.``).
    """
    err = e.errors()[0]
    field = prefix + ".".join(str(x) for x in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    extra = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    if rename and field in rename:
        return TvmNasError(f"{where}: {rename[field]}: {msg}{extra}")
    return TvmNasError(f"{where}: field '{field}': {msg}{extra}")


def check_name(name: object) -> str:
    """A space or target name: it names files under ``--logs-dir``, so only letters, digits and ``._-``."""
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
