"""Operator signatures, search spaces and targets: parsing and validation."""

from __future__ import annotations

import pytest
import torch
from conftest import MICRO_SPACE, write_yaml

from tvm_nas.arch import reference_ops
from tvm_nas.errors import TvmNasError
from tvm_nas.network import Network
from tvm_nas.ops import MBConv, build_op, parse_op, prepare_for_deploy
from tvm_nas.space import OpKey, list_spaces, load_space
from tvm_nas.targets import list_targets, load_target


@pytest.mark.parametrize("sig,kind,k,e", [("mbconv_k3_e6", "mbconv", 3, 6), ("mbconv_k7_e1", "mbconv", 7, 1),
                                          ("mbconv_k1_e12", "mbconv", 1, 12), ("zero", "zero", 0, 0),
                                          ("stem_conv_k3", "stem", 3, 0), ("classifier", "classifier", 0, 0)])
def test_parse_op(sig, kind, k, e):
    op = parse_op(sig)
    assert (op.kind, op.kernel, op.expand) == (kind, k, e)
    assert op.name == sig


@pytest.mark.parametrize("sig,match", [("mbconv_k4_e6", "odd"), ("mbconv_k3_e0", "expansion"),
                                       ("conv3x3", "unknown operator"), ("mbconv_k3", "unknown"), (3, "string")])
def test_parse_op_rejects(sig, match):
    with pytest.raises(TvmNasError, match=match):
        parse_op(sig)


@pytest.mark.parametrize("cin,cout,k,e,s", [(8, 8, 3, 6, 1), (8, 16, 5, 3, 2), (16, 16, 7, 1, 1)])
def test_mbconv_shapes_and_structure(cin, cout, k, e, s):
    m = build_op(f"mbconv_k{k}_e{e}", cin, cout, s)
    assert isinstance(m, MBConv)
    assert m.residual == (s == 1 and cin == cout)
    assert isinstance(m.expand, torch.nn.Identity) == (e == 1)
    assert m.depthwise.conv.groups == cin * e and m.depthwise.conv.kernel_size == (k, k)
    x = torch.randn(2, cin, 16, 16)
    y = m(x)
    assert y.shape == (2, cout, 16 // s, 16 // s)
    m.train()
    m(torch.randn(4, cin, 16, 16))  # move the batch-norm statistics off their defaults
    m.eval()
    ref = m(x)
    torch.testing.assert_close(prepare_for_deploy(m)(x), ref, rtol=1e-4, atol=1e-5)  # folding keeps outputs


@pytest.mark.parametrize("cin,cout,s,match", [(0, 8, 1, "positive"), (8, -1, 1, "positive"),
                                              (8, 8, 3, "stride")])
def test_build_op_rejects_bad_shapes(cin, cout, s, match):
    with pytest.raises(TvmNasError, match=match):
        build_op("mbconv_k3_e3", cin, cout, s)


def test_imagenet_space_is_the_papers():
    sp = load_space("proxyless-imagenet")
    blocks = sp.blocks()
    assert len(blocks) == 21
    assert [b.out_channels for b in blocks] == [24] * 4 + [40] * 4 + [80] * 4 + [96] * 4 + [192] * 4 + [320]
    firsts = [blocks[i] for i in (0, 4, 8, 12, 16, 20)]
    assert [b.stride for b in firsts] == [2, 2, 2, 1, 2, 1]
    assert sp.fixed_layers()[0] == OpKey("stem_conv_k3", (3, 224, 224), 32, 2)
    assert sp.fixed_layers()[1] == OpKey("mbconv_k3_e1", (32, 112, 112), 16, 1)
    assert sp.fixed_layers()[2].out_channels == 1280
    assert blocks[0].candidates == tuple(f"mbconv_k{k}_e{e}" for k in (3, 5, 7) for e in (3, 6))
    assert "zero" in blocks[1].candidates and "zero" not in blocks[0].candidates
    assert "zero" not in blocks[12].candidates  # 80 -> 96, stride 1: channels change
    assert blocks[-1].in_hw == 7


@pytest.mark.parametrize("name", list_spaces())
def test_every_space_builds_a_network(name):
    sp = load_space(name)
    keys = sp.op_keys()
    assert len(set(keys)) == len(sp.unique_op_keys()) <= len(keys)
    net = Network(sp, reference_ops(sp)).eval()
    r = min(sp.input.resolution, 64) if name != "proxyless-imagenet" else 224
    y = net(torch.randn(1, sp.input.channels, r, r))
    assert y.shape == (1, sp.num_classes) and torch.isfinite(y).all()


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["candidates"].append("mbconv_k4_e3"), "candidates.*odd"),
    (lambda d: d["candidates"].append("warp_k3"), "unknown operator"),
    (lambda d: d["stages"][0].update(out=0), "stages.0.out"),
    (lambda d: d.update(head={"out": -8}), "head.out"),
    (lambda d: d.pop("stem"), "'stem'"),
    (lambda d: d.update(colour="blue"), "colour"),
])
def test_space_validation_names_file_and_field(tmp_path, edit, match):
    d = {k: (v.copy() if isinstance(v, (dict, list)) else v) for k, v in MICRO_SPACE.items()}
    d["stages"] = [dict(s) for s in d["stages"]]
    edit(d)
    path = write_yaml(tmp_path / "bad.yaml", d)
    with pytest.raises(TvmNasError, match=match) as e:
        load_space(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_malformed_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nstages: [ {out: 8\n")
    with pytest.raises(TvmNasError, match="malformed YAML"):
        load_space(path)


@pytest.mark.parametrize("name", list_targets())
def test_every_target_loads(name):
    from tvm_nas.backend.target import to_tvm_target

    spec = load_target(name)
    t = to_tvm_target(spec)
    assert t.kind.name in ("llvm", "cuda")
    assert spec.evaluator.repeat > 1


def test_host_and_x86_v2_differ():
    from tvm_nas.backend.target import host_cpu, to_tvm_target

    host, v2 = to_tvm_target(load_target("host")), to_tvm_target(load_target("x86-64-v2"))
    assert str(host.attrs["mcpu"]) == host_cpu() != str(v2.attrs["mcpu"])
    assert load_target("rpi4b").is_rpc and load_target("rpi4b").cross_compiler == "aarch64-linux-gnu-g++"


@pytest.mark.parametrize("tvm,match", [({"tag": "nvidia/no-such-board"}, "unknown TVM tag"),
                                       ("llvm -mcpu=znver3", "legacy target string"),
                                       ({"mcpu": "znver3"}, "needs 'kind'"),
                                       ({"kind": "cuda"}, "needs 'arch'")])
def test_bad_targets(tmp_path, tvm, match):
    path = write_yaml(tmp_path / "t.yaml", {"name": "t", "tvm": tvm})
    with pytest.raises(TvmNasError, match=match):
        load_target(path)
