"""TVM's RPC tracker: checking it answers, counting the servers under a key, opening sessions on them."""

from __future__ import annotations

import socket
import struct
import time

from ..errors import TvmNasError

ANSWER_TIMEOUT_S = 10.0


def _hint(spec) -> str:
    r = spec.runner
    return (f"check with: python -m tvm.exec.query_rpc_tracker --host {r.tracker_host} --port {r.tracker_port}")


def _where(spec) -> str:
    r = spec.runner
    return f"target '{spec.name}': field 'runner': RPC tracker {r.tracker_host}:{r.tracker_port}"


def summary(spec, timeout_s: float = ANSWER_TIMEOUT_S) -> dict:
    """The tracker's summary (`queue_info`, `server_info`), failing in `timeout_s` with one line.

    TVM's own client retries a refused connection for a minute and waits forever on a port that accepts but
    never answers, so this asks with TVM's tracker protocol on a socket that has a timeout.
    """
    from tvm.rpc import base

    r = spec.runner
    try:
        sock = socket.create_connection((r.tracker_host, r.tracker_port), timeout=min(5.0, timeout_s))
    except OSError as e:
        raise TvmNasError(f"{_where(spec)} is unreachable ({e.strerror or e}); {_hint(spec)}") from None
    try:
        sock.settimeout(timeout_s)
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
        if magic != base.RPC_TRACKER_MAGIC:
            raise TvmNasError(f"{_where(spec)} answered, but is not a TVM RPC tracker; {_hint(spec)}")
        base.sendjson(sock, [base.TrackerCode.SUMMARY])
        value = base.recvjson(sock)
    except TimeoutError:
        raise TvmNasError(f"{_where(spec)} accepted the connection but did not answer in {timeout_s:.0f} s "
                          f"(is it a TVM RPC tracker?); {_hint(spec)}") from None
    except (OSError, RuntimeError, ValueError, struct.error) as e:
        raise TvmNasError(f"{_where(spec)} broke off the connection ({e.__class__.__name__}); "
                          f"{_hint(spec)}") from None
    finally:
        sock.close()
    if not (isinstance(value, list) and len(value) == 2 and value[0] == base.TrackerCode.SUCCESS):
        raise TvmNasError(f"{_where(spec)} gave an unexpected answer {value!r}; {_hint(spec)}")
    return value[1]


def servers(summ: dict, key: str) -> tuple[int, int]:
    """(registered, free) servers under `key` in a tracker summary."""
    registered = sum(1 for s in summ.get("server_info", []) if str(s.get("key", "")).split(":")[-1] == key)
    free = int(summ.get("queue_info", {}).get(key, {}).get("free", 0))
    return max(registered, free), free


def free_servers(spec) -> int:
    """How many servers under the target's key are free now (the tuning runner uses one worker per server)."""
    return servers(summary(spec), spec.runner.key)[1]


def check_tracker(spec, timeout_s: float = 10.0) -> None:
    """Fail with one line unless the tracker answers and lists a server under the target's key."""
    r = spec.runner
    deadline = time.time() + timeout_s
    while True:
        registered, free = servers(summary(spec), r.key)
        if registered or free:
            return
        if time.time() > deadline:  # a server may still be registering
            raise TvmNasError(f"target '{spec.name}': field 'runner.key': no RPC server is registered under key "
                              f"'{r.key}' at {r.tracker_host}:{r.tracker_port}; {_hint(spec)}")
        time.sleep(0.5)


def session(spec, timeout_s: float | None = None):
    """An RPC session on a device registered under the target's key."""
    from tvm import rpc

    r = spec.runner
    check_tracker(spec)
    tracker = rpc.connect_tracker(r.tracker_host, r.tracker_port)
    return tracker.request(r.key, priority=1, session_timeout=timeout_s or r.session_timeout_s)
