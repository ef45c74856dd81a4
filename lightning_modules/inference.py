"""The network in the form it is deployed in: weight norm folded, no autograd, fast layouts.

Weight normalisation only matters while training (it reparametrises the optimisation); at
inference it costs a norm, a division and a multiplication per conv per call, and it hides the
convs from tools that look for plain ``nn.Conv2d`` (ptflops, some exporters). Folding bakes
``g * v / ||v||`` into each conv once.

Most of a CPU forward pass that is not convolution is memory traffic at the full packed
resolution, and channels-last memory makes the convs themselves faster. The deployed form
(:class:`DeployedRestorationNet`) therefore runs channels-last by default and rewrites its output
stage so that the largest tensor of the pass, the 24-channel concatenation before fuse2, is never
written. Measured in ``benchmarks/speed.py``.

The three encoders depend only on the input, so on a GPU they can run at the same time on separate
CUDA streams: the paper's "architecture parallelism", worth about 30% there. On a CPU the
operators already use every core, so the encoders run one after another.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from lightning_modules.network import DarkRestorationNet

ConcurrentEncoders = bool | Literal["auto"]

# Names accepted for ``dtype``, so command lines and configs can say "bf16".
DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
INFERENCE_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)


def _give_own_class(module: nn.Module) -> None:
    """Detach a deep-copied parametrized module from the class it shares with its original.

    ``torch.nn.utils.parametrize`` puts the ``weight`` property on a class made for the original
    module, and ``copy.deepcopy`` reuses that class. ``remove_parametrizations`` deletes the
    property from the class, so folding a copy would break the original network (seen with
    torch 2.13: "'ParametrizedConv2d' object has no attribute 'weight'"). A private clone of the
    class keeps the original intact.
    """
    cls = type(module)
    namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, namespace)


def _has_legacy_weight_norm(module: nn.Module) -> bool:
    """Old-style ``torch.nn.utils.weight_norm`` (a forward pre-hook), as in the authors' code."""
    return any(
        type(hook).__name__ == "WeightNorm" for hook in module._forward_pre_hooks.values()
    )


def _keep_as_parameter(module: nn.Module, name: str) -> None:
    """remove_parametrizations turns a frozen (requires_grad=False) weight into a buffer.

    A buffer still works, but ``.parameters()`` (optimisers, parameter counts, ``.to(dtype)``
    rules of some tools) would no longer see it; put it back as a frozen parameter.
    """
    if name in module._buffers:
        tensor = module._buffers.pop(name)
        module.register_parameter(name, nn.Parameter(tensor, requires_grad=False))


def _fold_module(module: nn.Module) -> None:
    if parametrize.is_parametrized(module):
        _give_own_class(module)
        for name in list(module.parametrizations.keys()):
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
            _keep_as_parameter(module, name)
    if _has_legacy_weight_norm(module):
        torch.nn.utils.remove_weight_norm(module)


def has_weight_norm(net: nn.Module) -> bool:
    """Whether any module still computes its weight on the fly (new- or old-style weight norm)."""
    return any(
        parametrize.is_parametrized(m) or _has_legacy_weight_norm(m) for m in net.modules()
    )


def fold_weight_norm(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose weight-normalised convs are plain ``nn.Conv2d`` with fixed weights.

    The copy computes the same function (to float rounding) and has plain ``weight``/``bias``
    state-dict keys; ``net`` itself is left untouched and keeps training.
    """
    # Old-style weight norm keeps the computed weight as a non-leaf tensor, which deepcopy
    # refuses; a detached copy stands in for it (the fold recomputes it from g and v anyway).
    memo = {
        id(m.weight): m.weight.detach().clone()
        for m in net.modules()
        if _has_legacy_weight_norm(m) and isinstance(getattr(m, "weight", None), torch.Tensor)
    }
    folded = copy.deepcopy(net, memo)
    for module in folded.modules():
        _fold_module(module)
    if has_weight_norm(folded):  # pragma: no cover - would be a torch behaviour change
        raise RuntimeError("fold_weight_norm left a parametrization behind; please report this")
    return folded


def conv_of_concatenation(conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``conv(cat[a, b])`` as ``conv_a(a) + conv_b(b)``, never writing the concatenation.

    A convolution is linear in its input channels, so the weight splits along them. At the
    network's output this saves writing and re-reading a 24-channel map at the full packed
    resolution, the largest tensor of the whole forward pass. Only for frozen, plain convs.
    """
    if conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError("conv_of_concatenation needs an ungrouped, zero-padded conv")
    split = a.shape[1]
    weight = conv.weight
    geometry = (conv.stride, conv.padding, conv.dilation)
    out = F.conv2d(a, weight[:, :split], conv.bias, *geometry)
    return out.add_(F.conv2d(b, weight[:, split:], None, *geometry))


class DeployedRestorationNet(DarkRestorationNet):
    """A folded :class:`DarkRestorationNet` whose output stage is rewritten for inference.

    Same function, same state-dict keys; the decoder skips the full-resolution concatenation
    (:func:`conv_of_concatenation`) and clamps in place before the final pixel shuffle (the two
    commute), which together take about a tenth off a CPU forward pass. The in-place clamp is
    why this form is for inference only: train the plain network.
    """

    @classmethod
    def from_folded(cls, folded: DarkRestorationNet) -> DeployedRestorationNet:
        """Re-type a folded network in place (its modules and weights stay as they are)."""
        if type(folded) is not DarkRestorationNet or has_weight_norm(folded):
            raise TypeError("from_folded needs a DarkRestorationNet from fold_weight_norm")
        folded.__class__ = cls
        return folded  # type: ignore[return-value]

    def decode(self, low: torch.Tensor, medium: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        fused = self.fuse1(medium, high)
        out = conv_of_concatenation(self.fuse2, low, fused).clamp_(0.0, 1.0)
        return F.pixel_shuffle(out, 2)


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """Accept ``torch.bfloat16`` as well as ``"bf16"``; refuse anything else by name."""
    if dtype is None or isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype in DTYPE_NAMES:
        resolved = DTYPE_NAMES[dtype]
    else:
        raise ValueError(f"dtype={dtype!r} is not supported: use one of {sorted(DTYPE_NAMES)}")
    if resolved is not None and resolved not in INFERENCE_DTYPES:
        raise ValueError(f"dtype={resolved} is not supported: use float32, bfloat16 or float16")
    return resolved


class InferenceNet(nn.Module):
    """Runs a folded :class:`DarkRestorationNet` under ``torch.inference_mode``.

    Inputs are cast to the network's dtype and memory format here, so callers can keep handing
    over float32, NCHW tensors; the output comes back in the input's floating dtype. The folded
    network is ``self.net`` (its state-dict keys stay those of the plain network, also when
    compiled, because compilation happens in place).
    """

    def __init__(
        self,
        net: DarkRestorationNet,
        *,
        channels_last: bool = True,
        dtype: torch.dtype | None = None,
        concurrent_encoders: ConcurrentEncoders = "auto",
    ) -> None:
        super().__init__()
        if concurrent_encoders not in (True, False, "auto"):
            raise ValueError(
                f"concurrent_encoders={concurrent_encoders!r}: use True, False or 'auto' "
                "(auto = CUDA streams on a GPU, sequential on a CPU)"
            )
        self.net = net
        self.channels_last = channels_last
        self.dtype = dtype
        self.concurrent_encoders = concurrent_encoders
        self._streams: dict[torch.device, tuple[torch.cuda.Stream, torch.cuda.Stream]] = {}

    def extra_repr(self) -> str:
        return (
            f"channels_last={self.channels_last}, dtype={self.dtype}, "
            f"concurrent_encoders={self.concurrent_encoders!r}"
        )

    def uses_streams(self, x: torch.Tensor) -> bool:
        """Streams only exist on CUDA; elsewhere ``True`` and ``"auto"`` fall back to sequential."""
        return bool(self.concurrent_encoders) and x.is_cuda

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is not None:
            x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _side_streams(self, device: torch.device) -> tuple[torch.cuda.Stream, torch.cuda.Stream]:
        # Made once per device: creating streams per call would cost more than it saves.
        if device not in self._streams:
            self._streams[device] = (torch.cuda.Stream(device), torch.cuda.Stream(device))
        return self._streams[device]

    def encode_concurrently(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``net.encode(x)`` with the high and medium encoders on their own CUDA streams.

        The low encoder (one small conv) stays on the caller's stream and overlaps with them.
        """
        main = torch.cuda.current_stream(x.device)
        high_stream, medium_stream = self._side_streams(x.device)
        side = ((high_stream, self.net.high), (medium_stream, self.net.medium))
        outputs = []
        for stream, encoder in side:
            # x (and anything queued before this call) must be ready before a side stream reads it.
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                outputs.append(encoder(x))
        low = self.net.low(x)
        for (stream, _), out in zip(side, outputs, strict=True):
            # The decoder on the main stream must see finished encoder outputs...
            main.wait_stream(stream)
            # ...and the caching allocator must not hand out a tensor's memory while another
            # stream may still use it: outputs were made on a side stream and die on main; x was
            # made on main and is read on the side streams.
            out.record_stream(main)
            x.record_stream(stream)
        high, medium = outputs
        return low, medium, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        DarkRestorationNet.check_input(x)
        with torch.inference_mode():
            z = self._prepare_input(x)
            if self.uses_streams(z):
                y = self.net.decode(*self.encode_concurrently(z))
            else:
                y = self.net(z)
            if x.is_floating_point() and y.dtype != x.dtype:
                y = y.to(x.dtype)
        return y


def _compile_in_place(net: DarkRestorationNet, per_block: bool,
                      options: Mapping[str, Any]) -> None:
    """``Module.compile`` keeps state-dict keys free of ``_orig_mod.`` prefixes.

    With concurrent encoders the forward is bypassed (encoders are called one by one from
    :meth:`InferenceNet.encode_concurrently`), so each block the decoder calls as a module is
    compiled instead (fuse2's weights are used by :func:`conv_of_concatenation`, not its call).
    """
    if per_block:
        for block in (net.high, net.medium, net.low, net.fuse1):
            block.compile(**options)
    else:
        net.compile(**options)


def prepare_for_inference(
    net: DarkRestorationNet,
    *,
    device: torch.device | str | None = None,
    channels_last: bool = True,
    compile: bool | Mapping[str, Any] = False,
    dtype: torch.dtype | str | None = None,
    concurrent_encoders: ConcurrentEncoders = "auto",
) -> InferenceNet:
    """A folded, frozen, deployed copy of ``net`` in :class:`InferenceNet`; ``net`` is unchanged.

    ``dtype`` (bf16/fp16) is meant for GPUs, where it roughly halves memory traffic, and for
    CPUs with AMX (bf16 about twice as fast as float32 on a Sapphire Rapids Xeon, see
    BENCHMARKS.md); on other CPUs half-precision convs are usually slower than float32.
    ``compile`` (``True``, or a dict of ``torch.compile`` options such as
    ``{"dynamic": False, "mode": "max-autotune"}``) pays tens of seconds (minutes on a small
    CPU) on the first call of each new input shape, and on a CPU was slower than eager here.
    """
    resolved = resolve_dtype(dtype)
    folded = DeployedRestorationNet.from_folded(fold_weight_norm(net))
    folded = folded.eval().requires_grad_(False)
    if device is not None:
        folded = folded.to(torch.device(device))
    if resolved is not None:
        folded = folded.to(resolved)
    if channels_last:
        folded = folded.to(memory_format=torch.channels_last)
    wrapper = InferenceNet(folded, channels_last=channels_last, dtype=resolved,
                           concurrent_encoders=concurrent_encoders)
    if compile:
        options = {} if compile is True else dict(compile)
        # Compiled for the device it is on now: move the network before asking for compile.
        on_cuda = next(folded.parameters()).is_cuda
        _compile_in_place(folded, per_block=bool(concurrent_encoders) and on_cuda, options=options)
    return wrapper.eval()


def load_inference_net(ckpt_path: str | Path, **options: object) -> InferenceNet:
    """The network of a darkraw Lightning checkpoint, ready for inference.

    ``options`` are those of :func:`prepare_for_inference`. The checkpoint alone rebuilds the
    network (its hyper-parameters name the ``rdb`` variant). The authors' published file is not
    a Lightning checkpoint: convert it first with ``python -m lightning_modules.reference_import``.
    """
    from darkraw.checkpoints import load_network

    net = load_network(ckpt_path, torch.device("cpu"))
    return prepare_for_inference(net, **options)  # type: ignore[arg-type]

