"""TVM's RPC tracker: checking it answers, and opening a session on the device registered under a key."""

from __future__ import annotations

import socket
import time

from ..errors import TvmNasError


def _hint(spec) -> str:
    r = spec.runner
    return (f"check with: python -m tvm.exec.query_rpc_tracker --host {r.tracker_host} --port {r.tracker_port}")


def check_tracker(spec, timeout_s: float = 10.0) -> None:
    """Fail with one line unless the tracker answers and lists a server under the target's key."""
    from tvm import rpc

    r = spec.runner
    try:  # a plain TCP probe first: connect_tracker retries for a minute before it gives up
        socket.create_connection((r.tracker_host, r.tracker_port), timeout=5).close()
    except OSError as e:
        raise TvmNasError(f"target '{spec.name}': field 'runner': RPC tracker {r.tracker_host}:{r.tracker_port} "
                          f"is unreachable ({e.strerror or e}); {_hint(spec)}") from None
    try:
        tracker = rpc.connect_tracker(r.tracker_host, r.tracker_port)
        summary = tracker.summary()
    except Exception as e:  # connection refused, timeout, bad magic
        raise TvmNasError(f"target '{spec.name}': field 'runner': RPC tracker {r.tracker_host}:{r.tracker_port} "
                          f"is unreachable ({e.__class__.__name__}); {_hint(spec)}") from None
    keys = set(summary.get("queue_info", {}))
    servers = [s for s in summary.get("server_info", []) if str(s.get("key", "")).split(":")[-1] == r.key]
    if r.key not in keys and not servers:
        deadline = time.time() + timeout_s
        while time.time() < deadline:  # a server may still be registering
            time.sleep(0.5)
            summary = tracker.summary()
            if r.key in summary.get("queue_info", {}):
                return
        raise TvmNasError(f"target '{spec.name}': field 'runner.key': no RPC server is registered under key "
                          f"'{r.key}' at {r.tracker_host}:{r.tracker_port}; {_hint(spec)}")


def session(spec):
    """An RPC session on the device registered under the target's key."""
    from tvm import rpc

    r = spec.runner
    check_tracker(spec)
    tracker = rpc.connect_tracker(r.tracker_host, r.tracker_port)
    return tracker.request(r.key, priority=1, session_timeout=r.session_timeout_s)
