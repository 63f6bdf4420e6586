"""Atomic writes, file hashes and inter-process locks: nothing we write is ever half-written."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import TvmNasError

# where per-target tuning databases and latency tables live unless --logs-dir says otherwise
DEFAULT_LOGS_DIR = Path(os.environ.get("TVM_NAS_LOGS", "tuning_logs"))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plainly created file gets (0666 less the umask): a team's shared folder stays readable."""
    return 0o666 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename.

    The file gets the umask's default mode, as a plain ``open(path, "w")`` would (``mkstemp`` alone makes 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# Every file tvm-nas reads is a few levels deep (an arch file's `space.definition.stages[0].out` is the deepest) and
# far below this size; beyond either the file was not written by a person or by tvm-nas, and deeper data would only
# reach Python's recursion limit somewhere else.
MAX_DEPTH = 32
MAX_JSON_BYTES = 64 << 20


def nesting_depth(obj, limit: int = MAX_DEPTH) -> int:
    """How deeply lists and mappings nest in `obj` (a scalar is 0), counted without recursion; stops past `limit`."""
    depth, level = 0, [obj]
    while level and depth <= limit:
        nxt = []
        for v in level:
            if isinstance(v, dict):
                nxt.extend(v.values())
            elif isinstance(v, list):
                nxt.extend(v)
        if not nxt:
            break
        depth += 1
        level = nxt
    return depth


def parse_json(text: str | bytes, path: str | os.PathLike, what: str = "JSON file"):
    """Parse JSON text read from `path`; any problem (syntax, encoding, nesting beyond :data:`MAX_DEPTH`, a number
    Python refuses) is one line naming the file."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        obj = json.loads(text)
    except UnicodeDecodeError as e:
        raise TvmNasError(f"{path}: corrupted {what}: not UTF-8 text (byte {e.start}: {e.reason}); delete it to "
                          "start over") from None
    except RecursionError:
        raise TvmNasError(f"{path}: corrupted {what}: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # JSONDecodeError, or an integer of more digits than Python converts
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise TvmNasError(f"{path}: corrupted {what} ({e.__class__.__name__}: {msg}); delete it to start "
                          "over") from None
    if nesting_depth(obj) > MAX_DEPTH:
        raise TvmNasError(f"{path}: corrupted {what}: nested deeper than {MAX_DEPTH} levels")
    return obj


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file, refusing more than `limit` of them (read, not trusted from its size: a file
    under /proc says 0) and turning an unreadable file into one line."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise TvmNasError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    if len(data) > limit:
        raise TvmNasError(f"{path}: more than {limit >> 10} KiB, not a {what}")
    return data


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict:
    """Read a JSON object, turning a missing, unreadable or corrupted file into a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise TvmNasError(f"{path}: {what} not found")
    data = read_bounded(path, MAX_JSON_BYTES, what)
    obj = parse_json(data, path, what)
    if not isinstance(obj, dict):
        raise TvmNasError(f"{path}: corrupted {what}: expected a JSON object")
    return obj


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@contextmanager
def exclusive(path: str | os.PathLike, what: str):
    """Hold an inter-process lock on `path` (a `.lock` file beside it) for one writer at a time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=1)
    except Timeout as e:
        raise TvmNasError(f"{path}: another tvm-nas process is writing this {what}; wait for it to finish") from e
    try:
        yield
    finally:
        lock.release()


def remove_orphans(root: Path, prefix: str, mine: bool = False) -> None:
    """Remove the folders ``root/<prefix><pid>`` of processes that are gone (killed, or the machine went down), and
    with `mine` this process's own."""
    import shutil

    for d in root.glob(prefix + "*"):
        pid = d.name.removeprefix(prefix)
        if pid.isdigit() and (mine and int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def check_output(path: str | os.PathLike | None, flag: str, inputs=(), force: bool = True) -> None:
    """Refuse, before any long work, an output file that would overwrite an input, that is a folder, whose
    folder is a file or cannot be written, or (without ``force``) that already exists.

    Args:
        path: the output file (None: none asked for).
        flag: the option that named it, for the one-line error.
        inputs: paths this command reads; none of them may be the output, after symlinks are resolved.
        force: whether replacing an existing output is this command's documented behaviour (or ``--force``).
    """
    if path is None:
        return
    p = Path(path)
    real = os.path.realpath(p)
    for i in inputs:
        if i is not None and os.path.realpath(i) == real:
            raise TvmNasError(f"{flag} {p}: is also an input of this command ({i}); it would be overwritten, choose "
                              "another file")
    if p.is_dir():
        raise TvmNasError(f"{flag} {p}: is a folder; give a file name")
    _writable_ancestor(p, p.parent, flag)
    if not force and p.exists():
        raise TvmNasError(f"{flag} {p}: exists already; add --force to replace it")


def _writable_ancestor(p: Path, start: Path, flag: str) -> None:
    """The nearest existing folder from `start` up, where `p` would be created, must be a folder we can write in."""
    parent = start
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise TvmNasError(f"{flag} {p}: {parent} is a file, not a folder")
    why = _cannot_write_in(parent)
    if why:
        raise TvmNasError(f"{flag} {p}: cannot write in {parent} ({why})")


def _cannot_write_in(folder: Path) -> str | None:
    """Why nothing can be created in `folder`, or None. Tried, not asked: os.access says yes to root in a read-only
    mount or under /proc, where the write would fail after the work."""
    try:
        probe = tempfile.mkdtemp(prefix=".tvm-nas-probe-", dir=folder)
    except OSError as e:
        return e.strerror or e.__class__.__name__
    os.rmdir(probe)
    return None


def check_output_dir(path: str | os.PathLike | None, flag: str) -> None:
    """Refuse, before any work, an output folder that is a file, lies under a file, is a dangling or looping link,
    or cannot be written: one line naming the option (the work's results would be lost at the end, in a
    traceback)."""
    if path is None:
        return
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise TvmNasError(f"{flag} {p}: is a link to nothing (or a loop of links), not a folder")
    if p.exists() and not p.is_dir():
        raise TvmNasError(f"{flag} {p}: is a file, not a folder")
    _writable_ancestor(p, p, flag)
