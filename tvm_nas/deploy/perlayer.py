"""Per-layer answers (``compare --per-layer``): where the compiled net spends its time, layer by layer, beside the
latency table's prediction for that layer and the fastest peer's own per-node profile.

A *layer* is one op of the net: the stem (with the input transpose), the first block, each searchable block whose op
is not ``zero``, the head and the classifier; the latency table has one entry for each.

- **TVM**: TVM 0.27 has no per-op profiler for the Relax VM (``vm.profile``, ``profile=True`` and
  ``tvm.runtime.profiling`` are gone; the VM offers only ``set_instrument``, a callback around every call, and
  only while it interprets ``main``). The shipped module's ``main`` is compiled to machine code, which has no such
  hook, so the net is lowered again and built as a *bytecode twin* with the same tuning database: the same
  kernels under the same names, called in the same order. The twin is run once with an instrument that records
  every kernel it calls, in order, with a copy of its arguments; then every kernel *of the library the build
  wrote* (``model.so``) is timed alone on those copies with TVM's own ``time_evaluator`` on the library module
  that holds it, under the measurement protocol (interleaved rounds, stability check; the target's windows,
  :data:`SAMPLES` samples a round). A kernel timed alone pays none of the calls between kernels, so the kernels of
  a net sum to a little less than the net. A database tuned further since the build can give the twin other
  weight layouts than the library's: that is an error that says to compile again.
- **Which kernels make a layer**: the fused kernels of the net are matched to its ops by their structural hash,
  the key MetaSchedule tunes them by. The table records the keys of each op's kernels (``tasks``); an op the table
  lacks is lowered alone through the same pipeline as the profile does. Walking the kernels in call order, a kernel
  joins the current op if that op has its key and has not had it yet, else the next op that has it; a kernel no op
  has (``matched: false``) joins the op before it.
- **Prediction**: the op's table entry less the per-call cost (:meth:`LatencyTable.latency`, uncalibrated): what
  the table says the op's kernels cost alone.
- **Peers** (the ones with a per-node profiler, on this host): ONNX Runtime's profiler (``enable_profiling``: a
  JSON trace with one event per node and run, whole µs) and OpenVINO's counters (``PERF_COUNT``,
  ``get_profiling_info()``: one entry per executed layer and run, µs). Their nodes are matched to the net's layers
  by the module path the ONNX exporter records with every node (``pkg.torch.onnx.name_scopes``); a node a runtime
  made up (a layout reorder) joins the layer before it (the one after it, when first). A layer's figure is the
  median over runs of the sum of its nodes; profiler overhead included, as in the runtime's own report.

Rows are sorted by TVM's loss: TVM's time minus the fastest profiled peer's on the same layer, largest first.
"""

from __future__ import annotations

import ast
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..arch import Arch
from ..errors import TvmNasError
from ..space import OpKey
from ..targets import TargetSpec
from ..timing import figure

PROFILED_PEERS = ("onnxruntime", "openvino")  # the peers with a per-node profiler
SAMPLES = 5  # samples per round for each kernel (the target's windows): a net has tens of kernels
PEER_RUNS = 200  # profiled runs of a peer (after warm-up), fewer when they take over PEER_SECONDS
PEER_SECONDS = 3.0
PEER_WARMUP = 10
PEER_TITLE = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
PEER_SHORT = {"onnxruntime": "ort", "openvino": "ov"}
CSV_COLUMNS = ("architecture", "target", "layer", "op", "op_key", "kernels", "tvm_us", "tvm_stable",
               "predicted_us", "tvm_over_predicted", "onnxruntime_us", "openvino_us", "peer", "peer_us", "loss_us")


@dataclass
class Layer:
    """One op of the net: its module path (``stem``, ``first_block``, ``blocks.3``, ``head``, ``classifier``)."""

    path: str
    key: OpKey
    kernels: list[dict] = field(default_factory=list)


def net_layers(a: Arch) -> list[Layer]:
    """The net's ops in execution order (``zero`` blocks have no kernels and are left out)."""
    stem, first, head, cls = a.space.fixed_layers()
    blocks = [Layer(f"blocks.{b.index}", b.key(op)) for b, op in zip(a.space.blocks(), a.ops, strict=True)
              if op != "zero"]
    return [Layer("stem", stem), Layer("first_block", first), *blocks, Layer("head", head),
            Layer("classifier", cls)]


# -- TVM: the kernels the module calls, timed alone ----------------------------------------------------------------
def _modules(m):
    yield m
    for i in m.imports:
        yield from _modules(i)


def kernel_calls(library: str | os.PathLike, twin, x: np.ndarray, spec: TargetSpec) -> tuple[list[tuple], object]:
    """Run `main` of the bytecode twin once with an instrument: every kernel it calls, in order, found in the
    built library.

    Returns:
        ``([(kernel name, module of `library` holding it, copies of its arguments)], device)``.
    """
    from tvm import runtime

    from ..backend import measure
    from ..backend.trust import open_library

    lib = open_library(library)  # a library this tvm-nas built (or one --trust'ed)
    m = measure.load(twin, [x], spec)
    owners = {}
    calls: list[tuple] = []
    missing: list[str] = []

    def owner(name):
        if name not in owners:
            owners[name] = next((mod for mod in _modules(lib) if mod.kind != "relax.VMExecutable"
                                 and mod.implements_function(name)), None)
        return owners[name]

    def instrument(func, name, before, ret, *args):
        if before and not name.startswith("vm."):
            if owner(name) is None:
                missing.append(name)
            else:
                calls.append((name, owners[name], [runtime.tensor(v.numpy(), m.dev) if hasattr(v, "numpy") else v
                                                   for v in args]))
        return 0

    m.vm.set_instrument(instrument)
    m.outputs()
    if missing:
        raise TvmNasError(f"{library}: {len(missing)} of the {len(missing) + len(calls)} kernels of the net built "
                          f"again with the target's database are not in this library (first: {missing[0]}): the "
                          "database is not the one it was built with; compile it again")
    if not calls:
        raise TvmNasError(f"{library}: the net built again calls no kernel of this library; compile it again")
    return calls, m.dev


def _check_args(library, calls: list[tuple], dev) -> None:
    """Each kernel of the library runs on the twin's arguments (a database tuned since the build can pack the
    weights otherwise, and a kernel then refuses them)."""
    for name, mod, args in calls:
        try:
            mod[name](*args)
        except Exception as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise TvmNasError(f"{library}: kernel {name} does not take the arguments of the net built again with "
                              f"the target's database (tuned further since this build?): compile it again "
                              f"({first})") from None


def time_kernels(calls: list[tuple], dev, spec: TargetSpec) -> list:
    """Each kernel alone under the measurement protocol (interleaved rounds): one Timing per call."""
    from ..timing import Protocol, interleave

    ev = spec.evaluator
    protocol = Protocol.of(ev, repeat=min(ev.repeat, SAMPLES))
    samplers, where, number = {}, {}, {}
    for i, (name, mod, args) in enumerate(calls):
        f = mod.time_evaluator(name, dev, number=ev.number, repeat=protocol.repeat, min_repeat_ms=ev.min_repeat_ms)
        k = f"{i}:{name}"
        samplers[k] = lambda f=f, args=args: np.asarray(f(*args).results, dtype=np.float64) * 1e6
        where[k], number[k] = f"local {dev}, kernel alone", ev.number
    timings = interleave(samplers, protocol, where, number)
    return [timings[f"{i}:{c[0]}"] for i, c in enumerate(calls)]


def bytecode_twin(fused, spec: TargetSpec, manifest: dict):
    """The net built again as the build did (the database its manifest names, or none) but with an interpreted
    ``main``, whose kernel calls an instrument can see."""
    from ..backend import tuning
    from ..backend.pipeline import build
    from ..backend.target import to_tvm_target

    folder = (manifest.get("tuning") or {}).get("database")
    db = tuning.open_database(Path(folder), spec) if folder and Path(folder).is_dir() else None
    return build(fused, to_tvm_target(spec), db, gpu=False, prepack=True, vm_mode="bytecode")


def _keys(fused) -> dict[str, str]:
    import tvm
    from tvm import tirx

    from ..backend.tuning import task_key

    return {gv.name_hint: task_key(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}))
            for gv, f in fused.functions.items() if isinstance(f, tirx.PrimFunc)}


def _key_of(name: str, keys: dict[str, str]) -> str | None:
    """A built kernel's key: a tuned kernel whose weights were pre-packed is renamed ``<name>_prepacked`` by
    ``SplitLayoutRewritePreproc`` (its weight transform lifted out and folded), the key is the fused kernel's."""
    return keys.get(name, keys.get(name.removesuffix("_prepacked")))


def op_keys(key: OpKey, table, tvm_target) -> set[str]:
    """The structural keys of an op's kernels: from the table's entry, else the op lowered alone."""
    entry = table.entries.get(key.key) if table is not None else None
    if entry and entry.get("tasks"):
        return {t.rsplit("#", 1)[-1] for t in entry["tasks"]}
    from ..profile.profiler import lower_op

    return set(_keys(lower_op(key, tvm_target, prepack=True)).values())


def assign(kernels: Sequence[str | None], ops: Sequence[set[str]]) -> list[tuple[int, bool]]:
    """(op index, matched) of each kernel key, in call order (see the module docstring for the rule)."""
    out, cur, seen = [], 0, [set() for _ in ops]
    for k in kernels:
        j = next((j for j in range(cur, len(ops)) if k in ops[j] and (j > cur or k not in seen[j])), None)
        if j is None:
            out.append((cur, False))
            continue
        cur = j
        seen[j].add(k)
        out.append((j, True))
    return out


# -- peers: their own per-node profiles ----------------------------------------------------------------------------
def onnx_layers(onnx_path: str | os.PathLike) -> dict[str, str]:
    """Node name and output name -> the net's layer (module path), from the exporter's ``name_scopes``."""
    import onnx

    out = {}
    for n in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        meta = {p.key: p.value for p in n.metadata_props}
        try:
            scopes = [s for s in ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]")) if s]
        except (ValueError, SyntaxError):
            continue
        if not scopes:
            continue
        layer = scopes[1] if scopes[0] == "blocks" and len(scopes) > 1 else scopes[0]
        for name in (n.name, *n.output):
            out[name] = layer
    return out


def _place(names: list[str], known: dict[str, str]) -> list[str | None]:
    """The layer of each node of one run, in execution order; a node not in `known` joins its neighbour."""
    got = [known.get(n) for n in names]
    for i, g in enumerate(got):
        if g is None:
            got[i] = next((got[j] for j in range(i - 1, -1, -1) if got[j] is not None),
                          next((h for h in got[i + 1:] if h is not None), None))
    return got


def _layer_stats(runs: list[list[tuple[str, float]]], known: dict[str, str]) -> dict[str, dict]:
    """Per layer: median (q1, q3) over runs of the sum of its nodes' times, and its nodes."""
    sums: dict[str, list[float]] = {}
    nodes: dict[str, list[str]] = {}
    for i, run in enumerate(runs):
        layers = _place([n for n, _ in run], known)
        per: dict[str, float] = {}
        for (n, us), layer in zip(run, layers, strict=True):
            if layer is None:
                continue
            per[layer] = per.get(layer, 0.0) + us
            if i == 0:
                nodes.setdefault(layer, []).append(n)
        for layer, v in per.items():
            sums.setdefault(layer, []).append(v)
    out = {}
    for layer, v in sums.items():
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        out[layer] = {"us": float(med), "q1_us": float(q1), "q3_us": float(q3), "nodes": nodes.get(layer, [])}
    return out


def _budget(fn) -> int:
    fn()
    n, t0 = 0, time.perf_counter()
    while n < PEER_RUNS and (n < 20 or time.perf_counter() - t0 < PEER_SECONDS):
        fn()
        n += 1
    return n


def onnxruntime_profile(onnx_path, x: np.ndarray, threads: int | None, spinning: bool = True) -> tuple[dict, str]:
    """ONNX Runtime's profiler: per layer, the median over runs of its nodes' summed kernel times (µs)."""
    import onnxruntime as ort

    from .peers import _version

    with tempfile.TemporaryDirectory() as d:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(d) / "ort")
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(PEER_WARMUP):
            sess.run(None, feed)
        n = _budget(lambda: sess.run(None, feed))
        events = json.loads(Path(sess.end_profiling()).read_text())
    nodes = [(e["name"].removesuffix("_kernel_time"), float(e["dur"])) for e in events
             if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    names = list(dict.fromkeys(n for n, _ in nodes))
    by = {n: [us for m, us in nodes if m == n] for n in names}
    total = min(len(v) for v in by.values()) if by else 0
    keep = range(total - min(n, total), total)  # the runs after warm-up
    runs = [[(name, by[name][k]) for name in names] for k in keep]
    setting = (f"ONNX Runtime {_version('onnxruntime')} profiler (enable_profiling), ORT_ENABLE_ALL, spinning "
               f"{'on' if spinning else 'off'}, {len(runs)} runs")
    return _layer_stats(runs, _known(onnx_path, names, strip=("_nchwc",))), setting


def openvino_profile(onnx_path, x: np.ndarray, threads: int | None, precision: str = "f32") -> tuple[dict, str]:
    """OpenVINO's per-layer counters (PERF_COUNT): per layer, the median over runs of its executed layers' µs."""
    import openvino as ov

    from .peers import _version

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision, "PERF_COUNT": True}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    req = ov.Core().compile_model(str(onnx_path), "CPU", config).create_infer_request()
    for _ in range(PEER_WARMUP):
        req.infer({0: x})
    runs = []

    def one():
        req.infer({0: x})
        runs.append([(p.node_name, p.real_time.total_seconds() * 1e6) for p in req.get_profiling_info()
                     if str(p.status).endswith("EXECUTED")])

    _budget(one)
    runs = runs[1:]
    names = list(dict.fromkeys(n for run in runs for n, _ in run))
    setting = (f"OpenVINO {_version('openvino')} CPU counters (PERF_COUNT), {precision} precision, "
               f"{len(runs)} runs")
    return _layer_stats(runs, _known(onnx_path, names, split="/")), setting


def _known(onnx_path, names: list[str], strip: tuple[str, ...] = (), split: str | None = None) -> dict[str, str]:
    """A runtime's node names -> layer: the name itself, less a suffix the runtime added, or before `split`."""
    layers = onnx_layers(onnx_path)
    out = {}
    for n in names:
        for cand in (n, *(n.removesuffix(s) for s in strip), n.split(split, 1)[0] if split else n):
            if cand in layers:
                out[n] = layers[cand]
                break
    return out


# -- one net ---------------------------------------------------------------------------------------------------
def per_layer(a: Arch, spec: TargetSpec, build_dir: str | os.PathLike, manifest: dict, weights=None,
              peers: Sequence[str] = PROFILED_PEERS, rows: Sequence[dict] = ()) -> dict:
    """The per-layer answer of one compiled net on a host-like target.

    Args:
        peers: the peers to profile (those of :data:`PROFILED_PEERS` that are installed).
        rows: compare's rows of this net and target: the peers' settings and whole-net figures, when timed.

    Returns:
        ``{"architecture", "target", "tvm_sum_us", "tvm_net_us", "peers": {name: setting or why not},
        "peer": the fastest profiled peer, "rows": [...]}`` with rows sorted by TVM's loss.
    """
    from ..backend.target import to_tvm_target
    from ..backend.trust import inside
    from ..profile.table import LatencyTable
    from .compile import MANIFEST, ONNX_FILE, lower_network
    from .model import build_network_from_arch, example_input
    from .peers import installed, not_run_reason

    why = not_run_reason(spec)
    if why is not None:
        raise TvmNasError(f"{spec.name}: per-layer answers run on host-like targets only ({why})")
    build_dir = Path(build_dir)
    library = inside(build_dir, manifest["library"]["file"], f"{build_dir / MANIFEST}: field 'library.file'")
    onnx_path = build_dir / ONNX_FILE
    x = example_input(a.input_shape, 0)
    tvm_target = to_tvm_target(spec)
    tpath = (manifest.get("latency_table") or {}).get("path")
    table = LatencyTable.load(tpath) if tpath and Path(tpath).is_file() else None

    layers = net_layers(a)
    model = build_network_from_arch(a, weights, 0)
    fused = lower_network(model, a, onnx_path if manifest.get("frontend") == "onnx" else None, tvm_target,
                          prepack=True)
    keys = _keys(fused)
    calls, dev = kernel_calls(library, bytecode_twin(fused, spec, manifest), x, spec)
    _check_args(library, calls, dev)
    timings = time_kernels(calls, dev, spec)
    for (name, _, _), t, (j, matched) in zip(calls, timings, assign([_key_of(c[0], keys) for c in calls],
                                                                     [op_keys(lay.key, table, tvm_target)
                                                                      for lay in layers]), strict=True):
        layers[j].kernels.append({"name": name, "key": _key_of(name, keys), "matched": matched,
                                  "measurement": figure(t)})

    by_runtime = {r["runtime"]: r for r in rows}
    profiles, settings = {}, {}
    for p in (p for p in PROFILED_PEERS if p in peers):
        if not installed(p):
            settings[p] = "not installed"
            continue
        setting = (by_runtime.get(p) or {}).get("setting") or ""
        try:
            if p == "onnxruntime":
                profiles[p], settings[p] = onnxruntime_profile(onnx_path, x, spec.threads,
                                                               spinning="spinning off" not in setting)
            else:
                prec = "bf16" if "bf16 precision" in setting else "f32"
                profiles[p], settings[p] = openvino_profile(onnx_path, x, spec.threads, prec)
        except Exception as e:  # a peer whose profile fails is said, not a failed compare
            from .peers import _one_line

            settings[p] = f"failed: {_one_line(e)}"

    def whole(p):  # the peer's whole-net figure: compare's, else its profile's total
        r = by_runtime.get(p) or {}
        return r.get("measured_us") or sum(v["us"] for v in profiles[p].values())

    fastest = min(profiles, key=whole) if profiles else None
    out_rows = []
    for lay in layers:
        tvm_us = sum(k["measurement"]["median"] for k in lay.kernels) if lay.kernels else None
        pred = None
        if table is not None and lay.key.key in table.entries:
            pred = _plain_op_us(table, lay.key)
        peer_us = {p: (prof.get(lay.path) or {}).get("us") for p, prof in profiles.items()}
        best = peer_us.get(fastest) if fastest else None
        out_rows.append({
            "architecture": a.label, "target": spec.name, "layer": lay.path, "op": lay.key.op,
            "op_key": lay.key.key, "kernels": lay.kernels, "tvm_us": tvm_us,
            "tvm_stable": all(k["measurement"]["stable"] for k in lay.kernels) if lay.kernels else None,
            "predicted_us": pred, "tvm_over_predicted": tvm_us / pred if tvm_us and pred else None,
            **{f"{p}_us": peer_us.get(p) for p in PROFILED_PEERS},
            "peer_nodes": {p: (prof.get(lay.path) or {}).get("nodes", []) for p, prof in profiles.items()},
            "peer": fastest, "peer_us": best,
            "loss_us": tvm_us - best if tvm_us is not None and best is not None else None})
    out_rows.sort(key=lambda r: (r["loss_us"] is None, -(r["loss_us"] or 0.0), -(r["tvm_us"] or 0.0)))
    tvm_row = by_runtime.get("tvm") or {}
    return {"architecture": a.label, "target": spec.name,
            "tvm_sum_us": sum(t.median for t in timings),
            "tvm_net_us": tvm_row.get("measured_us") or manifest.get("measured_latency_us"),
            "tvm_setting": f"each kernel of {library.name} alone, TVM time_evaluator on its own copies of the "
                           f"arguments (instrumented VM run), {SAMPLES} samples a round",
            "peers": settings, "peer": fastest,
            "peer_totals_us": {p: sum(v["us"] for v in prof.values()) for p, prof in profiles.items()},
            "rows": out_rows}


def _plain_op_us(table, key: OpKey) -> float:
    """The table's plain figure for an op (its entry less the per-call cost), with no fitted model applied."""
    if hasattr(table, "op_us"):
        return table.op_us(key)
    return table.latency(key, calibrated=False)
