"""Measuring on a board farm: every RPC server registered under the target's key measures in parallel.

One worker thread per board holds a session obtained through the tracker (TVM's own request protocol, so the
board's address is known and reported). The caller builds modules and feeds them in; each is timed on whichever
board is free. A board that drops out hands its module back to the others and is reported; nothing measured is
lost because every result goes back to the caller as soon as it exists. TVM's FFI releases the GIL during calls,
so the threads wait on their boards in parallel.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..errors import TvmNasError

_DONE = object()


@dataclass
class Board:
    """One RPC server as the farm saw it."""

    name: str = "?"
    measured: int = 0
    failed: str = ""
    seconds: float = 0.0


@dataclass
class Job:
    key: str
    executable: object
    inputs: list
    attempts: list[str] = field(default_factory=list)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{e.__class__.__name__}: {text.splitlines()[-1] if text else ''}"[:200]


def request_session(spec, timeout_s: float, wait_s: float = 30.0):
    """(session, "host:port") of a free server under the target's key, asked for with TVM's tracker protocol."""
    import struct

    from tvm import rpc
    from tvm.rpc import base

    r = spec.runner
    sock = socket.create_connection((r.tracker_host, r.tracker_port), timeout=10)
    try:
        sock.settimeout(wait_s)  # a request waits in the tracker's queue until a server is free
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        if struct.unpack("<i", base.recvall(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
            raise TvmNasError(f"target '{spec.name}': {r.tracker_host}:{r.tracker_port} is not a TVM RPC tracker")
        base.sendjson(sock, [base.TrackerCode.REQUEST, r.key, "", 1])
        value = base.recvjson(sock)
    finally:
        sock.close()
    if value[0] != base.TrackerCode.SUCCESS:
        raise RuntimeError(f"tracker refused the request: {value!r}")
    url, port, matchkey = value[1]
    return rpc.connect(url, port, matchkey, int(timeout_s)), f"{url}:{port}"


class Farm:
    """Time executables on every board under the target's key at once.

    Args:
        spec: an RPC target.
        n_boards: worker threads (one session each); the tracker's registered servers by default.
        measure: `(executable, inputs, spec, sess) -> (outputs, Timing)`, e.g. :func:`.measure.run_and_time`.
        on_board: called with the list of boards whenever one measures something or fails.
    """

    def __init__(self, spec, measure: Callable, n_boards: int | None = None,
                 on_board: Callable[[list[Board]], None] | None = None, say: Callable[[str], None] = print):
        from .remote import servers, summary

        self.spec, self.measure, self.say, self.on_board = spec, measure, say, on_board or (lambda b: None)
        registered, _ = servers(summary(spec), spec.runner.key)
        self.n = max(1, n_boards or registered)
        self.jobs: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        self.boards: list[Board] = [Board() for _ in range(self.n)]
        self.lock = threading.Lock()
        self.alive = self.n
        self.threads = [threading.Thread(target=self._work, args=(b,), daemon=True) for b in self.boards]
        for t in self.threads:
            t.start()

    # -- worker side ---------------------------------------------------------------------------------------
    def _work(self, board: Board) -> None:
        life = max(10.0, float(self.spec.runner.session_timeout_s))
        sess, opened = None, 0.0
        try:
            while True:
                job = self.jobs.get()
                if job is _DONE:
                    self.jobs.put(_DONE)  # for the other workers
                    return
                if sess is None or time.monotonic() - opened > life / 2:  # the server kills it at `life`
                    sess = None
                    try:
                        sess, board.name = request_session(self.spec, life)
                    except Exception as e:  # noqa: BLE001 - no free server (busy elsewhere) or tracker gone
                        board.failed = f"no session: {_one_line(e)}"
                        self.results.put(("no_session", board, job))
                        return
                    opened = time.monotonic()
                try:
                    t0 = time.perf_counter()
                    _, timing = self.measure(job.executable, job.inputs, self.spec, sess=sess)
                except Exception as e:  # noqa: BLE001 - any failure of a board: hand the job to the others
                    board.failed = _one_line(e)
                    job.attempts.append(board.name)
                    self.results.put(("board_failed", board, job))
                    return
                board.seconds += time.perf_counter() - t0
                board.measured += 1
                timing = replace(timing, where=f"rpc {board.name} key={self.spec.runner.key}")
                self.results.put(("done", board, (job.key, timing)))
        finally:
            sess = None
            with self.lock:
                self.alive -= 1
            self.results.put(("exit", board, None))

    # -- caller side ---------------------------------------------------------------------------------------
    def submit(self, key: str, executable, inputs: list) -> None:
        self.jobs.put(Job(key, executable, inputs))

    def drain(self, on_result: Callable[[str, object], None], block: bool = False, pending: int = 0) -> int:
        """Hand finished results to `on_result(key, timing)`; returns how many arrived.

        With `block`, wait until `pending` results have arrived (or every board has failed).
        """
        got = 0
        while True:
            if block and got >= pending:
                return got
            try:
                kind, board, payload = self.results.get(timeout=0.5 if block else 0)
            except queue.Empty:
                if not block:
                    return got
                with self.lock:
                    if self.alive == 0:
                        return got
                continue
            if kind == "done":
                on_result(*payload)
                got += 1
                self.on_board(self.boards)
            elif kind == "no_session":
                self.say(f"a worker got no session ({board.failed}); the other boards go on")
                self.jobs.put(payload)
            elif kind == "board_failed":
                self.say(f"board {board.name} failed ({board.failed}); its work goes to the other boards")
                self.on_board(self.boards)
                if len(payload.attempts) >= 2:
                    raise TvmNasError(f"'{payload.key}' failed on boards {', '.join(payload.attempts)}: "
                                      f"{board.failed}")
                self.jobs.put(payload)

    def close(self) -> None:
        self.jobs.put(_DONE)
        for t in self.threads:
            t.join(timeout=30)

    def failed(self) -> list[Board]:
        return [b for b in self.boards if b.failed and not b.failed.startswith("no session")]
