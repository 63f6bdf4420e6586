"""Profile arguments and tables that must not be lost: --batch 0, --time-budget, --trials 0 over a tuned table."""

from __future__ import annotations

import json

import pytest
from conftest import cli, quick_target, write_yaml


def _one_line(r, match):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and match in lines[0], r.stdout + r.stderr


@pytest.mark.parametrize("args,match", [
    (["--batch", "0"], "--batch: must be between 1 and"),
    (["--time-budget", "1x"], "--time-budget: '1x' is not a duration"),
    (["--jobs", "0"], "--jobs: must be between 1 and"),
])
def test_bad_profile_arguments(tmp_path, args, match):
    _one_line(cli("profile", "--space", "tiny", "--target", "host", "--logs-dir", str(tmp_path), *args), match)


def test_runner_typo_lists_the_accepted_runners(tmp_path):
    target = write_yaml(tmp_path / "t.yaml", {"name": "t", "tvm": {"kind": "llvm"}, "runner": "lcoal"})
    r = cli("profile", "--space", "tiny", "--target", str(target), "--logs-dir", str(tmp_path))
    _one_line(r, "field 'runner': unknown runner 'lcoal'; accepted runners: 'local'")


def test_untuned_profile_does_not_replace_a_tuned_table(micro_space, tmp_path):
    """The table of `profile --trials 8` is kept when `profile --trials 0` runs over it, unless --force."""
    from tvm_nas.profile.profiler import profile

    quick = str(quick_target(tmp_path))
    profile(str(micro_space), quick, trials=0, logs_dir=tmp_path)
    dest = tmp_path / "quick" / "micro.latency.json"
    d = json.loads(dest.read_text())
    d["settings"]["trials"] = 8  # what `--trials 8` writes; the entries stay real measurements
    dest.write_text(json.dumps(d))
    before = dest.read_bytes()
    args = ["profile", "--space", str(micro_space), "--target", quick, "--logs-dir", str(tmp_path)]
    r = cli(*args)
    _one_line(r, "measured with --trials 8; untuned timings would replace it: keep it, or add --force")
    assert dest.read_bytes() == before
    r = cli(*args, "--force")
    assert r.returncode == 0, r.stderr
    assert json.loads(dest.read_text())["settings"]["trials"] == 0
