"""A catalogue of bad input, damaged state, hostile files and interruption against the real `tvm-nas` command.

Each case runs the installed console script in a subprocess, in its own temporary folder, with a timeout, and is
classified (issue 23, "Done when"):

- ``good``: refused with a documented exit status (2, or 130 after an interrupt) and exactly one line on stderr
  that names the file, option or field; or a documented success whose result the case checks;
- ``weak``: refused, but the line does not name what is wrong, or stderr has more than one line (no traceback);
- ``bad``: a Python traceback, a hang past the case's timeout, exit 0 with a wrong or silent result, another exit
  status (1, a signal), or an input file changed or lost (every file in the case's folder, and every file a
  symlink there points at, is hashed before and after).

Valid starting files are made once (a quick target's untuned table of the `tiny` space, a 2-epoch search on the
built-in data, an untuned build, a 2-net validation, a run stopped after its profile) under ``--fixtures`` and
copied or mutated per case. The table per class and the total go to stdout; every case to
``bench/results/catalogue.json``.

    nice -n 10 .venv/bin/python bench/catalogue.py [--only PATTERN] [--jobs 2] [--list]
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TVM_NAS = Path(sys.executable).parent / "tvm-nas"
RESULTS = ROOT / "bench" / "results" / "catalogue.json"
DOCUMENTED_REFUSALS = (2, 130)

QUICK_TARGET = """name: quick
tvm: {kind: llvm, mcpu: auto}
threads: 2
evaluator: {number: 5, repeat: 5, min_repeat_ms: 5}
"""

TINY_SPACE = """name: mini
input: {resolution: 16, channels: 3}
num_classes: 10
stem: {out: 8, stride: 1}
first_block: {op: mbconv_k3_e1, out: 8}
stages:
  - {out: 16, blocks: 2, stride: 2}
candidates: [mbconv_k3_e3, mbconv_k5_e3]
allow_zero: true
head: {out: 32}
"""

# a short search: builtin data, few samples, 2 epochs
SHORT_SEARCH = ["--data", "builtin", "--epochs", "2", "--warmup-epochs", "1", "--max-samples", "40",
                "--batch-size", "16", "--quiet"]


# -- fixtures -------------------------------------------------------------------------------------------------------
def tvm_nas(*args: str, cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(TVM_NAS), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def make_fixtures(fx: Path) -> None:
    """The valid files every case starts from; made once, kept between runs of this script."""
    fx.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TVM_NAS_CACHE": str(fx / "cache")}
    (fx / "quick.yaml").write_text(QUICK_TARGET)
    (fx / "mini.yaml").write_text(TINY_SPACE)
    steps = [
        ("L/quick/tiny.latency.json", ["profile", "--space", "tiny", "--target", "quick.yaml", "--trials", "0",
                                       "--logs-dir", "L"]),
        ("S/final.arch.json", ["search", "--space", "tiny", "--target", "quick.yaml", "--logs-dir", "L",
                               "--latency-ms", "1", "--out", "S", "--data", "builtin", "--epochs", "2",
                               "--warmup-epochs", "1", "--max-samples", "200", "--quiet"]),
        ("B/manifest.json", ["compile", "--arch", "S/final.arch.json", "--target", "quick.yaml", "--logs-dir", "L",
                             "--untuned", "--no-measure", "--out", "B"]),
        ("V/validate.json", ["validate", "--space", "tiny", "--target", "quick.yaml", "--nets", "0",
                             "--logs-dir", "L", "--out", "V"]),
        ("R/run.json", ["run", "--space", "tiny", "--target", "quick.yaml", "--trials", "0", "--logs-dir", "L",
                        "--stop-after", "profile", "--out", "R"]),
    ]
    for made, argv in steps:
        if (fx / made).exists():
            continue
        print(f"fixture: tvm-nas {' '.join(argv)}", flush=True)
        r = tvm_nas(*argv, cwd=fx, env=env)
        if r.returncode != 0:
            sys.exit(f"fixture failed: tvm-nas {' '.join(argv)}\n{r.stderr[-3000:]}")
    # a valid calibration and a valid correction of the table, as validate would write them (not beside the table:
    # a case puts one there)
    if not (fx / "correction.json").exists():
        code = f"""
import json, numpy as np
from tvm_nas.profile.table import LatencyTable
from tvm_nas.profile.correction import fit_correction
t = LatencyTable.load({str(fx / 'L/quick/tiny.latency.json')!r})
json.dump({{"scale": 1.1, "offset_us": 2.0, "table_hash": t.hash, "form": "affine", "better": True}},
          open({str(fx / 'calibration.json')!r}, "w"))
rng = np.random.default_rng(0)
ops = [list(rng.choice(["mbconv_k3_e3", "mbconv_k5_e3", "mbconv_k3_e6", "zero"], 3)) for _ in range(14)]
p = rng.uniform(60, 340, 14)
fit = fit_correction(ops, p, p * rng.uniform(1.05, 1.3, 14),
                     {{"name": "table sum", "median_abs_error_pct": 50.0, "worst_abs_error_pct": 90.0}})
fit.pop("loo_us")
fit.update(table_hash=t.hash, trained_on=[list(map(str, o)) for o in ops])
json.dump(fit, open({str(fx / 'correction.json')!r}, "w"))
"""
        r = subprocess.run([sys.executable, "-c", code], cwd=fx, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"fixture failed: calibration/correction\n{r.stderr[-3000:]}")
    # a few images in class folders
    if not (fx / "img").exists():
        code = f"""
import numpy as np
from PIL import Image
from pathlib import Path
rng = np.random.default_rng(0)
for c in range(3):
    d = Path({str(fx / 'img')!r}) / f"class{{c}}"
    d.mkdir(parents=True)
    for i in range(8):
        Image.fromarray((rng.uniform(0, 255, (16, 16, 3))).astype(np.uint8)).save(d / f"{{i}}.png")
"""
        subprocess.run([sys.executable, "-c", code], check=True)


# -- cases ----------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    group: str
    argv: list[str]
    setup: Callable[[Path, Path], None] | None = None  # (case folder, fixtures)
    names: tuple[str, ...] = ()  # a good refusal names one of these
    expect: str = "refuse"  # refuse | ok | warn (exit 0 with one warning line naming `names`) | either
    check: Callable[[Path, subprocess.CompletedProcess], str | None] | None = None  # after success: why it is bad
    may_change: tuple[str, ...] = ()  # files the command may rewrite (relative to the case folder)
    env: dict = field(default_factory=dict)
    timeout: int = 120
    interrupt: tuple[float | str, int] | None = None  # (seconds or a file to wait for, signal): first run killed
    then: list[str] | Callable[[Path], list[str]] | None = None  # after the interrupt: this must succeed
    then_check: Callable[[Path, subprocess.CompletedProcess], str | None] | None = None


CASES: list[Case] = []


def case(*a, **k) -> None:
    CASES.append(Case(*a, **k))


def cp(src: str, dst: str | None = None):
    """Setup: copy a fixture file or folder into the case folder."""
    def go(d: Path, fx: Path) -> None:
        s, t = fx / src, d / (dst or src)
        t.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, t, symlinks=True)
        else:
            shutil.copy2(s, t)
    return go


def chain(*fns):
    def go(d: Path, fx: Path) -> None:
        for f in fns:
            f(d, fx)
    return go


def write(rel: str, data: str | bytes):
    def go(d: Path, fx: Path) -> None:
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            p.write_text(data)
    return go


def edit_json(rel: str, fn: Callable[[dict], object]):
    """Setup: load a JSON file in the case folder, apply fn (which edits in place or returns a new document)."""
    def go(d: Path, fx: Path) -> None:
        p = d / rel
        doc = json.loads(p.read_text())
        new = fn(doc)
        p.write_text(json.dumps(doc if new is None else new))
    return go


def edit_text(rel: str, fn: Callable[[str], str]):
    def go(d: Path, fx: Path) -> None:
        p = d / rel
        p.write_text(fn(p.read_text()))
    return go


def truncate(rel: str, frac: float = 0.5):
    def go(d: Path, fx: Path) -> None:
        p = d / rel
        b = p.read_bytes()
        p.write_bytes(b[: int(len(b) * frac)])
    return go


def symlink(rel: str, to: str):
    def go(d: Path, fx: Path) -> None:
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists() or p.is_symlink():
            p.unlink()
        p.symlink_to(to.replace("{d}", str(d)).replace("{fx}", str(fx)))
    return go


def loop(rel: str):
    def go(d: Path, fx: Path) -> None:
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists() or p.is_symlink():
            p.unlink()
        a = p.with_name(p.name + ".loop")
        p.symlink_to(a.name)
        a.symlink_to(p.name)
    return go


def mkdir(rel: str):
    def go(d: Path, fx: Path) -> None:
        p = d / rel
        if p.is_file() or p.is_symlink():
            p.unlink()
        p.mkdir(parents=True, exist_ok=True)
        (p / "inside").write_text("x")
    return go


def rm(rel: str):
    def go(d: Path, fx: Path) -> None:
        p = d / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    return go


def chmod(rel: str, mode: int):
    def go(d: Path, fx: Path) -> None:
        (d / rel).chmod(mode)
    return go


def nest(depth: int, kind: str = "json") -> str:
    return "[" * depth + "]" * depth if kind == "json" else "a: " + "[" * depth + "]" * depth + "\n"


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


def file_mutations(rel: str, kind: str) -> list[tuple[str, Callable]]:
    """The damage any file can take: (name, setup) after the valid file is in place."""
    out = [
        ("missing", rm(rel)),
        ("empty", write(rel, "")),
        ("truncated", truncate(rel, 0.5 if kind == "json" else 0.3)),  # half a target is still a valid target
        ("binary", write(rel, bytes(range(256)) * 4)),
        ("latin1", write(rel, "name: caf\xe9\n".encode("latin-1"))),
        ("utf16", write(rel, ('{"a": 1}' if kind == "json" else "name: x\n").encode("utf-16"))),
        ("deep_nesting", write(rel, nest(100_000, kind))),
        ("a_folder", mkdir(rel)),
        ("symlink_loop", loop(rel)),
        ("symlink_dangling", symlink(rel, "{d}/nothing-here")),
        ("symlink_dev_zero", symlink(rel, "/dev/zero")),
        ("symlink_out_etc_passwd", symlink(rel, "/etc/passwd")),
        ("huge_integer", write(rel, ('{"a": ' + "9" * 100_000 + "}") if kind == "json" else "a: " + "9" * 100_000)),
        ("a_list", write(rel, "[1, 2, 3]" if kind == "json" else "- 1\n- 2\n")),
    ]
    if kind == "json":
        out.append(("big_file", write(rel, '{"a": "' + "x" * (70 << 20) + '"}')))
    else:
        out += [("alias_bomb", write(rel, ALIAS_BOMB)), ("big_file", write(rel, "a: " + "x" * (2 << 20) + "\n"))]
    return out


# commands that read each format, cheap ones first; {F} is the file under test
def profile_space(f: str) -> list[str]:
    return ["profile", "--space", f, "--target", "quick.yaml", "--trials", "0", "--logs-dir", "L"]


def profile_target(f: str) -> list[str]:
    return ["profile", "--space", "tiny", "--target", f, "--trials", "0", "--logs-dir", "L"]


def search_table(f: str) -> list[str]:
    return ["search", "--space", "tiny", "--target", "quick.yaml", "--table", f, "--latency-ms", "1",
            "--out", "run", *SHORT_SEARCH]


def train_arch(f: str) -> list[str]:
    return ["train", "--arch", f, "--epochs", "1", "--max-samples", "40", "--quiet", "--out", "t"]


def compile_arch(f: str) -> list[str]:
    return ["compile", "--arch", f, "--target", "quick.yaml", "--logs-dir", "L", "--untuned", "--no-measure",
            "--no-verify", "--out", "b"]


BASE = chain(cp("quick.yaml"), cp("L"))  # the target and its logs dir with the table


def build_catalogue() -> None:
    # --- input files: every format, every kind of damage ------------------------------------------------------
    formats = [
        ("space", "yaml", "space.yaml", cp("mini.yaml", "space.yaml"), profile_space, ("space.yaml",)),
        ("target", "yaml", "t.yaml", cp("quick.yaml", "t.yaml"), profile_target, ("t.yaml",)),
        ("table", "json", "table.json", cp("L/quick/tiny.latency.json", "table.json"), search_table, ("table.json",)),
        ("arch-train", "json", "a.arch.json", cp("S/final.arch.json", "a.arch.json"), train_arch, ("a.arch.json",)),
        ("arch-compile", "json", "a.arch.json", cp("S/final.arch.json", "a.arch.json"), compile_arch,
         ("a.arch.json",)),
    ]
    for fmt, kind, rel, make, cmd, names in formats:
        for name, mutate in file_mutations(rel, kind):
            if fmt == "arch-compile" and name not in ("missing", "truncated", "deep_nesting", "a_folder",
                                                      "symlink_loop", "symlink_dev_zero"):
                continue
            case(f"{fmt}/{name}", "file:" + fmt.split("-")[0], cmd(rel), chain(BASE, make, mutate), names)

    # --- space: wrong types, absurd numbers, schema ----------------------------------------------------------
    space_edits = {
        "stages_a_number": ("stages:\n  - {out: 16, blocks: 2, stride: 2}", "stages: 5", "stages"),
        "width_mult_nan": ("num_classes: 10", "num_classes: 10\nwidth_mult: .nan", "width_mult"),
        "width_mult_inf": ("num_classes: 10", "num_classes: 10\nwidth_mult: .inf", "width_mult"),
        "width_mult_negative": ("num_classes: 10", "num_classes: 10\nwidth_mult: -1", "width_mult"),
        "width_mult_huge_channels": ("head: {out: 32}", "head: {out: 1024}\nwidth_mult: 16", "8192"),
        "width_mult_string": ("num_classes: 10", "num_classes: 10\nwidth_mult: '2'", "width_mult"),
        "resolution_huge": ("resolution: 16", "resolution: 1000000000", "resolution"),
        "resolution_zero": ("resolution: 16", "resolution: 0", "resolution"),
        "num_classes_negative": ("num_classes: 10", "num_classes: -3", "num_classes"),
        "num_classes_bool": ("num_classes: 10", "num_classes: true", "num_classes"),
        "stride_zero": ("stride: 2}", "stride: 0}", "stride"),
        "blocks_huge": ("blocks: 2", "blocks: 100000", "blocks"),
        "out_huge": ("{out: 16, blocks", "{out: 100000, blocks", "out"),
        "kernel_99": ("mbconv_k5_e3]", "mbconv_k99_e3]", "candidates"),
        "unknown_op": ("mbconv_k5_e3]", "conv_bogus]", "candidates"),
        "candidates_empty": ("[mbconv_k3_e3, mbconv_k5_e3]", "[]", "candidates"),
        "unknown_field": ("num_classes: 10", "num_classes: 10\nnum_clases: 10", "num_clases"),
        "duplicate_key": ("num_classes: 10", "num_classes: 10\nnum_classes: 12", "num_classes"),
        "alias_in_stages": ("stages:\n  - {out: 16, blocks: 2, stride: 2}",
                            "s: &s {out: 16, blocks: 2, stride: 2}\nstages:\n  - *s", "alias"),
        "merge_key": ("stem: {out: 8, stride: 1}", "base: &b {out: 8}\nstem: {<<: *b, stride: 1}", "alias"),
        "name_escapes": ("name: mini", "name: ../../x", "name"),
        "name_absolute": ("name: mini", "name: /tmp/x", "name"),
        "name_long": ("name: mini", "name: " + "a" * 500, "name"),
        "stages_2001": ("stages:\n  - {out: 16, blocks: 2, stride: 2}",
                        "stages:\n" + "  - {out: 16, blocks: 1, stride: 1}\n" * 2001, "stages"),
        "first_block_op_zero": ("op: mbconv_k3_e1", "op: zero", "first_block"),
        "channels_string": ("channels: 3", "channels: three", "channels"),
        "yaml_syntax": ("stages:", "stages: [", "space.yaml"),
        "tab_indent": ("stem: {out: 8, stride: 1}", "stem:\n\tout: 8", "space.yaml"),
    }
    for name, (old, new, field_) in space_edits.items():
        case(f"space/{name}", "file:space", profile_space("space.yaml"),
             chain(BASE, cp("mini.yaml", "space.yaml"),
                   edit_text("space.yaml", lambda s, o=old, n=new: s.replace(o, n))),
             ("space.yaml", field_))
    case("space/unknown_name", "file:space", profile_space("nope"), BASE, ("nope",))
    case("space/a_directory_path", "file:space", profile_space("L"), BASE, ("L",))

    # --- target: wrong types, absurd numbers -----------------------------------------------------------------
    target_edits = {
        "threads_zero": ("threads: 2", "threads: 0", "threads"),
        "threads_negative": ("threads: 2", "threads: -4", "threads"),
        "threads_huge": ("threads: 2", "threads: 100000", "threads"),
        "threads_string": ("threads: 2", "threads: two", "threads"),
        "number_zero": ("number: 5", "number: 0", "number"),
        "number_huge": ("number: 5", "number: 1000000000", "number"),
        "repeat_nan": ("repeat: 5", "repeat: .nan", "repeat"),
        "min_repeat_ms_inf": ("min_repeat_ms: 5", "min_repeat_ms: .inf", "min_repeat_ms"),
        "min_repeat_ms_negative": ("min_repeat_ms: 5", "min_repeat_ms: -5", "min_repeat_ms"),
        "tvm_a_number": ("tvm: {kind: llvm, mcpu: auto}", "tvm: 5", "tvm"),
        "tvm_legacy_string": ("tvm: {kind: llvm, mcpu: auto}", "tvm: llvm -mcpu=native", "tvm"),
        "tvm_kind_bogus": ("kind: llvm", "kind: bogus", "kind"),
        "mcpu_notacpu": ("mcpu: auto", "mcpu: notacpu", "notacpu"),
        "mcpu_a_list": ("mcpu: auto", "mcpu: [a, b]", "mcpu"),
        "alias_bomb_in_tvm": ("tvm: {kind: llvm, mcpu: auto}",
                              ALIAS_BOMB.replace("\n", "\n  ").join(["tvm:\n  kind: llvm\n  ", ""]).rstrip(),
                              "alias"),
        "duplicate_key": ("threads: 2", "threads: 2\nthreads: 3", "threads"),
        "unknown_field": ("threads: 2", "threads: 2\nthreds: 2", "threds"),
        "runner_bogus": ("threads: 2", "threads: 2\nrunner: lcoal", "runner"),
        "rpc_port_negative": ("threads: 2", "threads: 2\nrunner: {kind: rpc, tracker_host: 127.0.0.1, "
                              "tracker_port: -1, key: x}", "tracker_port"),
        "rpc_port_huge": ("threads: 2", "threads: 2\nrunner: {kind: rpc, tracker_host: 127.0.0.1, "
                          "tracker_port: 99999999, key: x}", "tracker_port"),
        "name_escapes": ("name: quick", "name: ../../etc", "name"),
        "evaluator_a_list": ("evaluator: {number: 5, repeat: 5, min_repeat_ms: 5}", "evaluator: [5, 5]",
                             "evaluator"),
    }
    for name, (old, new, field_) in target_edits.items():
        case(f"target/{name}", "file:target", profile_target("t.yaml"),
             chain(BASE, cp("quick.yaml", "t.yaml"), edit_text("t.yaml", lambda s, o=old, n=new: s.replace(o, n))),
             ("t.yaml", field_))
    case("target/unknown_name", "file:target", profile_target("nope"), BASE, ("nope",))

    # --- latency table: wrong types and numbers deep inside ---------------------------------------------------
    def entry(k):
        return lambda d: d["entries"][next(iter(d["entries"]))].update(k)
    table_edits = {
        "invocation_null": (lambda d: d.update(invocation=None), "invocation"),
        "settings_a_number": (lambda d: d.update(settings=5), "settings"),
        "settings_trials_string": (lambda d: d["settings"].update(trials="64"), "trials"),
        "timing_a_string": (lambda d: d.update(timing="fast"), "timing"),
        "space_no_hash": (lambda d: d["space"].pop("hash"), "space"),
        "space_hash_other": (lambda d: d["space"].update(hash="0123456789abcdef"), "space"),
        "target_hash_other": (lambda d: d["target"].update(hash="0123456789abcdef"), "target"),
        "unknown_header_field": (lambda d: d.update(bogus=1), "bogus"),
        "entries_a_list": (lambda d: d.update(entries=[]), "entries"),
        "entries_empty": (lambda d: d.update(entries={}), "table.json"),
        "entry_missing": (lambda d: d["entries"].pop(next(iter(d["entries"]))), "table.json"),
        "median_nan": (entry({"median": math.nan}), "median"),
        "median_inf": (entry({"median": math.inf}), "median"),
        "median_negative": (entry({"median": -5.0}), "median"),
        "median_zero": (entry({"median": 0.0}), "median"),
        "median_huge": (entry({"median": 1e300}), "median"),
        "median_tiny": (entry({"median": 1e-300}), "median"),
        "median_string": (entry({"median": "5"}), "median"),
        "median_bool": (entry({"median": True}), "median"),
        "std_missing": (lambda d: d["entries"][next(iter(d["entries"]))].pop("std"), "std"),
        "count_negative": (entry({"count": -1}), "count"),
        "count_float": (entry({"count": 2.5}), "count"),
        "invocation_median_huge": (lambda d: d["invocation"].update(median=1e9), "invocation"),
        "invocation_median_nan": (lambda d: d["invocation"].update(median=math.nan), "invocation"),
        "schema_99": (lambda d: d.update(schema=99), "schema"),
        "units_ms": (lambda d: d.update(units="ms"), "units"),
    }
    for name, (fn, field_) in table_edits.items():
        case(f"table/{name}", "file:table", search_table("table.json"),
             chain(BASE, cp("L/quick/tiny.latency.json", "table.json"), edit_json("table.json", fn)),
             ("table.json", field_))
    # a damaged table in the logs dir: profile refuses it and keeps it as it was
    for name, fn in [("truncated", truncate("L/quick/tiny.latency.json")),
                     ("median_nan", edit_json("L/quick/tiny.latency.json", table_edits["median_nan"][0])),
                     ("invocation_null", edit_json("L/quick/tiny.latency.json", table_edits["invocation_null"][0])),
                     ("a_folder", mkdir("L/quick/tiny.latency.json"))]:
        case(f"table-in-logs/profile_{name}", "file:table", profile_target("quick.yaml"), chain(BASE, fn),
             ("tiny.latency.json",))
    for name, fn in [("truncated", truncate("L/quick/tiny.latency.json")),
                     ("settings_a_number",
                      edit_json("L/quick/tiny.latency.json", table_edits["settings_a_number"][0]))]:
        case(f"table-in-logs/compile_{name}", "file:table", compile_arch("a.arch.json"),
             chain(BASE, cp("S/final.arch.json", "a.arch.json"), fn), ("tiny.latency.json",))
        case(f"table-in-logs/validate_{name}", "file:table",
             ["validate", "--space", "tiny", "--target", "quick.yaml", "--logs-dir", "L", "--nets", "0",
              "--out", "v"], chain(BASE, fn), ("tiny.latency.json",))

    # --- calibration and correction: a bad fitted model is a warning, the plain table is used ------------------
    cal = "L/quick/tiny.calibration.json"
    cor = "L/quick/tiny.correction.json"

    def arch_prediction_ok(d: Path, r) -> str | None:
        a = d / "run" / "final.arch.json"
        if not a.exists():
            return "no final.arch.json"
        p = json.loads(a.read_text()).get("predicted_latency_us")
        if not isinstance(p, int | float) or not math.isfinite(p) or p <= 0:
            return f"predicted_latency_us {p!r} written"
        return None

    search_l = ["search", "--space", "tiny", "--target", "quick.yaml", "--logs-dir", "L", "--latency-ms", "1",
                "--out", "run", *SHORT_SEARCH]
    fitted_cases = [
        ("calibration/scale_negative", cal, lambda d: d.update(scale=-1.0)),
        ("calibration/scale_nan", cal, lambda d: d.update(scale=math.nan)),
        ("calibration/scale_huge", cal, lambda d: d.update(scale=1e300)),
        ("calibration/offset_minus_1s", cal, lambda d: d.update(offset_us=-1e6, scale=1.0)),
        ("calibration/scale_string", cal, lambda d: d.update(scale="1.1")),
        ("calibration/deep", cal, lambda d: nest_doc(40)),
        ("correction/no_loo_field", cor, lambda d: d.pop("loo_median_abs_error_pct")),
        ("correction/booster_garbage", cor, lambda d: d.update(booster="{not xgboost}")),
        ("correction/features_wrong_first", cor, lambda d: d.update(features=["x", "table_sum_us"])),
        ("correction/booster_deep", cor, lambda d: d.update(booster="[" * 5000 + "]" * 5000)),
    ]
    for cid, rel, fn in fitted_cases:
        src = "calibration.json" if "calibration" in cid else "correction.json"
        case(cid, "file:" + cid.split("/")[0], search_l, chain(BASE, cp(src, rel), edit_json(rel, fn)),
             (Path(rel).name,), expect="warn", check=arch_prediction_ok, timeout=240)
    case("calibration/truncated", "file:calibration", search_l, chain(BASE, cp("calibration.json", cal), truncate(cal)),
         ("calibration.json",), expect="warn", check=arch_prediction_ok, timeout=240)
    case("calibration/symlink_out_etc_passwd", "file:calibration", search_l, chain(BASE, symlink(cal, "/etc/passwd")),
         ("calibration.json",), expect="warn", check=arch_prediction_ok, timeout=240)
    case("correction/truncated", "file:correction", search_l, chain(BASE, cp("correction.json", cor), truncate(cor)),
         ("correction.json",), expect="warn", check=arch_prediction_ok, timeout=240)
    case("calibration/valid_used", "file:calibration", search_l, chain(BASE, cp("calibration.json", cal)),
         expect="ok", check=arch_prediction_ok, timeout=240)

    # --- architecture files -------------------------------------------------------------------------------------
    arch_edits = {
        "ops_too_few": (lambda d: d.update(ops=d["ops"][:1]), "ops"),
        "ops_unknown": (lambda d: d.update(ops=["conv_bogus"] * len(d["ops"])), "ops"),
        "ops_null": (lambda d: d.update(ops=None), "ops"),
        "ops_300": (lambda d: d.update(ops=["zero"] * 300), "ops"),
        "probability_above_1": (lambda d: d.update(probabilities=[{o: 1.5} for o in d["ops"]]), "probabilit"),
        "predicted_negative": (lambda d: d.update(predicted_latency_us=-118.8), "predicted_latency_us"),
        "predicted_nan": (lambda d: d.update(predicted_latency_us=math.nan), "predicted_latency_us"),
        "unknown_field": (lambda d: d.update(probabilites=None), "probabilites"),
        "space_hash_other": (lambda d: d["space"].update(hash="0123456789abcdef"), "hash"),
        "space_width_mult_inf": (lambda d: d["space"]["definition"].update(width_mult=math.inf), "width_mult"),
        "space_width_mult_huge": (lambda d: (d["space"]["definition"].update(width_mult=16.0),
                                               d["space"]["definition"]["head"].update(out=1024)), "8192"),
        "space_resolution_huge": (lambda d: d["space"]["definition"]["input"].update(resolution=10**9),
                                  "resolution"),
        "space_a_string": (lambda d: d.update(space="tiny"), "space"),
        "schema_99": (lambda d: d.update(schema=99), "schema"),
    }
    for name, (fn, _field) in arch_edits.items():
        case(f"arch/{name}", "file:arch", train_arch("a.arch.json"),
             chain(BASE, cp("S/final.arch.json", "a.arch.json"), edit_json("a.arch.json", fn)), ("a.arch.json",))
    for name in ("ops_unknown", "predicted_negative", "space_width_mult_huge"):
        case(f"arch-compile/{name}", "file:arch", compile_arch("a.arch.json"),
             chain(BASE, cp("S/final.arch.json", "a.arch.json"), edit_json("a.arch.json", arch_edits[name][0])),
             ("a.arch.json",))
        case(f"arch-compare/{name}", "file:arch",
             ["compare", "--arch", "a.arch.json", "--target", "quick.yaml", "--logs-dir", "L", "--untuned"],
             chain(BASE, cp("S/final.arch.json", "a.arch.json"), edit_json("a.arch.json", arch_edits[name][0])),
             ("a.arch.json",))
    case("arch-validate/truncated", "file:arch",
         ["validate", "--space", "tiny", "--target", "quick.yaml", "--logs-dir", "L", "--arch", "a.arch.json",
          "--out", "v"], chain(BASE, cp("S/final.arch.json", "a.arch.json"), truncate("a.arch.json")),
         ("a.arch.json",))
    case("arch-validate/other_space", "file:arch",
         ["validate", "--space", "mini.yaml", "--target", "quick.yaml", "--logs-dir", "L", "--arch", "a.arch.json",
          "--out", "v"], chain(BASE, cp("mini.yaml"), cp("S/final.arch.json", "a.arch.json")), ("a.arch.json",))

    # --- weights (.pt) ---------------------------------------------------------------------------------------
    compile_w = ["compile", "--arch", "a.arch.json", "--weights", "w.pt", "--target", "quick.yaml", "--logs-dir",
                 "L", "--untuned", "--no-measure", "--out", "b"]
    wsetup = chain(BASE, cp("S/final.arch.json", "a.arch.json"))
    for name, mutate in [("missing", lambda d, fx: None), ("empty", write("w.pt", "")),
                         ("garbage", write("w.pt", b"\x80\x04garbage" * 10)),
                         ("pickle_payload", write_pickle_payload("w.pt")),
                         ("a_folder", mkdir("w.pt")), ("symlink_loop", loop("w.pt")),
                         ("checkpoint_not_weights", cp("S/checkpoint.pt", "w.pt")),
                         ("wrong_shapes", write_torch("w.pt", "wrong_shapes")),
                         ("json_file", cp("S/final.arch.json", "w.pt"))]:
        case(f"weights/{name}", "file:weights", compile_w, chain(wsetup, mutate), ("w.pt",))

    # --- search checkpoint ------------------------------------------------------------------------------------
    resume = ["search", "--resume", "--out", "S", "--quiet"]
    ckpt_edits = [
        ("missing", rm("S/checkpoint.pt")), ("empty", write("S/checkpoint.pt", "")),
        ("truncated", truncate("S/checkpoint.pt")), ("garbage", write("S/checkpoint.pt", b"PK\x03\x04" * 100)),
        ("pickle_payload", write_pickle_payload("S/checkpoint.pt")), ("a_folder", mkdir("S/checkpoint.pt")),
        ("symlink_loop", loop("S/checkpoint.pt")), ("symlink_dev_zero", symlink("S/checkpoint.pt", "/dev/zero")),
        ("history_short", edit_ckpt("history_short")), ("epoch_negative", edit_ckpt("epoch_negative")),
        ("baseline_nan", edit_ckpt("baseline_nan")), ("weights_nan", edit_ckpt("weights_nan")),
        ("state_dict_shapes", edit_ckpt("state_dict_shapes")),
        ("config_json_truncated", truncate("S/config.json")), ("config_json_deep", write("S/config.json", nest(5000))),
        ("config_json_missing", rm("S/config.json")),
        ("config_epochs_string", edit_json("S/config.json", lambda d: d["search"].update(epochs="2"))),
        ("out_missing", rm("S")), ("out_a_file", chain(rm("S"), write("S", "x"))),
    ]
    for name, fn in edit_list(ckpt_edits):
        case(f"checkpoint/{name}", "file:checkpoint", resume, chain(BASE, cp("S"), fn),
             ("checkpoint.pt", "config.json", "S"), may_change=("S/log.jsonl",), timeout=180)

    # --- run.json -----------------------------------------------------------------------------------------------
    rresume = ["run", "--resume", "R", "--stop-after", "profile"]
    run_edits = [
        ("missing", rm("R/run.json")), ("empty", write("R/run.json", "")), ("truncated", truncate("R/run.json")),
        ("deep", write("R/run.json", nest(100_000))), ("a_list", write("R/run.json", "[]")),
        ("a_folder", mkdir("R/run.json")), ("symlink_loop", loop("R/run.json")),
        ("config_trials_string", edit_json("R/run.json", lambda d: d["config"].update(trials="64"))),
        ("config_epochs_zero", edit_json("R/run.json", lambda d: d["config"].update(epochs=0))),
        ("config_a_number", edit_json("R/run.json", lambda d: d.update(config=5))),
        ("budget_nan", edit_json("R/run.json", lambda d: d["done"]["profile"].update(budget_us=math.nan))),
        ("budget_negative", edit_json("R/run.json", lambda d: d["done"]["profile"].update(budget_us=-1.0))),
        ("table_path_escapes", edit_json("R/run.json",
                                         lambda d: d["done"]["profile"].update(table="../../etc/passwd"))),
        ("table_path_absolute", edit_json("R/run.json", lambda d: d["done"]["profile"].update(table="/etc/passwd"))),
        ("artifact_escapes", edit_json("R/run.json", lambda d: d["done"]["profile"]["artifacts"].update(
            {"/etc/passwd": "0" * 64}))),
        ("digest_not_sha", edit_json("R/run.json", lambda d: d["done"]["profile"]["artifacts"].update(
            {"table/tiny.latency.json": "abc"}))),
        ("unknown_stage", edit_json("R/run.json", lambda d: d["done"].update(trian={}))),
        ("train_done_without_search", edit_json("R/run.json", lambda d: d["done"].update(
            train={"seconds": 1.0, "artifacts": {}}))),
        ("done_a_list", edit_json("R/run.json", lambda d: d.update(done=[]))),
        ("schema_2", edit_json("R/run.json", lambda d: d.update(schema=2))),
        ("run_dir_missing", rm("R")), ("run_dir_a_file", chain(rm("R"), write("R", "x"))),
    ]
    for name, fn in run_edits:
        case(f"run.json/{name}", "file:run.json", rresume, chain(BASE, cp("R"), fn), ("run.json", "R"))
    # an artifact deleted or edited: that stage runs again (the table here is reused from the logs dir: cheap)
    case("run.json/artifact_deleted_reruns", "file:run.json", rresume,
         chain(BASE, cp("R"), rm("R/table/tiny.latency.json")),
         expect="ok", may_change=("R/run.json", "L/quick/tiny.latency.json"),  # the table: 'updated' only
         check=lambda d, r: None if (d / "R/table/tiny.latency.json").exists()
         else "the deleted table was not made again")

    # --- validate.json and manifest.json: read by run's later stages; here by hand-made runs is too costly, so
    # the readers are reached through the files a command is pointed at
    for name, fn in [("truncated", truncate("V/validate.json")), ("deep", write("V/validate.json", nest(100_000))),
                     ("measured_null", edit_json("V/validate.json", lambda d: d["nets"][0].update(measured_us=None)))]:
        case(f"validate.json/{name}_then_validate", "file:validate.json",
             ["validate", "--space", "tiny", "--target", "quick.yaml", "--logs-dir", "L", "--nets", "0",
              "--out", "V"], chain(BASE, cp("V"), fn), ("validate.json", "V"), expect="either",
             may_change=("V/validate.json", "V/validate.png"), timeout=300)
    for name, fn in [("truncated", truncate("B/manifest.json")),
                     ("library_null", edit_json("B/manifest.json", lambda d: d.update(library=None))),
                     ("library_outside", edit_json("B/manifest.json", lambda d: d["library"].update(
                         file="/usr/lib/x86_64-linux-gnu/libc.so.6")))]:
        case(f"manifest/{name}_then_compile", "file:manifest", compile_arch("S/final.arch.json")[:-1] + ["B"],
             chain(BASE, cp("S"), cp("B"), fn), ("manifest.json", "B"), expect="either",
             may_change=("B/manifest.json", "B/model.so", "B/model.onnx"), timeout=300)

    # --- image folders ------------------------------------------------------------------------------------------
    train_img = ["train", "--arch", "a.arch.json", "--data", "imagefolder:img", "--epochs", "1", "--quiet",
                 "--out", "t"]
    isetup = chain(BASE, cp("S/final.arch.json", "a.arch.json"), cp("img"))
    img_cases = [
        ("missing", rm("img"), ("img",)),
        ("a_file", chain(rm("img"), write("img", "x")), ("img",)),
        ("empty", chain(rm("img"), mkdir("img"), rm("img/inside")), ("img",)),
        ("one_class", chain(rm("img/class1"), rm("img/class2")), ("img", "class")),
        ("all_unreadable", lambda d, fx: [p.write_bytes(b"not a png") for p in (d / "img").rglob("*.png")],
         ("img", "unreadable")),
        ("loop_to_itself", symlink("img/class0/loop", "{d}/img"), None),
        ("loop_to_parent", symlink("img/class1/up", ".."), None),
        ("two_loops", chain(symlink("img/class0/a", "{d}/img"), symlink("img/class2/b", "{d}/img/class0")), None),
        ("file_symlink_loop", loop("img/class0/x.png"), None),
        ("unknown_spec", None, ("imagefolder",)),
    ]
    for name, fn, names in img_cases:
        argv = train_img if name != "unknown_spec" else train_img[:4] + ["bogus:img"] + train_img[5:]
        if names is None:  # links back into the folder: not followed, each image counted once, success
            case(f"images/{name}", "file:images", argv, chain(isetup, fn), expect="ok", timeout=240,
                 check=train_counts_images(24))
        else:
            case(f"images/{name}", "file:images", argv, chain(isetup, fn) if fn else isetup, names, timeout=240)
    case("images/test_data_missing", "file:images", train_img + ["--test-data", "imagefolder:nothere"], isetup,
         ("nothere",))
    case("images/cifar_missing", "file:images", train_img[:4] + ["cifar10:nothere"] + train_img[5:], isetup,
         ("nothere",))

    # --- outputs: unwritable, a file, a folder, an input -----------------------------------------------------
    arch_in = chain(BASE, cp("S/final.arch.json", "a.arch.json"))
    outs = [
        ("compare_csv_is_arch", ["compare", "--arch", "a.arch.json", "--target", "quick.yaml", "--csv",
                                 "a.arch.json", "--logs-dir", "L"], arch_in, ("a.arch.json",)),
        ("compare_json_is_folder", ["compare", "--arch", "a.arch.json", "--target", "quick.yaml", "--json", "L",
                                    "--logs-dir", "L"], arch_in, ("L",)),
        ("compare_json_is_target", ["compare", "--arch", "a.arch.json", "--target", "quick.yaml", "--json",
                                    "quick.yaml", "--logs-dir", "L"], arch_in, ("quick.yaml",)),
        ("compare_csv_symlink_to_arch", ["compare", "--arch", "a.arch.json", "--target", "quick.yaml", "--csv",
                                         "x.csv", "--logs-dir", "L"], chain(arch_in, symlink("x.csv", "a.arch.json")),
         ("x.csv", "a.arch.json")),
        ("compare_csv_under_a_file", ["compare", "--arch", "a.arch.json", "--target", "quick.yaml", "--csv",
                                      "quick.yaml/x.csv", "--logs-dir", "L"], arch_in, ("quick.yaml",)),
        ("compare_out_is_a_file", ["compare", "--arch", "a.arch.json", "--target", "quick.yaml", "--out",
                                   "quick.yaml", "--logs-dir", "L"], arch_in, ("quick.yaml",)),
        ("compare_csv_unwritable", ["compare", "--arch", "a.arch.json", "--target", "quick.yaml", "--csv",
                                    "/proc/catalogue-ro/x.csv", "--logs-dir", "L"], arch_in,
         ("/proc/catalogue-ro",)),
        ("compile_out_is_a_file", compile_arch("a.arch.json")[:-1] + ["a.arch.json"], arch_in, ("a.arch.json",)),
        ("compile_out_unwritable", compile_arch("a.arch.json")[:-1] + ["/proc/catalogue-ro/b"],
         arch_in, ("/proc/catalogue-ro",)),
        ("train_out_is_a_file", train_arch("a.arch.json")[:-1] + ["a.arch.json"], arch_in, ("a.arch.json",)),
        ("train_out_unwritable", train_arch("a.arch.json")[:-1] + ["/proc/catalogue-ro/t"],
         arch_in, ("/proc/catalogue-ro",)),
        ("train_out_has_model", train_arch("a.arch.json"), chain(arch_in, write("t/model.pt", "earlier")),
         ("model.pt", "--force")),
        ("search_out_is_a_file", search_l[:9] + ["a.arch.json"] + search_l[10:], arch_in, ("a.arch.json",)),
        ("search_out_unwritable", search_l[:9] + ["/proc/catalogue-ro/run"] + search_l[10:],
         arch_in, ("/proc/catalogue-ro",)),
        ("search_out_existing_run", search_l[:9] + ["S"] + search_l[10:], chain(BASE, cp("S")), ("S",)),
        ("profile_logs_is_a_file", profile_target("quick.yaml")[:-1] + ["quick.yaml"], BASE, ("quick.yaml",)),
        ("profile_logs_unwritable", profile_target("quick.yaml")[:-1] + ["/proc/catalogue-ro"],
         BASE, ("/proc/catalogue-ro",)),
        ("validate_out_is_a_file", ["validate", "--space", "tiny", "--target", "quick.yaml", "--logs-dir", "L",
                                    "--nets", "0", "--out", "quick.yaml"], BASE, ("quick.yaml",)),
        ("validate_out_unwritable", ["validate", "--space", "tiny", "--target", "quick.yaml", "--logs-dir", "L",
                                     "--nets", "0", "--out", "/proc/catalogue-ro/v"], BASE,
         ("/proc/catalogue-ro",)),
        ("run_out_is_a_file", ["run", "--target", "quick.yaml", "--logs-dir", "L", "--trials", "0", "--out",
                               "quick.yaml", "--stop-after", "profile"], BASE, ("quick.yaml",)),
        ("run_out_unwritable", ["run", "--target", "quick.yaml", "--logs-dir", "L", "--trials", "0", "--out",
                                "/proc/catalogue-ro/r", "--stop-after", "profile"], BASE,
         ("/proc/catalogue-ro",)),
        ("run_out_existing_run", ["run", "--target", "quick.yaml", "--logs-dir", "L", "--trials", "0", "--out",
                                  "R", "--stop-after", "profile"], chain(BASE, cp("R")), ("R",)),
    ]
    for name, argv, setup, names in outs:
        case(f"output/{name}", "output", argv, setup, names, timeout=180)

    # --- TVM_NAS_CACHE pointing at a file, under a file, unwritable -------------------------------------------
    for cmd_name, argv in [("compile", compile_arch("a.arch.json")),
                           ("compare", ["compare", "--arch", "a.arch.json", "--target", "quick.yaml"]),
                           ("validate", ["validate", "--space", "tiny", "--target", "quick.yaml", "--nets", "0"]),
                           ("run", ["run", "--target", "quick.yaml", "--trials", "0"]),
                           ("profile", profile_target("quick.yaml")),
                           ("train", train_arch("a.arch.json"))]:
        for where, extra in [("a_file", write("cachefile", "x")), ("under_a_file", write("cachefile", "x"))]:
            sub = "cachefile" if where == "a_file" else "cachefile/below"
            case(f"cache/{cmd_name}_{where}", "cache", argv, chain(arch_in, extra), ("TVM_NAS_CACHE",),
                 env={"TVM_NAS_CACHE": "{d}/" + sub}, expect="refuse" if cmd_name not in ("profile", "train")
                 else "either", may_change=("L/quick/tiny.latency.json",), timeout=180)
    case("cache/compile_unwritable", "cache", compile_arch("a.arch.json"), arch_in, ("TVM_NAS_CACHE",),
         env={"TVM_NAS_CACHE": "/proc/catalogue-ro/cache"})

    # --- numeric options out of range -----------------------------------------------------------------------
    prof = ["profile", "--space", "tiny", "--target", "quick.yaml", "--logs-dir", "L"]
    srch = ["search", "--space", "tiny", "--target", "quick.yaml", "--logs-dir", "L", "--latency-ms", "1",
            "--out", "run", *SHORT_SEARCH]
    trn = ["train", "--arch", "a.arch.json", "--out", "t", "--epochs", "1", "--max-samples", "40", "--quiet"]
    cmp_ = ["compile", "--arch", "a.arch.json", "--target", "quick.yaml", "--logs-dir", "L", "--untuned",
            "--no-measure", "--out", "b"]
    cmpr = ["compare", "--arch", "a.arch.json", "--target", "quick.yaml", "--logs-dir", "L", "--untuned"]
    val = ["validate", "--space", "tiny", "--target", "quick.yaml", "--logs-dir", "L", "--out", "v"]
    run_ = ["run", "--target", "quick.yaml", "--logs-dir", "L", "--trials", "0", "--out", "r", "--stop-after",
            "profile"]
    opts = [
        (prof, "--seed", ["-1", "18446744073709551617", "1.5"]), (prof, "--jobs", ["0", "100000"]),
        (prof, "--trials", ["-3", "1e8", "99999999999"]), (prof, "--batch", ["0", "5000"]),
        (prof + ["--trials", "5"], "--time-budget", ["-5m", "abc", "0s"]),
        (srch, "--latency-ms", ["nan", "inf", "-1", "0", "1e300"]), (srch, "--threads", ["-1", "4096"]),
        (srch, "--nproc", ["0", "5000"]), (srch, "--workers", ["-1", "1000"]), (srch, "--seed", ["-2"]),
        (srch, "--epochs", ["0", "-1"]), (srch, "--warmup-epochs", ["5", "-1"]),
        (srch, "--batch-size", ["0", "10000000"]), (srch, "--max-samples", ["1", "0"]),
        (srch, "--val-fraction", ["1.5", "-0.1", "nan", "0", "1"]), (srch, "--weight-lr", ["-1", "nan", "inf"]),
        (srch, "--momentum", ["nan", "-1"]), (srch, "--weight-decay", ["nan", "-1"]),
        (srch, "--label-smoothing", ["2", "nan"]), (srch, "--arch-lr", ["nan", "inf", "-1"]),
        (srch, "--arch-every", ["0"]), (srch, "--arch-steps", ["0"]), (srch, "--mul-a", ["nan"]),
        (srch, "--mul-b", ["inf"]), (srch, "--add-lambda", ["nan"]),
        (srch + ["--arch-update", "reinforce"], "--reinforce-nets", ["0"]),
        (srch + ["--arch-update", "reinforce"], "--reinforce-w", ["nan"]),
        (srch + ["--arch-update", "reinforce"], "--reinforce-baseline-decay", ["2", "nan"]),
        (trn, "--epochs", ["0"]), (trn, "--lr", ["-1", "nan", "inf"]), (trn, "--seed", ["-1"]),
        (trn, "--batch-size", ["0"]), (trn, "--val-fraction", ["2", "nan"]), (trn, "--label-smoothing", ["nan"]),
        (trn, "--weight-decay", ["-1"]), (trn, "--threads", ["5000"]), (trn, "--max-samples", ["1"]),
        (cmp_, "--seed", ["-5", "18446744073709551617"]), (cmp_, "--trials", ["-1"]),
        (cmpr, "--trials", ["-1"]), (cmpr, "--order", ["sideways"]), (cmpr, "--peers", ["nosuchpeer"]),
        (val, "--nets", ["-1", "1000000000"]), (val, "--seed", ["-1"]),
        (run_, "--epochs", ["0"]), (run_, "--train-epochs", ["0"]), (run_, "--threads", ["0", "5000"]),
        (run_, "--latency-ms", ["inf", "-3"]), (run_, "--max-samples", ["1"]), (run_, "--seed", ["-1"]),
        (run_, "--arch-lr", ["nan", "-1"]), (run_ + ["--epochs", "2"], "--warmup-epochs", ["8"]),
        (run_, "--trials", ["-1"]),
        (run_, "--stop-after", ["nowhere"]),
    ]
    for base, opt, values in opts:
        for v in values:
            argv = list(base)
            if opt in argv:  # replace the default the base gives
                i = argv.index(opt)
                argv[i + 1] = v
            else:
                argv += [f"{opt}={v}"]
            case(f"option/{argv[0]}{opt}={v}", "option", argv,
                 chain(BASE, cp("S/final.arch.json", "a.arch.json")), (opt,), timeout=180)
    case("option/unknown_option", "option", cmpr + ["--nonsense"], arch_in, ("--nonsense",))
    case("option/no_command", "option", [], None, ("tvm-nas",))
    case("option/search_without_space", "option", ["search", "--target", "quick.yaml", "--latency-ms", "1"], BASE,
         ("--space",))
    case("option/search_resume_no_out", "option", ["search", "--resume"], BASE, ("--out", "--resume"))
    case("option/data_unknown_kind", "option", srch[:-len(SHORT_SEARCH)] + ["--data", "mnist:x", "--quiet"], BASE,
         ("--data", "mnist"))
    # a resumed run keeps its own settings: one given again, and different, is refused or said, not ignored
    case("option/run_resume_and_other_space", "option",
         ["run", "--resume", "R", "--space", "proxyless-cifar", "--stop-after", "profile"], chain(BASE, cp("R")),
         ("--space",), timeout=60)
    case("option/run_resume_stop_after_a_done_stage", "option", ["run", "--resume", "R", "--stop-after", "profile"],
         chain(BASE, cp("R")), ("profile",), expect="either", timeout=60, may_change=("R/run.json",),
         check=lambda d, r: None if list(json.loads((d / "R/run.json").read_text())["done"]) == ["profile"]
         else "ran past the stage --stop-after names")

    # --- interruption: kill a short command, then the same command must finish without losing finished work -----
    qprof = ["profile", "--space", "tiny", "--target", "quick.yaml", "--trials", "0", "--logs-dir", "P"]
    for sig, delay in [(signal.SIGINT, 8.0), (signal.SIGKILL, 8.0), (signal.SIGKILL, 20.0), (signal.SIGINT, 20.0)]:
        case(f"interrupt/profile_{sig.name}_{int(delay)}s", "interrupt", qprof, cp("quick.yaml"),
             interrupt=(delay, sig), then=qprof, then_check=table_complete("P/quick/tiny.latency.json"),
             may_change=("P/quick/tiny.latency.json",), timeout=300)
    longer = ["search", "--space", "tiny", "--target", "quick.yaml", "--logs-dir", "L", "--latency-ms", "1",
              "--out", "run", "--data", "builtin", "--epochs", "4", "--warmup-epochs", "1", "--max-samples", "200",
              "--quiet"]
    for sig, when in [(signal.SIGINT, "run/log.jsonl"), (signal.SIGKILL, "run/log.jsonl"),
                      (signal.SIGKILL, 3.0), (signal.SIGINT, 3.0)]:
        tag = "after_first_epoch" if isinstance(when, str) else f"{int(when)}s"
        # killed before the first epoch's checkpoint (and config.json) exist: nothing to resume, the same command
        # again starts it
        def again(d: Path, when=when) -> list[str]:  # the same command, with --resume once a checkpoint exists
            resumed = ["search", "--resume", "--out", "run", "--quiet"]
            return resumed if isinstance(when, str) or (d / "run/checkpoint.pt").exists() else longer
        case(f"interrupt/search_{sig.name}_{tag}", "interrupt", longer, BASE, interrupt=(when, sig),
             then=again, then_check=search_finished(4),
             may_change=("run/checkpoint.pt", "run/log.jsonl", "run/config.json"), timeout=400)
    runcmd = ["run", "--target", "quick.yaml", "--logs-dir", "L", "--trials", "0", "--out", "r", "--epochs", "2",
              "--max-samples", "100", "--stop-after", "search"]
    case("interrupt/run_SIGKILL_in_search", "interrupt", runcmd, BASE, interrupt=("r/search/log.jsonl",
                                                                                 signal.SIGKILL),
         then=["run", "--resume", "r", "--stop-after", "search"], then_check=run_stage_done("search"),
         may_change=("L/quick/tiny.latency.json",), timeout=400)
    case("interrupt/run_SIGINT_in_search", "interrupt", runcmd, BASE, interrupt=(6.0, signal.SIGINT),
         then=["run", "--resume", "r", "--stop-after", "search"], then_check=run_stage_done("search"),
         may_change=("L/quick/tiny.latency.json",), timeout=400)


def nest_doc(depth: int):
    d: object = 1
    for _ in range(depth):
        d = [d]
    return d


def edit_list(items):
    return items


def write_pickle_payload(rel: str):
    """A pickle whose loading would create a file `PWNED` in the case folder."""
    def go(d: Path, fx: Path) -> None:
        import pickle

        class P:
            def __reduce__(self):
                return (os.system, (f"touch {d / 'PWNED'}",))
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists():
            p.unlink()
        p.write_bytes(pickle.dumps({"state": P()}))
    return go


def write_torch(rel: str, what: str):
    def go(d: Path, fx: Path) -> None:
        code = f"""
import torch
torch.save({{"stem.0.weight": torch.zeros(3, 3)}}, {str(d / rel)!r})
"""
        subprocess.run([sys.executable, "-c", code], check=True)
    return go


def edit_ckpt(what: str):
    def go(d: Path, fx: Path) -> None:
        code = f"""
import json, math, torch
p = {str(d / 'S/checkpoint.pt')!r}
s = torch.load(p, weights_only=True)
what = {what!r}
if what == "history_short":
    s["history"] = json.dumps(json.loads(s["history"])[:0])
elif what == "epoch_negative":
    s["epoch"] = -5
elif what == "baseline_nan":
    s["baseline"] = math.nan
elif what in ("weights_nan", "state_dict_shapes"):
    for k, v in s.items():
        if isinstance(v, dict) and v and all(hasattr(t, "shape") for t in v.values()):
            name = next(n for n, t in v.items() if t.is_floating_point() and t.dim() > 1)
            v[name] = v[name].fill_(math.nan) if what == "weights_nan" else torch.zeros(1, 2, 3)
            break
torch.save(s, p)
"""
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return go


def train_counts_images(n: int):
    def check(d: Path, r) -> str | None:
        out = d / "t" / "train.json"
        if not out.exists():
            return "no train.json"
        text = out.read_text()
        doc = json.loads(text)
        acc = doc.get("val_accuracy")
        data = doc.get("data") or {}
        count = None
        for k in ("images", "samples", "n", "count", "total"):
            if isinstance(data, dict) and isinstance(data.get(k), int):
                count = data[k]
        if count is not None and count != n:
            return f"{count} samples from {n} images"
        if acc == 1.0:
            return "accuracy 1.0 on random images"
        return None
    return check


def table_complete(rel: str):
    def check(d: Path, r) -> str | None:
        p = d / rel
        if not p.exists():
            return f"{rel} missing after the rerun"
        doc = json.loads(p.read_text())
        n = len(doc.get("entries", {}))
        return None if n == 10 else f"{n} of 10 entries after the rerun"
    return check


def search_finished(epochs: int):
    def check(d: Path, r) -> str | None:
        if not (d / "run/final.arch.json").exists():
            return "no final.arch.json after resume"
        lines = [json.loads(x) for x in (d / "run/log.jsonl").read_text().splitlines() if x.strip()]
        ep = [x.get("epoch") for x in lines]  # numbered from 1
        if sorted(set(ep)) != list(range(1, epochs + 1)):
            return f"log.jsonl epochs {ep}"
        if len(ep) != len(set(ep)):
            return f"epochs logged twice: {ep}"
        return None
    return check


def run_stage_done(stage: str):
    def check(d: Path, r) -> str | None:
        p = d / "r/run.json"
        if not p.exists():
            return "no run.json"
        done = json.loads(p.read_text()).get("done", {})
        return None if stage in done else f"stage {stage} not done: {sorted(done)}"
    return check


# -- running and classifying ----------------------------------------------------------------------------------
def snapshot(d: Path) -> dict[str, str]:
    """sha256 of every file in the case folder (not following symlinked folders) and of each symlink's target."""
    out = {}
    for root, _dirs, files in os.walk(d):
        for f in files:
            p = Path(root) / f
            rel = str(p.relative_to(d))
            try:
                if p.is_symlink():
                    t = os.readlink(p)
                    real = p.resolve()
                    out[rel] = "link:" + t + (":" + digest(real) if real.is_file() and real.stat().st_size < 1 << 26
                                              else "")
                else:
                    out[rel] = digest(p)
            except (OSError, RuntimeError) as e:
                out[rel] = f"unreadable:{type(e).__name__}"
    return out


def digest(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def run_one(c: Case, argv: list[str], d: Path, env: dict, timeout: int,
            interrupt: tuple | None = None) -> tuple[int | None, str, str, float]:
    t0 = time.time()
    proc = subprocess.Popen([str(TVM_NAS), *argv], cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    if interrupt:
        when, sig = interrupt
        deadline = t0 + timeout
        if isinstance(when, str):
            while not (d / when).exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.1)
        else:
            while time.time() < t0 + when and proc.poll() is None:
                time.sleep(0.1)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
    try:
        out, err = proc.communicate(timeout=max(1, timeout - (time.time() - t0)))
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rc = None
    return rc, out, err, time.time() - t0


def classify(c: Case, d: Path, rc: int | None, err: str) -> tuple[str, str]:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    if rc is None:
        return "bad", f"hang: no exit in {c.timeout} s"
    if "Traceback" in err:
        return "bad", "traceback: " + (lines[-1] if lines else "")
    if rc not in (0, *DOCUMENTED_REFUSALS):
        return "bad", f"exit {rc}" + (" (killed by a signal)" if rc < 0 else "")
    if (d / "PWNED").exists():
        return "bad", "a pickle payload ran"
    named = not c.names or any(n in err for n in c.names)
    if rc == 0:
        if c.expect == "refuse":
            return "bad", "exit 0: accepted silently" + (f" (stderr: {lines[0][:120]})" if lines else "")
        if c.expect == "warn":
            warn = [x for x in lines if "warning" in x]
            if not warn:
                return "bad", "exit 0 without a warning: the damaged file was used or ignored silently"
            if not named:
                return "weak", "warned, but not naming " + "/".join(c.names)
        if c.check:
            why = c.check(d, None)
            if why:
                return "bad", "exit 0, wrong result: " + why
        return "good", "documented success" if c.expect != "warn" else "warned in one line, plain table used"
    # refused
    if c.expect == "ok":
        return "bad", f"refused (exit {rc}) where it should succeed"
    if len(lines) != 1:
        return "weak", f"{len(lines)} lines on stderr"
    if not named:
        return "weak", "does not name " + " or ".join(c.names)
    return "good", "refused in one line naming it"


def run_case(c: Case, fx: Path, keep: bool) -> dict:
    d = Path(tempfile.mkdtemp(prefix="case-", dir=os.environ.get("CATALOGUE_TMP")))
    env = {**os.environ, "TVM_NAS_CACHE": str(fx / "cache"), "TVM_BIND_THREADS": "0", "COLUMNS": "100"}
    env.update({k: v.replace("{d}", str(d)) for k, v in c.env.items()})
    row = {"id": c.id, "class": c.group, "command": "tvm-nas " + " ".join(c.argv)}
    try:
        if c.setup:
            c.setup(d, fx)
        before = snapshot(d)
        rc, out, err, secs = run_one(c, c.argv, d, env, c.timeout, c.interrupt)
        if c.interrupt:
            first = (rc, err)
            if rc is None:
                verdict, why = "bad", "hang after the interrupt"
            elif "Traceback" in err:
                verdict, why = "bad", "traceback on interrupt: " + err.strip().splitlines()[-1]
            else:
                then = c.then(d) if callable(c.then) else c.then
                rc, out, err, s2 = run_one(c, then, d, env, c.timeout)
                secs += s2
                row["then"] = "tvm-nas " + " ".join(then)
                row["first_exit"] = first[0]
                verdict, why = classify(Case(c.id, c.group, then, expect="ok", check=c.then_check,
                                             timeout=c.timeout), d, rc, err)
        else:
            verdict, why = classify(c, d, rc, err)
        after = snapshot(d)
        changed = [k for k, v in before.items() if k not in c.may_change and after.get(k) != v
                   and not k.endswith(".lock")]
        if changed and verdict != "bad":
            lost = [k for k in changed if k not in after]
            verdict, why = "bad", ("input lost: " if lost else "input changed: ") + ", ".join(changed[:4])
        lines = [x for x in err.strip().splitlines() if x.strip()]
        row.update(exit=rc, stderr_first=lines[0][:400] if lines else "", stderr_lines=len(lines),
                   seconds=round(secs, 1), verdict=verdict, why=why)
        if verdict != "good":
            row["stderr_tail"] = err[-1500:]
    except Exception as e:  # the catalogue's own failure, not the product's
        row.update(exit=None, stderr_first="", seconds=0, verdict="error", why=f"catalogue: {type(e).__name__}: {e}")
    finally:
        for p in [d, *d.rglob("*")]:
            try:
                if p.is_dir() and not p.is_symlink():
                    p.chmod(0o755)
            except OSError:
                pass
        if not keep:
            shutil.rmtree(d, ignore_errors=True)
        else:
            row["folder"] = str(d)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run the cases whose id matches one of these comma-separated globs (or contains "
                                   "it); the results are merged into --out")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--fixtures", default=str(Path(tempfile.gettempdir()) / "tvm-nas-catalogue-fixtures"))
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--keep", action="store_true", help="keep each case's folder")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    build_catalogue()
    ids = [c.id for c in CASES]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, dup
    cases = sorted(CASES, key=lambda c: (c.group == "interrupt", c.timeout > 120))  # cheap ones first
    if args.only:
        pats = args.only.split(",")
        cases = [c for c in cases if any(fnmatch.fnmatch(c.id, p) or p in c.id for p in pats)]
    if args.list:
        for c in cases:
            print(c.id, "  tvm-nas", " ".join(c.argv))
        print(len(cases), "cases")
        return 0
    fx = Path(args.fixtures)
    make_fixtures(fx)
    print(f"{len(cases)} cases, {args.jobs} at a time", flush=True)
    rows = []
    t0 = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(lambda c: run_case(c, fx, args.keep), cases):
            rows.append(row)
            print(f"{row['verdict']:5} {row['seconds']:6.1f}s {row['id']}: {row['why']}"
                  + (f"  | {row['stderr_first'][:160]}" if row["verdict"] != "good" else ""), flush=True)
    # table per class
    classes = sorted({r["class"] for r in rows})
    verdicts = ["good", "weak", "bad", "error"]
    print(f"\n{'class':20} " + " ".join(f"{v:>6}" for v in verdicts) + f" {'total':>6}")
    for k in classes:
        rs = [r for r in rows if r["class"] == k]
        print(f"{k:20} " + " ".join(f"{sum(r['verdict'] == v for r in rs):6d}" for v in verdicts)
              + f" {len(rs):6d}")
    print(f"{'total':20} " + " ".join(f"{sum(r['verdict'] == v for r in rows):6d}" for v in verdicts)
          + f" {len(rows):6d}")
    out = Path(args.out)
    if args.only and out.exists():  # merge a partial run into the full results
        try:
            old = {r["id"]: r for r in json.loads(out.read_text())["cases"]}
        except (ValueError, KeyError):
            old = {}
        old.update({r["id"]: r for r in rows})
        rows = [old[i] for i in ids if i in old]
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema": 1, "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                                 text=True).stdout.strip(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - t0),
           "counts": {v: sum(r["verdict"] == v for r in rows) for v in verdicts}, "cases": rows}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
