"""What a crash, a shared folder or a look-alike file does to the tool: real files, real processes, real kill -9."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TVM_NAS, cli, write_yaml

from tvm_nas.io import atomic_write_json, sha256_file
from tvm_nas.specfile import data_dir


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_json(tmp_path / "shared" / "t.json", {"a": 1})
        assert stat.S_IMODE(p.stat().st_mode) == 0o644  # readable by the team, as a plain open() would make it
        os.umask(0o077)
        q = atomic_write_json(tmp_path / "private.json", {"a": 1})
        assert stat.S_IMODE(q.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_profiled_table_is_readable_by_others(tiny_table):
    assert stat.S_IMODE(tiny_table.stat().st_mode) & 0o044 == 0o044


def test_cache_folder_is_created_on_first_use(tmp_path, monkeypatch):
    from tvm_nas.backend import aarch64

    monkeypatch.setenv("TVM_NAS_CACHE", str(tmp_path / "fresh" / "cache"))
    assert aarch64.cache_dir().is_dir()


def test_search_refuses_a_lookalike_target(tiny_table, tmp_path):
    """A target file that reuses the name 'host' but defines another CPU must not use host's table."""
    logs = tiny_table.parent.parent
    lookalike = write_yaml(tmp_path / "host.yaml", {"name": "host", "tvm": {"kind": "llvm", "mcpu": "x86-64-v2"},
                                                    "threads": 2})
    r = cli("search", "--space", "tiny", "--target", str(lookalike), "--logs-dir", str(logs), "--latency-ms", "1",
            "--out", str(tmp_path / "run"), "--quiet")
    assert r.returncode == 2 and "field 'target.hash'" in r.stderr and len(r.stderr.strip().splitlines()) == 1, (
        r.stdout + r.stderr)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_kill_during_compile_never_leaves_a_mismatched_pair(tiny_table, tmp_path):
    """kill -9 while a build is being written: the folder keeps the old library with its own manifest."""
    from tvm_nas.arch import arch_document, write_arch
    from tvm_nas.space import load_space

    logs = tiny_table.parent.parent
    arch = write_arch(tmp_path / "a.arch.json", arch_document(load_space("tiny"), ["mbconv_k3_e3"] * 3, None, None))
    out = tmp_path / "build"
    args = ["compile", "--arch", str(arch), "--target", "host", "--logs-dir", str(logs), "--untuned", "--out",
            str(out), "--no-measure"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    before = json.loads((out / "manifest.json").read_text())
    # the second build of another seed: killed mid-build, once its first file (the ONNX export) is staged
    proc = subprocess.Popen([str(TVM_NAS), *args, "--seed", "7"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not list(out.glob(".build-*/model.onnx")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    after = json.loads((out / "manifest.json").read_text())
    assert after == before
    assert sha256_file(out / "model.so") == after["library"]["sha256"]
    assert sha256_file(out / "model.onnx") == after["onnx"]["sha256"]
    # and a finished build replaces both together
    r = cli(*args, "--seed", "7")
    assert r.returncode == 0, r.stderr
    new = json.loads((out / "manifest.json").read_text())
    assert new["weights"] == {"random_seed": 7} and sha256_file(out / "model.so") == new["library"]["sha256"]
    assert not list(out.glob(".build-*"))


def test_shipped_files_resolve_from_any_directory(tmp_path):
    """Names resolve to the shipped folders, not to the working directory."""
    r = cli("profile", "--space", "nope", "--target", "host", cwd=tmp_path)
    assert r.returncode == 2 and str(data_dir("search_space")) in r.stderr


def test_help_imports_neither_torch_nor_tvm():
    code = ("import sys; from tvm_nas.cli import parser; parser().format_help(); "
            "print(sorted(m for m in ('torch', 'tvm') if m in sys.modules))")
    out = subprocess.run([str(Path(TVM_NAS).parent / "python"), "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_compare_table_reads_whole_at_80_columns():
    from rich.console import Console

    from tvm_nas.deploy import compare_table

    rows = [{"architecture": a, "target": "x86-64-v2", "runtime": r, "predicted_us": 1234.5, "measured_us": 1416.0,
             "measured_over_predicted": 1.15, "vs_tvm": 0.74}
            for a in ("final", "reference (mbconv_k3_e6)") for r in ("tvm", "tvm-untuned", "pytorch", "onnxruntime")]
    console = Console(width=80, record=True, color_system=None)
    console.print(compare_table(rows))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for word in ("net", "runtime", "pred", "meas/pred", "vs tvm", "tvm-untuned", "onnxruntime", "x86-64-v2",
                 "1,416.0", "0.74x"):
        assert word in text, word


@pytest.mark.parametrize("kind", ["space", "target"])
def test_yaml_integer_of_thousands_of_digits_is_one_line(kind, tmp_path):
    """A YAML integer past Python's 4,300-digit limit gave a ValueError traceback from inside the YAML loader (the
    JSON readers already refused it); now it is a YAML error, one line naming the file and the line."""
    bad = tmp_path / f"{kind}.yaml"
    bad.write_text("name: x\nnum_classes: " + "9" * 100_000 + "\n")
    args = ["--space", str(bad), "--target", "host"] if kind == "space" else ["--space", "tiny", "--target", str(bad)]
    r = cli("profile", *args, "--trials", "0", "--logs-dir", str(tmp_path / "logs"), cwd=tmp_path, timeout=120)
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err[-2000:]
    assert str(bad) in err and "line 2" in err and "100000 digits" in err, err


@pytest.mark.parametrize("content", [b"\x80\x04garbage" * 10, "pickle"])
def test_unreadable_weights_are_one_line_without_torch_warnings(content, tmp_path):
    """torch.load printed its own pickle-protocol UserWarning (two lines) above the refusal, and the refusal ended in
    torch's advice to load the file unsafely; now the refusal alone, one line naming the file."""
    import pickle

    from conftest import write_tiny_arch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    weights = tmp_path / "w.pt"
    weights.write_bytes(pickle.dumps({"w": Payload()}, protocol=4) if content == "pickle" else content)
    arch = write_tiny_arch(tmp_path / "a.arch.json")
    r = cli("compile", "--arch", str(arch), "--weights", str(weights), "--target", "host", "--untuned",
            "--no-measure", "--out", str(tmp_path / "b"), cwd=tmp_path, timeout=180)
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "Warning" not in err, err[-2000:]
    assert str(weights) in err and "weights_only" in err and "Re-running" not in err, err
    assert not (tmp_path / "PWNED").exists()


def test_search_resume_without_its_checkpoint_keeps_the_finished_epochs(tiny_table, tmp_path):
    """`search --resume` on a run whose checkpoint.pt was deleted (or is a link loop) started over from epoch 0,
    exit 0, replacing the finished run's log and architecture; now refused in one line naming the checkpoint."""
    logs = tiny_table.parent.parent
    run = tmp_path / "run"
    r = cli("search", "--space", "tiny", "--target", "host", "--logs-dir", str(logs), "--latency-ms", "1", "--out",
            str(run), "--epochs", "2", "--warmup-epochs", "1", "--max-samples", "60", "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    kept = {p.name: p.read_bytes() for p in (run / "final.arch.json", run / "log.jsonl")}
    # config.json's settings exactly as written: an epoch count of "2" resumed silently as 2
    config = run / "config.json"
    written = config.read_text()
    doc = json.loads(written)
    doc["search"]["epochs"] = str(doc["search"]["epochs"])
    config.write_text(json.dumps(doc))
    r = cli("search", "--resume", "--out", str(run), "--quiet", timeout=300)
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and f"{config}: field 'search.epochs'" in err, err
    config.write_text(written)
    ckpt = run / "checkpoint.pt"
    ckpt.unlink()
    for damage in ("deleted", "loop"):
        if damage == "loop":
            ckpt.symlink_to("other.pt")
            (run / "other.pt").symlink_to("checkpoint.pt")
        r = cli("search", "--resume", "--out", str(run), "--quiet", timeout=300)
        err = r.stderr.strip()
        assert r.returncode == 2 and len(err.splitlines()) == 1 and str(ckpt) in err, (damage, err[-2000:])
        assert {n: (run / n).read_bytes() for n in kept} == kept, damage


@pytest.mark.parametrize("argv", [
    "compile --arch a.arch.json --target host --out {bad}",
    "compare --arch a.arch.json --target host --out {bad}",
    "train --arch a.arch.json --out {bad}",
    "validate --space tiny --target host --nets 0 --out {bad}",
    "run --out {bad}",
    "search --space tiny --target host --latency-ms 1 --out {bad}",
    "profile --space tiny --target host --trials 0 --logs-dir {bad}",
])
@pytest.mark.parametrize("bad", ["afile", "afile/below", "/proc/tvm-nas-no-such/out", "loop"])
def test_output_folder_that_is_a_file_or_unwritable_is_one_line_before_any_work(argv, bad, tmp_path):
    """compile, compare, train, validate, run and profile died with a NotADirectoryError, FileExistsError or
    FileNotFoundError traceback (compare after its measurements) when the output folder was a file, under a file or
    could not be written; now every command's --out (and profile's --logs-dir) is checked first, in one line."""
    from conftest import write_tiny_arch

    write_tiny_arch(tmp_path / "a.arch.json")
    (tmp_path / "afile").write_text("kept")
    (tmp_path / "loop").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop")
    r = cli(*argv.format(bad=bad).split(), cwd=tmp_path, timeout=120)
    err = r.stderr.strip()
    flag = "--logs-dir" if argv.startswith("profile") else "--out"
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err[-2000:]
    assert f"{flag} {bad}:" in err, err
    assert (tmp_path / "afile").read_text() == "kept" and not list(tmp_path.glob(".tvm-nas-probe-*"))


@pytest.mark.parametrize("argv", [
    "train --arch a.arch.json --lr inf",
    "search --space tiny --target host --latency-ms 1 --weight-lr inf",
    "search --space tiny --target host --latency-ms 1 --arch-lr=-inf",
    "search --space tiny --target host --latency-ms 1 --mul-b inf",
    "run --arch-lr nan",
])
def test_an_infinite_rate_or_weight_is_one_line_before_any_work(argv, tmp_path):
    """`--weight-lr inf`, `--arch-lr inf`, `--mul-b inf` ran the search until torch.multinomial died with a
    traceback; `train --lr inf` trained a net of NaNs, exit 0. Every number option must be finite."""
    r = cli(*argv.split(), cwd=tmp_path, timeout=120)
    err = r.stderr.strip()
    flag = argv.split()[-2] if "=" not in argv.split()[-1] else argv.split()[-1].split("=")[0]
    assert r.returncode == 2 and len(err.splitlines()) == 1 and f"{flag}: must be a finite number" in err, err
    assert not list(tmp_path.iterdir())


def test_run_refuses_warmup_epochs_not_below_epochs_before_its_profile(tmp_path):
    """`run --epochs 2 --warmup-epochs 8` profiled first, then stopped at its search stage (or, with
    --stop-after profile, exit 0 with a run that cannot continue); now refused at once, as `search` does."""
    r = cli("run", "--epochs", "2", "--warmup-epochs", "8", "--out", str(tmp_path / "r"), cwd=tmp_path, timeout=120)
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "--warmup-epochs" in err, err
    assert not (tmp_path / "r").exists()


def test_compare_peers_are_checked_before_any_build(tmp_path):
    """`compare --peers nosuchpeer` without --baselines built and timed the net, exit 0, the option ignored; an
    unknown peer name, or --peers with nothing to choose peers for, is one line before any build."""
    from conftest import write_tiny_arch

    write_tiny_arch(tmp_path / "a.arch.json")
    for extra, said in ((["--peers", "nosuchpeer"], "--peers nosuchpeer: chooses the peers of --baselines"),
                        (["--baselines", "--peers", "pytorch,nosuchpeer"], "unknown peer(s) nosuchpeer")):
        r = cli("compare", "--arch", "a.arch.json", "--target", "host", "--untuned", "--out", "b", *extra,
                cwd=tmp_path, timeout=120)
        err = r.stderr.strip()
        assert r.returncode == 2 and len(err.splitlines()) == 1 and said in err, err
        assert not (tmp_path / "b").exists()


def test_validate_names_an_architecture_of_another_space_first(tmp_path):
    """`validate --space mini --arch a.arch.json` (a tiny-space net) said only that mini had no table; the
    architecture that cannot be validated there is named first."""
    from conftest import write_tiny_arch

    write_tiny_arch(tmp_path / "a.arch.json")
    r = cli("validate", "--space", "proxyless-cifar", "--target", "host", "--logs-dir", str(tmp_path / "L"),
            "--arch", "a.arch.json", "--out", "v", cwd=tmp_path, timeout=120)
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "a.arch.json: field 'space'" in err, err


def test_training_on_a_folder_of_only_unreadable_images_is_one_line(tmp_path):
    """A folder whose every image is unreadable streamed into training, and torch warned about a scheduler step
    before any optimizer step before the refusal: three lines where one was due."""
    from conftest import photo_folders, write_tiny_arch

    write_tiny_arch(tmp_path / "a.arch.json")
    train, _ = photo_folders(tmp_path / "p", train=6, test=1, size=16, classes=2)
    for p in train.rglob("*.png"):
        p.write_bytes(b"not a png")
    r = cli("train", "--arch", "a.arch.json", "--data", f"imagefolder:{train}", "--epochs", "1", "--quiet", "--out",
            "t", cwd=tmp_path, timeout=300)
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "Warning" not in err, err
    assert "could not be read" in err, err


def test_ctrl_c_inside_a_tvm_pass_ends_as_an_interruption(capsys):
    """Ctrl-C while TVM runs one of its Python passes (a build's pipeline) comes back out of TVM's C++ side as a
    RuntimeError: the command still ends as interrupted (status 130, how to continue), not in a traceback. CI caught
    `profile` ending with status 1 so when the signal landed inside a build."""
    import argparse

    import tvm

    from tvm_nas.cli import _CtrlC, _run

    @tvm.transform.module_pass(opt_level=0)
    def ctrl_c(mod, ctx):
        os.kill(os.getpid(), signal.SIGINT)
        return mod

    def boom(args):
        raise RuntimeError("boom")

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a command started from a shell has it
    try:
        with _CtrlC() as c:
            assert _run(argparse.Namespace(command="search", func=lambda a: ctrl_c(tvm.IRModule())), c) == 130
        assert "interrupted; finished work is kept" in capsys.readouterr().err
        with _CtrlC() as c, pytest.raises(RuntimeError, match="boom"):  # an error with no Ctrl-C stays an error
            _run(argparse.Namespace(command="search", func=boom), c)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back after the command
    finally:
        signal.signal(signal.SIGINT, before)
