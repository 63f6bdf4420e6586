"""The deploy stage: an architecture compiled per target into a module you can load, checked and measured, and
compared with the table's prediction and with PyTorch and ONNX Runtime."""

from .compare import compare, compare_table, write_rows
from .compile import MANIFEST, compile_arch
from .model import build_network_from_arch, load_weights
from .peers import is_host_like

__all__ = ["MANIFEST", "build_network_from_arch", "compare", "compare_table", "compile_arch", "is_host_like",
           "load_weights", "write_rows"]
