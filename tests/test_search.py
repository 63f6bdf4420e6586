"""Search: binary gates, latency loss, alternating loop, resume, derivation, training, and bad inputs.

`tiny_table` (tests/conftest.py) is the real TVM-measured table of the `tiny` space on target `host`.
"""

from __future__ import annotations

import itertools
import json
import os
import re

import numpy as np
import pytest
import torch

from tvm_nas.arch import load_architecture, write_arch
from tvm_nas.cli import main as cli_main
from tvm_nas.data import load_data
from tvm_nas.errors import TvmNasError
from tvm_nas.profile.model import LatencyModel as LatencyTable  # the table and what validate fitted to it
from tvm_nas.profile.table import table_path
from tvm_nas.search import ARCH_FILE, ProxylessSearch, SearchConfig, Supernet
from tvm_nas.search.derive import derive, derive_by_shared_weights, fit_budget, most_probable
from tvm_nas.search.loss import ExpectedLatency, latency_loss, pair_probs
from tvm_nas.space import load_space
from tvm_nas.specfile import data_dir


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny nets: intra-op threads only add contention on a 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def space():
    return load_space("tiny")


@pytest.fixture(scope="module")
def data(space):
    return load_data("builtin", space, max_samples=400, seed=0)


def _search(space, table_file, data, run_dir, **settings):
    table = LatencyTable.load(table_file, space=space, target_name="host")
    base = {"latency_budget_us": 60.0, "epochs": 3, "warmup_epochs": 1, "batch_size": 32}
    return ProxylessSearch(space, table, data, SearchConfig(**{**base, **settings}), run_dir)


# -- binary gates --------------------------------------------------------------------------------------
def test_arch_step_gives_nonzero_alpha_gradients(space, tiny_table, data, tmp_path):
    s = _search(space, tiny_table, data, tmp_path)
    s.setup()
    x, y = data.images[:32], data.labels[:32]
    from tvm_nas.data import normalize

    details = s.arch_step(normalize(x), y)
    assert details["expected_latency_us"] > 0 and np.isfinite(details["loss"])
    for m in s.supernet_.mixed_ops:
        grad = m.alpha.grad
        assert grad is not None
        assert torch.all(grad[m.pair()] != 0), m.pair()
        unsampled = [i for i in range(len(m.candidates)) if i not in m.pair()]
        assert torch.all(grad[unsampled] == 0)  # only the two sampled paths get a gradient
        assert not torch.equal(m.alpha.detach(), torch.zeros_like(m.alpha))


def test_rescale_keeps_unsampled_probabilities(space, tiny_table, data, tmp_path):
    from tvm_nas.data import normalize

    s = _search(space, tiny_table, data, tmp_path, arch_lr=0.05)
    s.setup()
    for step in range(5):
        x, y = normalize(data.images[32 * step:32 * step + 32]), data.labels[32 * step:32 * step + 32]
        before = [m.probs.detach().clone() for m in s.supernet_.mixed_ops]
        s.arch_step(x, y)
        for m, p0 in zip(s.supernet_.mixed_ops, before, strict=True):
            p1 = m.probs.detach()
            pair = m.pair()
            rest = [i for i in range(len(p0)) if i not in pair]
            torch.testing.assert_close(p1[rest], p0[rest], rtol=0, atol=1e-6)
            torch.testing.assert_close(p1[pair].sum(), p0[pair].sum(), rtol=0, atol=1e-6)
            assert not torch.allclose(p1[pair], p0[pair])  # the pair itself was updated


def test_weight_step_runs_only_the_sampled_ops(space, tiny_table, data, tmp_path):
    from tvm_nas.data import normalize

    s = _search(space, tiny_table, data, tmp_path)
    s.setup()
    calls = []
    for b, m in enumerate(s.supernet_.mixed_ops):
        for i, op in enumerate(m.ops):
            op.register_forward_hook(lambda *_, b=b, i=i: calls.append((b, i)))
    x, y = normalize(data.images[:32]), data.labels[:32]
    for _ in range(3):
        calls.clear()
        s.weight_step(x, y)
        active = [(b, m.active) for b, m in enumerate(s.supernet_.mixed_ops)]
        assert calls == active
        for b, m in enumerate(s.supernet_.mixed_ops):
            for i, op in enumerate(m.ops):
                grads = [p.grad for p in op.parameters()]
                if i == m.active:
                    assert not grads or any(g is not None and g.abs().sum() > 0 for g in grads)
                else:
                    assert all(g is None for g in grads), (b, i)
    calls.clear()
    s.arch_step(x, y)
    assert sorted(calls) == sorted((b, i) for b, m in enumerate(s.supernet_.mixed_ops) for i in m.pair())


# -- latency objective ---------------------------------------------------------------------------------
def test_expected_latency_and_loss_forms(space, tiny_table):
    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    expected = ExpectedLatency(table, space)
    fast, slow = table.extremes(space)
    for ops in (fast, slow):
        onehot = [torch.nn.functional.one_hot(torch.tensor(b.candidates.index(op)), len(b.candidates)).float()
                  for b, op in zip(space.blocks(), ops, strict=True)]
        assert float(expected(onehot)) == pytest.approx(table.predict(space, ops), rel=1e-5)
    net = Supernet(space)
    e = expected(net.probs())
    uniform = table.fixed_latency(space) + sum(v.mean() for v in table.block_matrix(space))
    assert float(e.detach()) == pytest.approx(uniform, rel=1e-5)
    ce = torch.tensor(2.0)
    loss, d = latency_loss(ce, e, 50.0, "mul", a=0.2, b=0.3)
    e_us = float(e.detach())
    assert float(loss.detach()) == pytest.approx(2.0 * 0.2 * (np.log(e_us) / np.log(50.0)) ** 0.3, rel=1e-5)
    loss, d = latency_loss(ce, e, 50.0, "add", lam=0.5)
    assert float(loss.detach()) == pytest.approx(2.0 + 0.5 * float(e) / 50.0, rel=1e-5)
    assert set(d) == {"ce", "expected_latency_us", "latency_term", "loss"}
    # the latency term pushes the sampled pair towards the faster op
    m = net.mixed_ops[1]
    v = table.block_vector(space.blocks()[1])
    pair = [int(np.argmin(v)), int(np.argmax(v))]  # the fastest and the slowest candidate
    lat = expected([pair_probs(n.alpha, pair if n is m else [0, 1]) for n in net.mixed_ops])
    lat.backward()
    assert m.alpha.grad[pair[0]] < 0 < m.alpha.grad[pair[1]]
    with pytest.raises(TvmNasError, match="budget"):
        latency_loss(ce, e, 0.5, "add")


def test_hinge_pulls_only_while_the_expected_net_is_over_budget():
    ce = torch.tensor(2.0)
    for budget, over in ((40.0, True), (60.0, False)):
        lat = torch.tensor(50.0, requires_grad=True)
        loss, d = latency_loss(ce, lat, budget, "hinge", lam=0.5)
        loss.backward()
        assert float(loss.detach()) == pytest.approx(2.0 + (0.5 * (50.0 / budget - 1) if over else 0.0))
        assert (float(lat.grad) > 0) is over and float(lat.grad) >= 0 and d["latency_term"] >= 0
    with pytest.raises(TvmNasError, match="--loss"):
        latency_loss(ce, torch.tensor(50.0), 40.0, "hinges")


def test_tight_budget_derives_a_faster_net(space, tiny_table, data, tmp_path):
    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    fast, slow = table.extremes(space)
    t_fast, t_slow = table.predict(space, fast), table.predict(space, slow)
    results = {}
    for name, budget in (("tight", t_fast), ("loose", 100 * t_slow)):
        s = _search(space, tiny_table, data, tmp_path / name, latency_budget_us=budget, loss="add",
                    arch_lr=0.02,
                    epochs=5, warmup_epochs=1, enforce_budget=False).fit()
        results[name] = s.arch_["derivation"]["argmax_latency_us"]
        assert s.history_[-1]["expected_latency_us"] > 0
    assert results["tight"] < results["loose"], results


# -- loop, checkpoints, resume ---------------------------------------------------------------------------
def test_resume_reaches_the_uninterrupted_result(space, tiny_table, data, tmp_path):
    full = _search(space, tiny_table, data, tmp_path / "full", arch_lr=0.01).fit()
    first = _search(space, tiny_table, data, tmp_path / "cut", arch_lr=0.01).fit(stop_after=2)
    assert first.epoch_ == 2 and not (tmp_path / "cut" / ARCH_FILE).exists()
    resumed = _search(space, tiny_table, data, tmp_path / "cut", arch_lr=0.01).fit(resume=True)
    for a, b in zip(full.supernet_.arch_parameters(), resumed.supernet_.arch_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    resumed_state = resumed.supernet_.state_dict()
    for k, a in full.supernet_.state_dict().items():
        b = resumed_state[k]
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert full.arch_["probabilities"] == resumed.arch_["probabilities"]
    log = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2, 3]
    record = json.loads(log[-1])
    assert {"train_loss", "val_accuracy", "expected_latency_us", "entropy", "ops", "probabilities"} <= set(
        record)
    assert len(record["entropy"]) == len(space.blocks())
    with pytest.raises(TvmNasError, match="--resume"):
        _search(space, tiny_table, data, tmp_path / "full").fit()


def test_reinforce_updates_alpha(space, tiny_table, data, tmp_path):
    s = _search(space, tiny_table, data, tmp_path, arch_update="reinforce", arch_lr=0.05, epochs=2).fit()
    assert any(not torch.allclose(a, torch.zeros_like(a)) for a in s.supernet_.arch_parameters())
    assert "reward" in s.history_[-1]["arch"] and s.history_[-1]["arch"]["baseline"] > 0
    assert (tmp_path / ARCH_FILE).exists()


# -- derivation and architecture files -------------------------------------------------------------------
def test_derive_and_load_arch(space, tiny_table, tmp_path, monkeypatch):
    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    probs = [np.linspace(1, 2, len(b.candidates)) / np.linspace(1, 2, len(b.candidates)).sum()
             for b in space.blocks()]
    doc = derive(probs, space, table, budget_us=None)
    assert doc["ops"] == [b.candidates[-1] for b in space.blocks()]
    # linspace(1, 2) over 4 ops is (0.2, 0.27, 0.33, 0.4): close to uniform, so every block is undecided
    assert doc["derivation"]["undecided_blocks"] == list(range(len(probs)))
    sharp = [np.eye(len(b.candidates))[0] * 0.7 + 0.3 / len(b.candidates) for b in space.blocks()]
    assert derive(sharp, space, table)["derivation"]["undecided_blocks"] == []
    fast, _ = table.extremes(space)
    budget = table.predict(space, fast) + 1.0
    doc = derive(probs, space, table, budget_us=budget)
    assert doc["predicted_latency_us"] <= budget and doc["derivation"]["budget_met"]
    ops, changed = fit_budget(doc["derivation"]["argmax_ops"], probs, space, table, 1e9)
    assert changed == []
    path = write_arch(tmp_path / "a.arch.json", doc)
    a = load_architecture(path)
    space2, ops2, doc2 = a.space, a.ops, a.doc
    assert space2.hash == space.hash and ops2 == doc["ops"] and doc2["warnings"] == []
    assert doc2["latency_table"]["target"] == "host" and doc2["latency_table"]["hash"] == table.hash
    # a space of that name on disk with another definition: loads from the embedded one, with a warning
    home = tmp_path / "home"
    (home / "search_space").mkdir(parents=True)
    text = (data_dir("search_space") / "tiny.yaml").read_text()
    (home / "search_space" / "tiny.yaml").write_text(text.replace("head: {out: 32}", "head: {out: 40}"))
    monkeypatch.setenv("TVM_NAS_HOME", str(home))
    a = load_architecture(path)
    space3, doc3 = a.space, a.doc
    assert space3.hash == space.hash and "hash" in doc3["warnings"][0]


def test_most_probable_nets_meeting_a_budget_in_order(space, tiny_table):
    """The k most probable nets under α that meet the budget, against brute force over the whole space."""
    import itertools

    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(len(b.candidates))) for b in space.blocks()]
    fast, slow = table.extremes(space)
    budget = 0.5 * (table.predict(space, fast) + table.predict(space, slow))

    def logp(ops):
        return sum(np.log(p[b.candidates.index(o)]) for b, p, o in zip(space.blocks(), probs, ops, strict=True))
    every = [list(ops) for ops in itertools.product(*(b.candidates for b in space.blocks()))]
    meeting = sorted((ops for ops in every if table.predict(space, ops) <= budget), key=logp, reverse=True)
    assert most_probable(probs, space, table, budget, 5) == meeting[:5]
    assert most_probable(probs, space, table, None, 3) == sorted(every, key=logp, reverse=True)[:3]
    assert most_probable(probs, space, table, 0.5 * table.predict(space, fast), 5) == []


def test_derivation_by_shared_weights_keeps_the_best_scored_candidate(space, tiny_table, tmp_path):
    """Of the most probable nets meeting the budget (and the argmax net), the one the scorer rates highest; the
    candidates and their scores are recorded in the arch file, which loads."""
    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    probs = [np.linspace(1, 2, len(b.candidates)) / np.linspace(1, 2, len(b.candidates)).sum()
             for b in space.blocks()]
    fast, slow = table.extremes(space)
    budget = 0.5 * (table.predict(space, fast) + table.predict(space, slow))
    seen = {}

    def score(nets):  # a made-up judge: prefers nets with more `zero` blocks, then fewer parameters' worth of ops
        seen.update(nets)
        return {k: 0.1 * ops.count("zero") + 0.001 * len(" ".join(ops)) for k, ops in nets.items()}
    doc = derive_by_shared_weights(probs, space, table, budget, 4, score)
    cands = doc["derivation"]["candidates"]
    assert 4 <= len(cands) <= 5 and [c["ops"] for c in cands] == list(seen.values())
    best = max(cands, key=lambda c: c["shared_val_accuracy"])
    assert doc["ops"] == best["ops"] and doc["predicted_latency_us"] <= budget and doc["derivation"]["budget_met"]
    assert derive(probs, space, table, budget)["ops"] in [c["ops"] for c in cands]
    assert "shared-weight" in doc["derivation"]["rule"]
    assert load_architecture(write_arch(tmp_path / "s.arch.json", doc)).ops == doc["ops"]


def test_search_with_uniform_weights_and_shared_derivation(space, tiny_table, data, tmp_path):
    """`weight_sampling="uniform"` trains every candidate after the warm-up; `derive="shared"` keeps the candidate
    the supernet scores best on the search's validation split, with its figures in the arch file."""
    from tvm_nas.search.ranking import supernet_accuracies

    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    fast, slow = table.extremes(space)
    budget = 0.5 * (table.predict(space, fast) + table.predict(space, slow))
    s = _search(space, tiny_table, data, tmp_path / "u", latency_budget_us=budget, loss="hinge", epochs=3,
                warmup_epochs=1, weight_sampling="uniform", derive="shared", derive_candidates=3).fit()
    d = s.arch_["derivation"]
    assert d["budget_met"] and 3 <= len(d["candidates"]) <= 4
    again = supernet_accuracies(s.supernet_, s.data, {str(i): c["ops"] for i, c in enumerate(d["candidates"])},
                                s.config.val_fraction, s.config.seed, s.config.batch_size)
    assert [again[str(i)] for i in range(len(d["candidates"]))] == [c["shared_val_accuracy"]
                                                                     for c in d["candidates"]]
    assert s.arch_["ops"] == max(d["candidates"], key=lambda c: c["shared_val_accuracy"])["ops"]
    assert json.loads((tmp_path / "u" / ARCH_FILE).read_text())["derivation"]["candidates"] == d["candidates"]


@pytest.mark.parametrize("edit, match", [
    (lambda d: "{not json", "corrupted"),
    (lambda d: {**d, "schema": 9}, "schema"),
    (lambda d: {**d, "ops": d["ops"][:-1]}, "'ops'"),
    (lambda d: {**d, "ops": ["mbconv_k9_e9"] + d["ops"][1:]}, r"ops\[0\]"),
    (lambda d: {**d, "ops": ["zero"] + d["ops"][1:]}, r"ops\[0\]"),
    (lambda d: {**d, "space": {**d["space"], "hash": "0" * 16}}, "space.hash"),
    (lambda d: {**d, "space": {**d["space"], "definition": {**d["space"]["definition"], "num_classes": -1}}},
     "space.definition.num_classes"),
])
def test_load_arch_refuses_bad_files(space, tiny_table, tmp_path, edit, match):
    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    doc = derive([np.ones(len(b.candidates)) / len(b.candidates) for b in space.blocks()], space, table)
    bad = edit(doc)
    path = tmp_path / "bad.arch.json"
    path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
    with pytest.raises(TvmNasError, match=match) as e:
        load_architecture(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# -- command line --------------------------------------------------------------------------------------
def _fails(argv, capsys, match: str) -> str:
    """The real entry point refuses `argv` with one line matching `match` and exit status 2."""
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(match, err), err
    return err


def test_cli_search_resume_and_train(space, tiny_table, tmp_path, capsys):
    logs = tiny_table.parent.parent
    run = tmp_path / "run"
    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    fast, slow = (table.predict(space, ops) for ops in table.extremes(space))
    budget_us = fast + 0.3 * (slow - fast)  # between the space's fastest and slowest nets
    argv = ["--space", "tiny", "--target", "host", "--data", "builtin", "--latency-ms", str(budget_us / 1000),
            "--logs-dir",
            str(logs), "--out", str(run), "--epochs", "2", "--warmup-epochs", "1", "--max-samples", "300",
            "--batch-size", "32", "--quiet"]
    assert cli_main(["search", *argv]) == 0
    arch = run / ARCH_FILE
    assert {p.name for p in run.iterdir()} >= {ARCH_FILE, "config.json", "checkpoint.pt", "log.jsonl"}
    doc = json.loads(arch.read_text())
    assert doc["predicted_latency_us"] <= budget_us and doc["search"]["epochs"] == 2
    saved = json.loads((run / "config.json").read_text())["search"]["latency_budget_us"]
    assert saved == pytest.approx(budget_us)
    # resuming a finished run re-derives the same architecture
    assert cli_main(["search", "--resume", "--out", str(run), "--quiet"]) == 0
    assert json.loads(arch.read_text())["ops"] == doc["ops"]
    _fails(["search", *argv], capsys, "--resume")
    # --measure-budget: the nets derived around the budget compiled and timed on host, the slowest meeting it kept
    capsys.readouterr()
    assert cli_main(["search", "--resume", "--out", str(run), "--measure-budget", "--logs-dir", str(logs)]) == 0
    d = json.loads(arch.read_text())["derivation"]
    met = [r for r in d["measured"] if r["measured_us"] <= budget_us]
    kept = json.loads(arch.read_text())["ops"]
    assert 1 <= len(d["measured"]) <= 4 and d["budget_met"] == bool(met)
    assert kept == (max(met, key=lambda r: r["measured_us"]) if met else
                    min(d["measured"], key=lambda r: r["measured_us"]))["ops"]
    out = " ".join(capsys.readouterr().out.split())
    assert "by measurement" in out and "nets measured" in out, out[-2000:]
    # train the derived net from scratch and from the supernet (in bfloat16 autocast, on the device auto picks)
    for extra in ([], ["--init-from", str(run), "--precision", "bf16", "--device", "auto"]):
        out = tmp_path / f"train{len(extra)}"
        targs = ["--arch", str(arch), "--data", "builtin", "--epochs", "1", "--max-samples", "300", "--out",
                 str(out), "--quiet", *extra]
        assert cli_main(["train", *targs]) == 0
        result = json.loads((out / "train.json").read_text())
        assert 0.0 <= result["val_accuracy"] <= 1.0 and (out / "model.pt").is_file()
        assert result["config"]["precision"] == ("bf16" if extra else "fp32")
        assert result["device"] == ("cuda" if extra and torch.cuda.is_available() else "cpu")
    assert "validation accuracy" in capsys.readouterr().out


def test_cli_bad_inputs(space, tiny_table, tmp_path, capsys):
    logs = tmp_path / "logs"  # a private copy: the shared table's folder stays untouched
    table_path(logs, "host", "tiny").parent.mkdir(parents=True)
    table_path(logs, "host", "tiny").write_text(tiny_table.read_text())
    base = ["--space", "tiny", "--data", "builtin", "--latency-ms", "0.1", "--logs-dir", str(logs), "--quiet",
            "--out", str(tmp_path / "r"), "--epochs", "1", "--warmup-epochs", "0", "--max-samples", "100"]
    # a table from another target is refused (copied under another target's folder)
    other = table_path(logs, "x86-64-v2", "tiny")
    other.parent.mkdir(parents=True)
    other.write_text(tiny_table.read_text())
    cases = [
        (base + ["--target", "x86-64-v2"], "measured on target 'host'"),
        (base + ["--target", "rpi4b"], "not found"),
        (base + ["--target", "nope"], "not found"),
        (["--space", "proxyless-cifar", "--target", "host", "--table", str(tiny_table), "--latency-ms", "1",
          "--quiet", "--out", str(tmp_path / "r2")], "space"),
        (base + ["--target", "host", "--data", "imagefolder:/does/not/exist"], "not found"),
        (base + ["--target", "host", "--data", "mnist"], "unknown data spec"),
        (base + ["--target", "host", "--epochs", "0"], "--epochs"),
        (["--target", "host", "--quiet"], "missing --space"),
        *((base + ["--target", "host", "--latency-ms", v], r"--latency-ms: .*above 0.001 \(1 µs\)")
          for v in ("inf", "0", "-1", "nan", "0.001")),
        (base + ["--target", "host", "--threads", "-1"], "--threads"),
        (base + ["--target", "host", "--warmup-epochs", "5"], "--warmup-epochs: .*never be trained"),
        (base + ["--target", "host", "--workers", "-1"], "--workers"),
        (base + ["--target", "host", "--nproc", "0"], "--nproc"),
        (base + ["--target", "host", "--precision", "fp16"], "fp16: needs --device cuda"),
        *([(base + ["--target", "host", "--device", "cuda"], "sees no CUDA GPU")]
          if not torch.cuda.is_available() else []),
        (["--resume", "--out", str(tmp_path / "none"), "--quiet"], "not found"),
    ]
    for argv, match in cases:
        _fails(["search", *argv], capsys, match)
    # a corrupted checkpoint on resume
    run = tmp_path / "r"
    assert cli_main(["search", *base, "--target", "host"]) == 0
    (run / "checkpoint.pt").write_bytes(b"garbage")
    _fails(["search", "--resume", "--out", str(run), "--quiet"], capsys, "corrupted checkpoint")


# -- untrusted checkpoints and settings that cannot work (issue 8) ---------------------------------------
class _Payload:
    """Unpickling this creates a file: proof that a checkpoint's code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_never_runs_code(space, tiny_table, data, tmp_path):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": 2, "supernet": {}, "x": _Payload(marker)}, run / "checkpoint.pt")
    with pytest.raises(TvmNasError, match="corrupted checkpoint.*never unpickled") as e:
        _search(space, tiny_table, data, run).fit(resume=True)
    assert "\n" not in str(e.value)
    from tvm_nas.train import supernet_weights

    with pytest.raises(TvmNasError, match="not a search checkpoint"):
        supernet_weights(space, [b.candidates[0] for b in space.blocks()], run)
    assert not marker.exists()
    # the payload is real: an unrestricted load runs it
    torch.load(run / "checkpoint.pt", weights_only=False)
    assert marker.exists()


def test_settings_that_cannot_search_are_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="never be trained"):
        SearchConfig(latency_budget_us=100.0, epochs=1, warmup_epochs=5)
    for bad in (float("inf"), float("nan"), 0.0, -1.0, 1.0):
        with pytest.raises(ValidationError):
            SearchConfig(latency_budget_us=bad)
    with pytest.raises(ValidationError):
        SearchConfig(latency_budget_us=100.0, threads=-1)


def test_budget_below_the_fastest_net_is_marked(space, tiny_table):
    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    fast, _ = table.extremes(space)
    t_fast = table.predict(space, fast)
    probs = [np.ones(len(b.candidates)) / len(b.candidates) for b in space.blocks()]
    doc = derive(probs, space, table, budget_us=t_fast / 2)
    d = doc["derivation"]
    assert d["budget_feasible"] is False and d["budget_met"] is False
    assert d["fastest_latency_us"] == pytest.approx(t_fast) and doc["ops"] == fast
    ok = derive(probs, space, table, budget_us=t_fast * 2)["derivation"]
    assert ok["budget_feasible"] is True


def test_the_derived_net_keeps_a_margin_for_the_tables_error(space, tiny_table):
    """A net predicted just under the budget is measured over it as often as not: the derivation fits the net to
    the budget less the margin, and says so."""
    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    _, slow = table.extremes(space)
    t_slow = table.predict(space, slow)
    sharp = [np.where(np.array(b.candidates) == op, 0.9, 0.1 / (len(b.candidates) - 1))
             for b, op in zip(space.blocks(), slow, strict=True)]
    budget = t_slow * 1.01  # the most probable net is 1% under the budget
    plain = derive(sharp, space, table, budget_us=budget)
    assert plain["ops"] == slow and plain["derivation"]["changed_blocks"] == []
    kept = derive(sharp, space, table, budget_us=budget, margin_pct=5.0)
    d = kept["derivation"]
    assert kept["ops"] != slow and d["changed_blocks"] and d["argmax_ops"] == slow
    assert d["budget_margin_pct"] == 5.0 and d["target_us"] == pytest.approx(budget * 0.95)
    assert kept["predicted_latency_us"] <= budget * 0.95 and d["budget_met"] is True
    # the search's settings carry it, and the run passes its own on
    assert SearchConfig(latency_budget_us=100.0).budget_margin == 3.0
    from tvm_nas.config import RunConfig
    assert RunConfig(budget_margin=7.5).search(100.0).budget_margin == 7.5


def test_cli_train_bad_inputs(space, tiny_table, tmp_path, capsys):
    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    arch = write_arch(tmp_path / "a.arch.json", derive([np.ones(len(b.candidates)) for b in space.blocks()],
                                                       space, table))
    for extra, match in ((["--epochs", "0"], "--epochs"), (["--lr", "-1"], "--lr"),
                         (["--threads", "-1"], "--threads")):
        _fails(["train", "--arch", str(arch), "--quiet", "--out", str(tmp_path / "t"), *extra], capsys, match)


def test_cli_train_judges_on_the_held_out_test_set(space, tiny_table, tmp_path, capsys):
    """--test-data: the accuracy printed and written is the held-out set's, labelled; without it, the validation
    split's, labelled as the split a search trains α on."""
    from conftest import photo_folders

    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    arch = write_arch(tmp_path / "a.arch.json", derive([np.ones(len(b.candidates)) for b in space.blocks()],
                                                       space, table))
    train, test = photo_folders(tmp_path / "p", train=20, test=8)
    base = ["train", "--arch", str(arch), "--data", f"imagefolder:{train}", "--epochs", "2", "--quiet"]
    capsys.readouterr()
    assert cli_main([*base, "--out", str(tmp_path / "t"), "--test-data", f"imagefolder:{test}"]) == 0
    r = json.loads((tmp_path / "t" / "train.json").read_text())
    assert r["accuracy_set"] == "test" and r["accuracy"] == r["test_accuracy"]
    assert r["test_data"]["samples"] == 80 and r["data"]["samples"] == 200
    assert f"test accuracy {r['test_accuracy']:.4f} on imagefolder:{test} (held out)" in capsys.readouterr().out
    assert cli_main([*base, "--out", str(tmp_path / "v")]) == 0
    r = json.loads((tmp_path / "v" / "train.json").read_text())
    assert r["accuracy_set"] == "validation" and r["test_accuracy"] is None and r["accuracy"] == r["val_accuracy"]
    assert "the one a search trains α on" in capsys.readouterr().out
    # a test folder whose classes are not the training data's is refused before training
    (test / "class09").rename(test / "zebra")
    _fails([*base, "--out", str(tmp_path / "w"), "--test-data", f"imagefolder:{test}"], capsys,
           "--test-data .*differ from the training data")


def test_cli_resume_keeps_the_run_settings(space, tiny_table, tmp_path, capsys):
    run = tmp_path / "run"
    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    fast_us = table.predict(space, table.extremes(space)[0])
    argv = ["--space", "tiny", "--target", "host", "--logs-dir", str(tiny_table.parent.parent), "--latency-ms",
            str(fast_us / 2000), "--out", str(run), "--epochs", "2", "--warmup-epochs", "1", "--max-samples", "200",
            "--batch-size", "32", "--threads", "2", "--quiet", "--precision", "bf16"]
    capsys.readouterr()
    assert cli_main(["search", *argv]) == 0
    out = capsys.readouterr()
    assert "below the fastest net" in out.err and "OVER BUDGET" in out.out
    doc = json.loads((run / ARCH_FILE).read_text())
    assert doc["derivation"]["budget_feasible"] is False
    saved = json.loads((run / "config.json").read_text())["search"]
    assert saved["threads"] == 2 and saved["precision"] == "bf16"
    torch.set_num_threads(1)
    (run / ARCH_FILE).unlink()
    assert cli_main(["search", "--resume", "--out", str(run), "--quiet"]) == 0
    assert torch.get_num_threads() == 2  # the run's own setting, not this process's
    assert json.loads((run / ARCH_FILE).read_text())["ops"] == doc["ops"]


def test_warmup_default_follows_epochs(space, tiny_table, tmp_path, capsys):
    """`search --epochs 3` runs (a third of the epochs warm up); a warm-up the user set that leaves no search
    epoch is still refused in one line."""
    base = ["search", "--space", "tiny", "--target", "host", "--data", "builtin", "--latency-ms", "1",
            "--logs-dir", str(tiny_table.parent.parent), "--max-samples", "200", "--quiet"]
    assert cli_main([*base, "--epochs", "3", "--out", str(tmp_path / "a")]) == 0
    saved = json.loads((tmp_path / "a" / "config.json").read_text())["search"]
    assert saved["epochs"] == 3 and saved["warmup_epochs"] == 1
    _fails([*base, "--epochs", "3", "--warmup-epochs", "3", "--out", str(tmp_path / "b")], capsys,
           "warm-up takes all 3 epochs")


def test_the_derived_net_fills_the_budget_alpha_left_unused(space, tiny_table, tmp_path):
    """Where α has not decided, the most probable net can sit far under the budget: the derivation spends the rest
    on slower ops, undecided blocks first, until no slower op fits."""
    from tvm_nas.search.derive import fill_budget

    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    blocks = space.blocks()
    fast, slow = table.extremes(space)

    def lean(share, ops):  # every block leaning to its op of `ops` with probability `share`
        return [np.where(np.array(b.candidates) == op, share, (1 - share) / (len(b.candidates) - 1))
                for b, op in zip(blocks, ops, strict=True)]

    # every block barely leaning to its fastest op: the argmax net is the fastest, far under a halfway budget
    budget = (table.predict(space, fast) + table.predict(space, slow)) / 2
    probs = lean(0.4, fast)
    plain = derive(probs, space, table, budget_us=budget)
    assert plain["ops"] == fast and plain["derivation"]["filled_blocks"] == []
    doc = derive(probs, space, table, budget_us=budget, margin_pct=3.0, fill=True)
    d, target = doc["derivation"], budget * 0.97
    assert d["filled_blocks"] and d["rule"] == "argmax, then fill the budget" and d["argmax_ops"] == fast
    assert plain["predicted_latency_us"] < doc["predicted_latency_us"] <= target and d["budget_met"]
    # nothing is left to spend: every slower op of every block would take the net over the target
    for i, b in enumerate(blocks):
        for op in b.candidates:
            if table.latency(b.key(op)) > table.latency(b.key(doc["ops"][i])):
                assert table.predict(space, [*doc["ops"][:i], op, *doc["ops"][i + 1:]]) > target
    assert load_architecture(write_arch(tmp_path / "f.arch.json", doc)).doc["derivation"]["filled_blocks"] == \
        d["filled_blocks"]
    # one block undecided, the others decided on their fastest op, room for exactly the undecided block's slowest
    # op: that block takes it, the decided ones keep theirs
    j = len(blocks) - 1
    probs = [*lean(0.999, fast)[:j], lean(0.4, fast)[j]]
    want = [*fast[:j], slow[j]]
    assert fill_budget(fast, probs, space, table, table.predict(space, want) + 1e-6) == (want, [j])
    assert fill_budget(slow, probs, space, table, table.predict(space, slow)) == (list(slow), [])
    assert SearchConfig(latency_budget_us=100.0).fill_budget is True



def test_the_searched_net_is_chosen_by_its_measured_latency(space, tiny_table, tmp_path):
    """Nets derived around the budget are measured; the slowest whose measured median meets the budget is kept,
    one more is derived where the measurements put the budget when none meets it, and a budget no net meets is
    said. Here the target is a machine `speed` times the table (the real compile-and-time path: test_run.py)."""
    from tvm_nas.search.measured import around_budget, settle_by_measurement

    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    blocks = space.blocks()
    fast, slow = table.extremes(space)
    probs = [np.where(np.array(b.candidates) == op, 0.4, 0.6 / (len(b.candidates) - 1))
             for b, op in zip(blocks, fast, strict=True)]  # undecided: the derivation fills towards the budget
    # a budget near the middle of the space with different nets derived around it: the tuned table's op latencies
    # vary from run to run, and at some budgets no net lies within the margin of another
    mid = (table.predict(space, fast) + table.predict(space, slow)) / 2
    nets = [list(ops) for ops in itertools.product(*(b.candidates for b in blocks))]
    budget = next(b for b in sorted({table.predict(space, n) for n in nets}, key=lambda b: abs(b - mid))
                  if len({tuple(d["ops"]) for _, d in around_budget(probs, space, table, b, 3.0)}) >= 2)

    def settle(speed, margin=3.0):
        measured, said = [], []

        def measure(nets):
            measured.append([list(n) for n in nets])
            return [{"median": speed * table.predict(space, n), "q1": 0.0, "q3": 0.0, "stable": True, "rounds": 3}
                    for n in nets]

        base = derive(probs, space, table, budget, True, margin, True)
        doc = settle_by_measurement({**base, "search": {"seed": 7}}, probs, space, table, budget, margin, True,
                                    measure, said.append)
        return doc, measured, said[0]

    cands = around_budget(probs, space, table, budget, 3.0)
    assert [m for m, _ in cands][0] == 3.0 and len({tuple(d["ops"]) for _, d in cands}) == len(cands) >= 2
    assert cands[-1][1]["predicted_latency_us"] > budget * 0.97  # aimed past the margin, up to 3% over the budget
    # a machine 5% faster than the table: a net the table puts over the budget less its margin meets it
    doc, measured, line = settle(0.95)
    d = doc["derivation"]
    assert measured == [[list(x["ops"]) for _, x in cands]]  # measured together, in one session
    under = [r for r in d["measured"] if r["measured_us"] <= budget]
    assert d["budget_met"] and doc["ops"] == max(under, key=lambda r: r["measured_us"])["ops"]
    assert doc["predicted_latency_us"] > budget * 0.97 and doc["search"] == {"seed": 7}
    assert "measured" in d["rule"] and f"kept {' '.join(doc['ops'])}" in line
    assert load_architecture(write_arch(tmp_path / "m.arch.json", doc)).doc["derivation"]["measured"] == \
        d["measured"]
    # slower than the table by just enough that every net around the budget is over: one more, aimed where the
    # measurements put the budget, meets it
    speed = 1.02 * budget / min(x["predicted_latency_us"] for _, x in cands)
    doc, measured, _ = settle(speed)
    d = doc["derivation"]
    assert len(measured) == 2 and len(measured[1]) == 1 and d["budget_met"]
    assert doc["ops"] == measured[1][0] and speed * doc["predicted_latency_us"] <= budget
    # so slow that even the space's fastest net is over: the fastest measured is kept and the derivation says so
    doc, _, line = settle(1.02 * budget / table.predict(space, fast))
    d = doc["derivation"]
    assert d["budget_met"] is False and "none meets the budget by measurement" in line
    assert doc["ops"] == min(d["measured"], key=lambda r: r["measured_us"])["ops"]


def test_the_search_says_which_blocks_it_filled(space, tiny_table, data, tmp_path):
    """The search's own derivation fills the budget by default, records it in the arch file and says so."""
    import io

    from rich.console import Console

    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    fast, slow = table.extremes(space)
    budget = (table.predict(space, fast) + table.predict(space, slow)) / 2
    out = io.StringIO()
    s = ProxylessSearch(space, table, data, SearchConfig(latency_budget_us=budget, epochs=2, warmup_epochs=1,
                                                         batch_size=32), tmp_path, console=Console(file=out))
    s.setup()
    with torch.no_grad():  # α decided on the fastest net
        for m, op in zip(s.supernet_.mixed_ops, fast, strict=True):
            m.alpha.copy_(torch.tensor([3.0 if c == op else 0.0 for c in m.candidates]))
    s.history_ = []
    s._derive()
    d = s.arch_["derivation"]
    assert d["argmax_ops"] == fast and d["filled_blocks"] and s.arch_["predicted_latency_us"] <= budget * 0.97
    assert json.loads((tmp_path / ARCH_FILE).read_text())["derivation"]["filled_blocks"] == d["filled_blocks"]
    said = " ".join(out.getvalue().split())
    assert "left part of the budget unused" in said and "fill_budget" in said
