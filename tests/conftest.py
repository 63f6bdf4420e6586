"""Shared fixtures: real TVM-measured tables, real RPC tracker and server on 127.0.0.1, tiny YAML files."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TVM_NAS = Path(sys.executable).parent / "tvm-nas"  # the entry point `pip install` wrote beside this interpreter

# The suite runs tuners, builders, RPC servers and the CLI side by side on a 2-core machine: the shared-machine case,
# where pinned TVM workers stall behind other processes (docs/measurement.md). Unpinned, as that doc advises; every
# process the tests start inherits it. No test asserts a latency.
os.environ.setdefault("TVM_BIND_THREADS", "0")

# one op, one block: the smallest space that still has every kind of kernel (stem, block, head, classifier)
MICRO_SPACE = {
    "name": "micro", "input": {"resolution": 8, "channels": 3}, "num_classes": 4,
    "stem": {"out": 8, "stride": 1}, "first_block": {"op": "mbconv_k3_e1", "out": 8},
    "stages": [{"out": 8, "blocks": 1, "stride": 1}], "candidates": ["mbconv_k3_e3"], "allow_zero": True,
    "head": {"out": 16},
}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def micro_space(tmp_path_factory) -> Path:
    return write_yaml(tmp_path_factory.mktemp("spaces") / "micro.yaml", MICRO_SPACE)


def photo_folders(root: Path, train: int = 24, test: int = 10, size: int = 16, classes: int = 10,
                  seed: int = 0) -> tuple[Path, Path]:
    """Generated photographs in ``root/train/<class>/`` and ``root/test/<class>/`` (``train`` and ``test`` images
    a class): each class a colour and a stripe frequency, with noise and a random shift, so nets learn them but
    not perfectly. PNG thumbnails of ``size`` pixels: the in-memory path of an image folder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            colour = np.array([(c * 37) % 255, (c * 91) % 255, (c * 53) % 255], float)
            for i in range(n):
                shift = rng.uniform(0, 1)
                stripes = np.sin(2 * np.pi * ((c % 5) + 1) * (xx + shift))[..., None]
                img = colour * 0.6 + 50 * stripes + rng.normal(0, 20, (size, size, 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i:03d}.png")
    return root / "train", root / "test"


def quick_target(folder: Path, name: str = "quick") -> Path:
    """This machine's CPU with short measurement windows, for tests of what is done with figures, not of the
    figures (the full protocol on `host` runs in the profile tests, the shared tiny table and CI's plain-install
    profile)."""
    return write_yaml(Path(folder) / f"{name}.yaml", {
        "name": name, "tvm": {"kind": "llvm", "mcpu": "auto"}, "threads": 2,
        "evaluator": {"number": 5, "repeat": 5, "min_repeat_ms": 5}})


@pytest.fixture(scope="session")
def tiny_logs(tmp_path_factory) -> Path:
    """A logs dir holding the real latency table of the `tiny` space on `host` (TVM default schedules)."""
    from tvm_nas.profile.profiler import profile

    logs = tmp_path_factory.mktemp("tiny_logs")
    profile("tiny", "host", trials=0, logs_dir=logs)
    return logs


@pytest.fixture(scope="session")
def tiny_table(tiny_logs) -> Path:
    return tiny_logs / "host" / "tiny.latency.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    # own process group: the tracker and server leave popen_worker children behind (docs/tvm.md)
    return subprocess.Popen([sys.executable, "-m", *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def start_farm(key: str, n: int, logdir: Path, timeout_s: float = 90, fork: bool = False):
    """A real TVM RPC tracker on 127.0.0.1 and `n` real servers registered under `key`.

    Returns (tracker port, {server port: server process}, every process); stop them with :func:`stop_all`.
    Each process has its own process group: the tracker and servers leave popen_worker children behind.
    """
    from tvm import rpc

    port = free_port()
    procs = [_start(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end",
                     str(port + 1)], logdir / "tracker.log")]
    servers: dict[int, subprocess.Popen] = {}
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                rpc.connect_tracker("127.0.0.1", port).summary()
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        for i in range(n):
            sport = free_port()
            servers[sport] = _start(["tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}", "--key", key,
                                     "--host", "127.0.0.1", "--port", str(sport), "--port-end", str(sport + 1)]
                                    + ([] if fork else ["--no-fork"]), logdir / f"server{i}.log")
            procs.append(servers[sport])
        while len(rpc.connect_tracker("127.0.0.1", port).summary().get("server_info", [])) < n:
            if time.time() > deadline:
                raise RuntimeError(f"{n} server(s) did not register under {key!r}: see {logdir}")
            time.sleep(0.5)
    except BaseException:
        stop_all(procs)
        raise
    return port, servers, procs


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _stop(p)


@pytest.fixture(scope="session")
def rpc_tracker(tmp_path_factory):
    """A real TVM RPC tracker and one server (this machine, key `loopback`) on 127.0.0.1."""
    port, _, procs = start_farm("loopback", 1, tmp_path_factory.mktemp("rpc"), timeout_s=60)
    try:
        yield port
    finally:
        stop_all(procs)


@pytest.fixture
def rpc_target(tmp_path, rpc_tracker) -> Path:
    """This machine's CPU as a target measured through the tracker."""
    return write_yaml(tmp_path / "loopback.yaml", {
        "name": "loopback", "tvm": {"kind": "llvm", "mcpu": "auto"},
        "runner": {"kind": "rpc", "tracker_host": "127.0.0.1", "tracker_port": rpc_tracker, "key": "loopback"},
        "threads": 2, "evaluator": {"number": 5, "repeat": 5, "min_repeat_ms": 10}})


def cli(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the installed `tvm-nas` command (the console script pip made) in a subprocess."""
    return subprocess.run([str(TVM_NAS), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


# -- the deploy tests' shared fixtures (test_deploy, test_perlayer): one tuned tiny table for the session --------
DEPLOY_OPS = ["mbconv_k5_e3", "zero", "mbconv_k3_e3"]  # the net the deploy tests build
PROFILE_TRIALS = 2  # tunes the first two unique tasks (stem and first block: in every net of the space)


def write_tiny_arch(path: Path, ops=DEPLOY_OPS) -> Path:
    from tvm_nas.arch import arch_document
    from tvm_nas.arch import write_arch as _write
    from tvm_nas.space import load_space

    return _write(path, arch_document(load_space("tiny"), ops, None, None))


@pytest.fixture(scope="session")
def host(tmp_path_factory) -> str:
    """This machine's CPU as `host` with short measurement windows (its own definition, so its own tables): these
    tests check builds, databases and outputs, not figures."""
    return str(quick_target(tmp_path_factory.mktemp("targets"), name="host"))


@pytest.fixture(scope="session")
def tiny_host_logs(host, tmp_path_factory) -> Path:
    """The tiny space profiled on the host with a tiny tuning budget (a real database with a few records)."""
    from tvm_nas.profile.profiler import profile

    logs = tmp_path_factory.mktemp("tuning_logs")
    profile("tiny", host, trials=PROFILE_TRIALS, logs_dir=logs)
    return logs


@pytest.fixture(scope="session")
def arch_file(tmp_path_factory) -> Path:
    return write_tiny_arch(tmp_path_factory.mktemp("arch") / "a.arch.json")
