"""Every numeric option has a stated range, checked before any work: exit 2, one line naming it, no traceback."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import cli

from tvm_nas.cli import BOUNDS, COMMANDS, parser

CASES = [
    ("profile --space tiny --target host --seed -1", "--seed"),
    ("profile --space tiny --target host --seed 18446744073709551617", "--seed"),
    ("profile --space tiny --target host --jobs 0", "--jobs"),
    ("profile --space tiny --target host --jobs 100000", "--jobs"),
    ("profile --space tiny --target host --trials -3", "--trials"),
    ("profile --space tiny --target host --trials 0 --time-budget 10m", "--time-budget"),
    ("profile --space tiny --target host --trials 5 --time-budget -5m", "--time-budget"),
    ("profile --space tiny --target host --trials 5 --time-budget=-5m", "--time-budget"),
    ("profile --space tiny --target host --batch 0", "--batch"),
    ("search --space tiny --target host --latency-ms 1 --seed -2", "--seed"),
    ("search --space tiny --target host --latency-ms 1 --nproc 0", "--nproc"),
    ("search --space tiny --target host --latency-ms 1 --threads 4096", "--threads"),
    ("search --space tiny --target host --latency-ms 1 --epochs 0", "--epochs"),
    ("search --space tiny --target host --latency-ms 1 --workers -1", "--workers"),
    ("search --space tiny --target host --latency-ms nan", "--latency-ms"),
    ("train --arch a.arch.json --seed -1", "--seed"),
    ("train --arch a.arch.json --epochs 0", "--epochs"),
    ("compile --arch a.arch.json --target host --seed -5", "--seed"),
    ("compile --arch a.arch.json --target host --trials -1", "--trials"),
    ("compile --arch a.arch.json --target host --time-budget 5x", "--time-budget"),
    ("compile --arch a.arch.json --target host --time-budget=-5m", "--time-budget"),
    ("validate --space tiny --target host --nets 1000000000", "--nets"),
    ("validate --space tiny --target host --seed -1", "--seed"),
    ("run --seed -1", "--seed"),
    ("run --epochs 0", "--epochs"),
    ("run --threads 0", "--threads"),
    ("run --latency-ms inf", "--latency-ms"),
    ("run --max-samples 1", "--max-samples"),
    ("run --time-budget 5x", "--time-budget"),
    ("run --time-budget=-5m", "--time-budget"),
    ("run --trials 0 --time-budget 10m", "--time-budget"),
    ("run --epochs 3 --warmup-epochs 3", "--warmup-epochs"),
    ("run --budget-margin 51", "--budget-margin"),
    ("search --space tiny --target host --latency-ms 1 --budget-margin -1", "--budget-margin"),
    ("compare --arch a.arch.json --target host --nonsense", "unrecognized arguments"),
]


def test_every_bounded_option_is_a_real_option():
    """The ranges table names options that exist (a renamed option would leave its range unchecked)."""
    known = {a.dest for c in COMMANDS for a in parser()._subparsers._group_actions[0].choices[c.name]._actions}
    assert set(BOUNDS) <= known, set(BOUNDS) - known


def test_out_of_range_options_are_refused_in_one_line(tmp_path):
    def one(case):
        argv, flag = case
        return case, cli(*argv.split(), cwd=tmp_path, timeout=120)

    with ThreadPoolExecutor(2) as pool:
        for (argv, flag), r in pool.map(one, CASES):
            err = r.stderr.strip()
            assert r.returncode == 2, (argv, r.returncode, err[-500:])
            assert len(err.splitlines()) == 1 and "Traceback" not in err and flag in err, (argv, err)
    assert not list(tmp_path.iterdir())  # nothing was started


@pytest.mark.parametrize("argv", ["run --help", "search --help", "validate --help"])
def test_help_states_each_default_once(argv):
    r = cli(*argv.split())
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert text.count("halfway between the space's fastest and slowest nets") <= 1


def test_no_output_overwrites_an_input_or_is_lost_after_the_work(tmp_path):
    """Output paths are checked before the work starts: never an input, never a folder; train asks for --force."""
    import os

    from tvm_nas.arch import arch_document, write_arch
    from tvm_nas.space import load_space

    arch = write_arch(tmp_path / "a.arch.json", arch_document(load_space("tiny"),
                                                              ["mbconv_k3_e3", "zero", "mbconv_k3_e3"], None, None))
    before = arch.read_bytes()
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "link.csv").symlink_to(arch)
    base = ["compare", "--arch", str(arch), "--target", "host"]
    cases = [(["--csv", str(arch)], "is also an input"), (["--csv", str(tmp_path / "link.csv")], "is also an input"),
             (["--json", str(tmp_path / "folder")], "is a folder"),
             (["--json", str(tmp_path / "afile" / "x.json")], "is a file, not a folder")]
    for extra, msg in cases:
        r = cli(*base, *extra, cwd=tmp_path, timeout=120)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, (extra, r.stderr)
    assert arch.read_bytes() == before
    # train: a result already in --out is replaced only with --force (refused before loading any data)
    out = tmp_path / "t"
    out.mkdir()
    (out / "model.pt").write_bytes(b"earlier result")
    r = cli("train", "--arch", str(arch), "--out", str(out), "--epochs", "1", "--max-samples", "60", "--quiet",
            cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "exists already; add --force" in r.stderr, r.stderr
    assert (out / "model.pt").read_bytes() == b"earlier result"
    r = cli("train", "--arch", str(arch), "--out", str(out), "--epochs", "1", "--max-samples", "60", "--quiet",
            "--force", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (out / "model.pt").read_bytes() != b"earlier result" and os.path.getsize(out / "train.json") > 0


@pytest.mark.parametrize("command", ["compile", "run"])
def test_a_cache_that_is_a_file_or_unwritable_is_one_line_before_any_work(command, tmp_path, monkeypatch):
    """The per-user cache records every library the product builds (backend/trust.py): a TVM_NAS_CACHE that is a
    file, or under a file, is named in one line before anything is compiled or trained (every command that builds
    or loads a library checks it first; two of them run here)."""
    from tvm_nas.cli import BUILDS_LIBRARIES

    assert set(BUILDS_LIBRARIES) == {"compile", "compare", "validate", "run"}
    cached = tmp_path / "cache-file"
    cached.write_text("not a folder")
    args = {"compile": ["--arch", "missing.arch.json", "--target", "host"],
            "compare": ["--arch", "missing.arch.json", "--target", "host"],
            "validate": ["--space", "tiny", "--target", "host"], "run": []}[command]
    for where in (cached, cached / "below"):
        monkeypatch.setenv("TVM_NAS_CACHE", str(where))
        r = cli(command, *args, cwd=tmp_path, timeout=120)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "TVM_NAS_CACHE" in r.stderr and "Traceback" not in r.stderr
    assert cached.read_text() == "not a folder" and not (tmp_path / "runs").exists()
