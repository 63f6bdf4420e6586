"""aarch64: the network cross-compiled for the Raspberry Pi 4 runs under qemu-aarch64 and matches PyTorch.

Skipped only when qemu-aarch64 or the cross compiler is absent (CI installs both:
``apt-get install -y g++-aarch64-linux-gnu qemu-user``).
"""

from __future__ import annotations

import numpy as np
import pytest

from tvm_nas.backend import aarch64
from tvm_nas.deploy.compile import LIBRARY, compile_arch
from tvm_nas.deploy.model import build_network_from_arch, example_input, torch_forward
from tvm_nas.space import load_space

pytestmark = pytest.mark.skipif(bool(aarch64.missing_tools()),
                                reason=f"{', '.join(aarch64.missing_tools())} not installed ({aarch64.APT_HINT})")


@pytest.mark.slow
def test_rpi4b_cross_build_runs_under_qemu_and_matches_torch(tmp_path):
    from tvm_nas.arch import arch_document, write_arch

    arch = write_arch(tmp_path / "a.arch.json",
                      arch_document(load_space("tiny"), ["mbconv_k3_e6", "zero", "mbconv_k5_e3"], None, None))
    m = compile_arch(arch, "rpi4b", out=tmp_path / "out", logs_dir=tmp_path / "logs", untuned=True,
                            measure=False)
    lib = tmp_path / "out" / LIBRARY
    assert "cross-linked with aarch64-linux-gnu-g++" in m["library"]["kind"]
    assert lib.read_bytes()[:4] == b"\x7fELF" and lib.read_bytes()[18] == 183  # e_machine = EM_AARCH64
    assert m["verification"]["status"] == "passed", m["verification"]
    assert "qemu-aarch64" in m["verification"]["how"]

    x = example_input((1, 3, 16, 16), seed=9)  # a second input, straight through the runner
    model = build_network_from_arch(arch)
    np.testing.assert_allclose(aarch64.run(lib, x), torch_forward(model, x), atol=1e-4)
