"""The operator vocabulary: one signature language and the torch modules it names.

Signatures: ``mbconv_k{K}_e{E}`` (odd K >= 1, integer E >= 1), ``zero`` (skip the block) and the fixed layers
``stem_conv_k3``, ``head_conv_k1`` and ``classifier``. :func:`parse_op` is the only parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import TvmNasError

FIXED_OPS = ("stem_conv_k3", "head_conv_k1", "classifier")
_MBCONV = re.compile(r"mbconv_k(\d+)_e(\d+)")


@dataclass(frozen=True)
class OpSig:
    """A parsed operator signature."""

    kind: str  # "mbconv" | "zero" | "stem" | "head" | "classifier"
    kernel: int = 0
    expand: int = 0

    @property
    def name(self) -> str:
        if self.kind == "mbconv":
            return f"mbconv_k{self.kernel}_e{self.expand}"
        return {"zero": "zero", "stem": "stem_conv_k3", "head": "head_conv_k1", "classifier": "classifier"}[self.kind]

    def __str__(self) -> str:
        return self.name


def parse_op(sig: str, where: str = "operator") -> OpSig:
    """Parse and validate an operator signature.

    Args:
        sig: e.g. ``"mbconv_k5_e6"``, ``"zero"``, ``"stem_conv_k3"``.
        where: prefix for the error message (the file and field the signature came from).

    Raises:
        TvmNasError: the signature is not in the language, or its kernel is even or its expansion < 1.
    """
    if not isinstance(sig, str):
        raise TvmNasError(f"{where}: operator must be a string like 'mbconv_k3_e6', got {sig!r}")
    if sig == "zero":
        return OpSig("zero")
    if sig == "stem_conv_k3":
        return OpSig("stem", 3, 0)
    if sig == "head_conv_k1":
        return OpSig("head", 1, 0)
    if sig == "classifier":
        return OpSig("classifier")
    m = _MBCONV.fullmatch(sig)
    if not m:
        raise TvmNasError(
            f"{where}: unknown operator {sig!r}; accepted: mbconv_k<odd K>_e<E>, zero, " + ", ".join(FIXED_OPS)
        )
    k, e = int(m.group(1)), int(m.group(2))
    if k < 1 or k % 2 == 0:
        raise TvmNasError(f"{where}: operator {sig!r} has kernel {k}; the kernel must be odd and >= 1")
    if e < 1:
        raise TvmNasError(f"{where}: operator {sig!r} has expansion {e}; the expansion must be >= 1")
    return OpSig("mbconv", k, e)


class ReLU6(nn.Module):
    """min(max(x, 0), 6), the standard ReLU6 in every mode: it exports as one ONNX ``Clip`` (which ONNX Runtime,
    OpenVINO and TensorRT fuse into the convolution before it) and trains with torch's fused hardtanh backward.

    TVM's layout conversion has no rule for ``clip``; the lowering pipeline rewrites it on TVM's side of the
    import (:func:`tvm_nas.backend.pipeline.clip_to_minimum`), so the network class is the same for training,
    export and every runtime.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(x, 0.0, 6.0)


class ConvBN(nn.Module):
    """Conv2d + BatchNorm2d (+ ReLU6). :meth:`fold` merges the batch norm into the convolution for deployment."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(cout)
        self.act: nn.Module = ReLU6() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fold(self) -> None:
        if isinstance(self.bn, nn.Identity):
            return
        bn, conv = self.bn, self.conv
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           groups=conv.groups, bias=True)
        folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        folded.bias.copy_(bias)
        self.conv, self.bn = folded, nn.Identity()


def check_channels(cin: int, cout: int, stride: int, where: str) -> None:
    if cin <= 0 or cout <= 0:
        raise TvmNasError(f"{where}: channels must be positive, got in={cin}, out={cout}")
    if stride not in (1, 2):
        raise TvmNasError(f"{where}: stride must be 1 or 2, got {stride}")


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand + BN + ReLU6] -> KxK depthwise + BN + ReLU6 -> 1x1 project + BN."""

    def __init__(self, cin: int, cout: int, kernel: int, expand: int, stride: int):
        super().__init__()
        hidden = cin * expand
        self.expand = ConvBN(cin, hidden, 1) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        # the block's output first: a Relax binary op follows its first argument's layout
        return y + x if self.residual else y


class Zero(nn.Module):
    """The `zero` op: the block is skipped and its input passes through the shortcut unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Classifier(nn.Module):
    """Global average pool + (dropout) + linear."""

    def __init__(self, cin: int, classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(x.mean(dim=(2, 3))))

    def forward_nhwc(self, x: torch.Tensor) -> torch.Tensor:
        """The same on NHWC input: the pooling kernel a network has once its layout is converted."""
        return self.linear(self.dropout(x.mean(dim=(1, 2))))


def build_op(sig: str | OpSig, cin: int, cout: int, stride: int, where: str = "operator") -> nn.Module:
    """Build the torch module an operator signature names, for given channels and stride."""
    op = sig if isinstance(sig, OpSig) else parse_op(sig, where)
    check_channels(cin, cout, stride, f"{where} ({op})")
    if op.kind == "mbconv":
        return MBConv(cin, cout, op.kernel, op.expand, stride)
    if op.kind == "zero":
        if stride != 1 or cin != cout:
            raise TvmNasError(f"{where}: 'zero' needs stride 1 and unchanged channels (got {cin}->{cout}, s{stride})")
        return Zero()
    if op.kind == "stem":
        return ConvBN(cin, cout, 3, stride)
    if op.kind == "head":
        return ConvBN(cin, cout, 1, stride)
    return Classifier(cin, cout)


def prepare_for_deploy(model: nn.Module) -> nn.Module:
    """Eval mode with every batch norm folded into its convolution (in place; returns the model)."""
    model.eval()
    for m in model.modules():
        if isinstance(m, ConvBN):
            m.fold()
    return model
