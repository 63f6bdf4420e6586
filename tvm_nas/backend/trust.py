"""Which compiled libraries this tvm-nas may load: the ones it built itself, on this machine.

Loading a shared library runs its constructors, so a library is code. A run folder or a build folder is often
copied or shared, and whoever shares it also writes its manifest and the digests in it: they prove nothing. So
every library the product exports has its sha256 recorded in the per-user cache (``$TVM_NAS_CACHE/built/``, one
empty file per digest), and a library is loaded only when

* it lies inside the folder its manifest belongs to, after symlinks are resolved (:func:`inside`), and
* its digest was recorded here when it was built (:func:`check_loadable`), unless the user said they trust it
  (``--trust``, which sets ``TVM_NAS_TRUST_LIBRARIES=1``), as with any binary someone hands you.

Anything else is refused in one line, before the library is opened. A library is opened the one way,
:func:`open_library`: from a private copy whose file name no other load of the process has used, because the
dynamic loader keeps one handle per file name (a second library written to a path already loaded would run as the
first one's code), and the copy is what the digest is checked on, so the bytes checked are the bytes that run.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import TvmNasError
from ..io import sha256_file

TRUST_ENV = "TVM_NAS_TRUST_LIBRARIES"


def _registry() -> Path:
    from .aarch64 import cache_dir

    root = cache_dir()  # one line when the cache is a file or cannot be written
    try:
        d = root / "built"
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TvmNasError(f"{root}: cannot write the per-user cache ({e.strerror}); set TVM_NAS_CACHE to a "
                          "writable folder") from None
    return d


def record_built(path: str | os.PathLike) -> str:
    """Remember that this tvm-nas built the library at ``path`` (its sha256); returns the digest."""
    digest = sha256_file(path)
    marker = _registry() / digest
    if not marker.exists():
        tmp = marker.with_name(f".{digest}.{os.getpid()}.tmp")
        tmp.write_bytes(b"")
        os.replace(tmp, marker)
    return digest


def trusted_by_user() -> bool:
    return os.environ.get(TRUST_ENV, "") in ("1", "true", "yes")


def check_loadable(path: str | os.PathLike) -> Path:
    """The library's resolved path, if this tvm-nas built it here (or the user trusts it).

    Raises:
        TvmNasError: not a regular file, or built elsewhere and not trusted.
    """
    p, real = _resolve(path)
    _check_digest(real, p)
    return real


def _resolve(path: str | os.PathLike) -> tuple[Path, Path]:
    """(the path as given, the regular file it resolves to)."""
    p = Path(path)
    real = Path(os.path.realpath(p))
    if not real.is_file():
        raise TvmNasError(f"{p}: library not found (or not a regular file)")
    return p, real


def _check_digest(file: Path, shown: Path) -> None:
    if trusted_by_user():
        return
    if not (_registry() / sha256_file(file)).exists():
        raise TvmNasError(f"{shown}: a library this tvm-nas did not build on this machine is not loaded (loading "
                          "runs its code); rebuild it with tvm-nas compile, or pass --trust if you trust whoever "
                          "made it")


_OPENED = itertools.count()


def open_library(path: str | os.PathLike):
    """``tvm.runtime.load_module`` of a library this tvm-nas built (:func:`check_loadable`), loaded from a
    private copy under a file name used by no other load of this process.

    The dynamic loader hands back the handle it already has for a file name, whatever the file holds now: a
    staging folder used again by a second measuring call, or a build folder rebuilt in place, would run the net
    loaded there first and time or check the wrong code. The copy is removed once loaded (the mapping stays).
    """
    import tvm

    p, real = _resolve(path)
    with tempfile.TemporaryDirectory(prefix="tvm-nas-load-") as d:
        copy = Path(d) / f"{os.getpid()}-{next(_OPENED)}-{real.name}"
        shutil.copyfile(real, copy)
        _check_digest(copy, p)
        return tvm.runtime.load_module(str(copy))


def inside(folder: str | os.PathLike, name: str, where: str) -> Path:
    """``folder/name`` when it resolves (symlinks followed) to a file inside ``folder``; else one-line refusal.

    Args:
        where: the file and field that named it (e.g. ``build/manifest.json: field 'library.file'``).
    """
    base = Path(os.path.realpath(folder))
    if not isinstance(name, str) or not name or "\0" in name:
        raise TvmNasError(f"{where}: not a file name")
    real = Path(os.path.realpath(base / name))
    if base not in real.parents:
        raise TvmNasError(f"{where}: {name!r} lies outside {folder}; a manifest may only name a library in its own "
                          "folder")
    return real
