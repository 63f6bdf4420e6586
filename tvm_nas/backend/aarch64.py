"""Running an exported aarch64 module on this machine: qemu-aarch64 + TVM's own aarch64 runtime.

The runtime (``libtvm_runtime.so``, ``libtvm_ffi.so``) comes from the aarch64 wheels of the *same* TVM and tvm-ffi
releases as the installed ones, fetched once with pip into ``~/.cache/tvm-nas/`` (``TVM_NAS_CACHE`` overrides).
A small C++ runner (``aarch64_runner.cc``) is cross-compiled against them and loads the module with the VM, so no
Python is needed on the emulated side. Timing under qemu means nothing: this only checks numerics.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import TvmNasError

RUNNER_SOURCE = Path(__file__).with_name("aarch64_runner.cc")
SYSROOT = Path("/usr/aarch64-linux-gnu")
QEMU = "qemu-aarch64"
APT_HINT = "apt-get install -y g++-aarch64-linux-gnu qemu-user"


def cache_dir() -> Path:
    """The per-user cache (``TVM_NAS_CACHE``, default ``~/.cache/tvm-nas``), created on first use; one line
    naming the variable when it is a file or cannot be written."""
    from ..io import check_output_dir

    d = Path(os.environ.get("TVM_NAS_CACHE", Path.home() / ".cache" / "tvm-nas"))
    check_output_dir(d, "TVM_NAS_CACHE")  # a file, under a file, a dangling link, not writable: one line
    d.mkdir(parents=True, exist_ok=True)
    return d


def _versions() -> tuple[str, str]:
    from importlib.metadata import version

    return version("apache-tvm"), version("apache-tvm-ffi")


def missing_tools(compiler: str = "aarch64-linux-gnu-g++") -> list[str]:
    """The tools this check needs that are not installed (empty when qemu and the cross compiler are there)."""
    return [t for t in (compiler, QEMU) if shutil.which(t) is None]


def _download(spec: str, dest: Path) -> Path:
    """pip-download one aarch64 wheel (no dependencies) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--platform", "manylinux_2_28_aarch64", "--python-version", py, spec, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise TvmNasError(f"cannot fetch the aarch64 wheel {spec} ({tail}); download it with: "
                          f"{' '.join(cmd[2:])}")
    name = spec.split("==")[0].replace("-", "_")
    wheels = sorted(dest.glob(f"{name}-*aarch64*.whl"))
    if not wheels:
        raise TvmNasError(f"{dest}: pip did not leave an aarch64 wheel of {spec}")
    return wheels[-1]


def runtime_dir() -> Path:
    """Folder with the aarch64 ``libtvm_runtime.so`` and ``libtvm_ffi.so`` of the installed TVM release."""
    tvm_v, ffi_v = _versions()
    libdir = cache_dir() / "aarch64-runtime" / f"tvm-{tvm_v}-ffi-{ffi_v}"
    want = ("libtvm_runtime.so", "libtvm_ffi.so")
    if all((libdir / n).is_file() for n in want):
        return libdir
    wheels = cache_dir() / "wheels"
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=cache_dir()))
    try:
        for spec in (f"apache-tvm=={tvm_v}", f"apache-tvm-ffi=={ffi_v}"):
            with zipfile.ZipFile(_download(spec, wheels)) as z:
                for member in z.namelist():
                    if Path(member).name in want:
                        (tmp / Path(member).name).write_bytes(z.read(member))
        libdir.parent.mkdir(parents=True, exist_ok=True)
        if not libdir.exists():
            os.replace(tmp, libdir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return libdir


def _include_dirs() -> list[Path]:
    import tvm_ffi

    root = Path(tvm_ffi.__file__).parent / "include"
    return [root]


def build_runner(compiler: str = "aarch64-linux-gnu-g++") -> Path:
    """Cross-compile the runner against the aarch64 runtime (cached by source, compiler and TVM versions)."""
    if shutil.which(compiler) is None:
        raise TvmNasError(f"cross compiler '{compiler}' is not installed; install it with: {APT_HINT}")
    libdir = runtime_dir()
    src = RUNNER_SOURCE.read_bytes()
    digest = hashlib.sha256(src + compiler.encode() + str(libdir).encode()).hexdigest()[:16]
    exe = cache_dir() / "aarch64-runner" / f"runner-{digest}"
    if exe.is_file():
        return exe
    exe.parent.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_name(f".{exe.name}.{os.getpid()}.tmp")
    cmd = [compiler, "-std=c++17", "-O2", str(RUNNER_SOURCE), "-o", str(tmp),
           *[f"-I{d}" for d in _include_dirs()], f"-L{libdir}", "-Wl,--no-as-needed", "-ltvm_runtime",
           "-ltvm_ffi", "-Wl,--as-needed", f"-Wl,-rpath-link,{libdir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise TvmNasError(f"cross-compiling the aarch64 runner failed: {proc.stderr.strip()[-500:]}")
    os.replace(tmp, exe)
    return exe


def run(library: str | os.PathLike, x: np.ndarray, compiler: str = "aarch64-linux-gnu-g++",
        timeout_s: float = 600) -> np.ndarray:
    """Run `main` of an exported aarch64 library on one float32 input under qemu-aarch64; returns its output.

    Raises:
        TvmNasError: qemu or the cross compiler is missing (the message names the packages), or the run fails.
    """
    missing = missing_tools(compiler)
    if missing:
        raise TvmNasError(f"{', '.join(missing)} not installed; install with: {APT_HINT}")
    runner, libdir = build_runner(compiler), runtime_dir()
    with tempfile.TemporaryDirectory() as d:
        inp, outp = Path(d) / "input.bin", Path(d) / "output.bin"
        np.ascontiguousarray(x, dtype=np.float32).tofile(inp)
        cmd = [QEMU, "-L", str(SYSROOT), "-E", f"LD_LIBRARY_PATH={libdir}", str(runner), str(library), str(inp),
               str(outp), *[str(int(s)) for s in x.shape]]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TvmNasError(f"qemu-aarch64 run of {library} took longer than {timeout_s:.0f} s") from None
        if proc.returncode != 0:
            msg = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()[-1]
            raise TvmNasError(f"running {library} under qemu-aarch64 failed: {msg}")
        raw = outp.read_bytes()
    ndim = int(np.frombuffer(raw[:8], dtype=np.int64)[0])
    shape = tuple(int(v) for v in np.frombuffer(raw[8:8 + 8 * ndim], dtype=np.int64))
    return np.frombuffer(raw[8 + 8 * ndim:], dtype=np.float32).reshape(shape).copy()
