"""A loaded library is one this tvm-nas built: a library from a shared folder never runs its constructor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from tvm_nas.backend.library import run_library
from tvm_nas.backend.trust import TRUST_ENV, check_loadable, inside
from tvm_nas.errors import TvmNasError


def _evil_library(tmp_path, marker):
    """A shared library whose constructor writes ``marker`` the moment it is loaded."""
    src = tmp_path / "evil.c"
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void pwn(void) {\n'
                   f'  FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("ran", f); fclose(f); }}\n}}\n')
    lib = tmp_path / "model.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TVM_NAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(TRUST_ENV, raising=False)


def test_a_library_built_elsewhere_is_never_loaded(tmp_path, fresh_cache, monkeypatch):
    marker = tmp_path / "pwned"
    lib = _evil_library(tmp_path, marker)
    x = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(TvmNasError, match="did not build on this machine is not loaded") as e:
        run_library(lib, x)
    assert "\n" not in str(e.value) and not marker.exists()
    # a symlink to it is the same library
    (tmp_path / "link.so").symlink_to(lib)
    with pytest.raises(TvmNasError, match="did not build"):
        check_loadable(tmp_path / "link.so")
    assert not marker.exists()
    # the real loader would have run it: the refusal is what kept the file from appearing
    monkeypatch.setenv(TRUST_ENV, "1")
    assert check_loadable(lib) == lib.resolve()
    import ctypes

    ctypes.CDLL(str(lib))
    assert marker.read_text() == "ran"


def test_a_manifest_names_only_a_library_in_its_own_folder(tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    (build / "model.so").write_bytes(b"x")
    (tmp_path / "other.so").write_bytes(b"x")
    (build / "escape.so").symlink_to(tmp_path / "other.so")
    assert inside(build, "model.so", "m.json: field 'library.file'") == (build / "model.so").resolve()
    for name in ("../other.so", str(tmp_path / "other.so"), "escape.so", "/usr/lib/x86_64-linux-gnu/libc.so.6"):
        with pytest.raises(TvmNasError, match="field 'library.file'.*outside"):
            inside(build, name, "m.json: field 'library.file'")


@pytest.mark.slow
def test_compare_refuses_a_build_folder_whose_library_was_swapped(tmp_path, fresh_cache):
    """A build made here loads; the same folder with its library swapped for another and the manifest's digest
    updated (as whoever shares a folder can) is refused by compare, and the library's constructor never runs."""
    from conftest import quick_target

    from tvm_nas.arch import arch_document, load_architecture, write_arch
    from tvm_nas.deploy.compare import Built, compare_built
    from tvm_nas.deploy.compile import MANIFEST, compile_arch
    from tvm_nas.io import sha256_file
    from tvm_nas.space import load_space
    from tvm_nas.targets import load_target

    spec = load_target(str(quick_target(tmp_path)))
    arch = write_arch(tmp_path / "a.arch.json", arch_document(load_space("tiny"),
                                                              ["mbconv_k3_e3", "zero", "mbconv_k3_e3"], None, None))
    build = tmp_path / "build"
    compile_arch(arch, spec, out=build, untuned=True, measure=False, logs_dir=tmp_path / "logs")
    assert check_loadable(build / "model.so")  # recorded when it was built
    marker = tmp_path / "pwned"
    (tmp_path / "evil").mkdir()
    # swapped as a new file (a new inode): this process has the built library mapped, and rewriting that file in place
    # would change its pages under it (a bus error at exit)
    shutil.copyfile(_evil_library(tmp_path / "evil", marker), build / ".swap.so")
    os.replace(build / ".swap.so", build / "model.so")
    m = json.loads((build / MANIFEST).read_text())
    m["library"]["sha256"] = sha256_file(build / "model.so")
    (build / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(TvmNasError, match="did not build on this machine is not loaded"):
        compare_built([Built(load_architecture(arch), spec, None, build)], which=["onnxruntime"])
    m["library"]["file"] = "../evil/model.so"
    (build / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(TvmNasError, match="field 'library.file'.*outside"):
        compare_built([Built(load_architecture(arch), spec, None, build)], which=["onnxruntime"])
    assert not marker.exists()
