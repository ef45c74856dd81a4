"""The real-time extreme low-light restoration network (Lamba & Mitra, CVPR 2021).

Three encoders look at the packed Bayer input at 1/32, 1/8 and 1/2 of full resolution, two fuse
blocks merge them, and a final pixel shuffle returns full-resolution sRGB. The heavy lifting happens
at the lowest resolution, which is why the network is fast. Built from ``shared/spec/network.md``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

RDBVariant = Literal["before", "after"]
RDB_VARIANTS: tuple[str, ...] = ("before", "after")
GROWTH_RATE = 32
PACKED_MULTIPLE = 16
INPUT_CHANNELS = 4


def wn_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    groups: int = 1,
    bias: bool = True,
    slope: float = 1.0,
) -> nn.Conv2d:
    """A stride-1 'same' conv with weight normalisation (dim 0), Kaiming-initialised.

    ``slope`` is the negative slope of the LeakyReLU this conv feeds or follows; 1 means linear.
    The direction ``v`` is initialised before weight norm is attached, so the magnitude ``g``
    starts as ``||v||`` and the effective weight equals the Kaiming draw.
    """
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=kernel_size // 2,
        groups=groups,
        bias=bias,
    )
    nn.init.kaiming_normal_(conv.weight, a=slope, mode="fan_in", nonlinearity="leaky_relu")
    if bias:
        nn.init.zeros_(conv.bias)
    return weight_norm(conv, name="weight", dim=0)


class DenseLayer(nn.Module):
    """One layer of a residual dense block; ``act_first`` decides where its LeakyReLU sits."""

    def __init__(self, in_channels: int, growth: int, slope: float, act_first: bool,
                 use_act: bool = True) -> None:
        super().__init__()
        self.conv = wn_conv(in_channels, growth, 3, bias=False, slope=slope)
        # After its conv, the activation may overwrite the conv's fresh output (conv backward
        # needs only its input), saving one feature map per layer; before it, it must not touch
        # the running concatenation that later layers read.
        self.act: nn.Module = (nn.LeakyReLU(slope, inplace=not act_first) if use_act
                               else nn.Identity())
        self.act_first = act_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_first:
            return self.conv(self.act(x))
        return self.act(self.conv(x))


class ResidualDenseBlock(nn.Module):
    """RDB(C, L) with growth 32; ``rdb`` switches the activation placement only (same params).

    ``before`` is the paper's RDB*: layer 0 has no activation, middle layers apply LReLU(0.2)
    before their conv, the last layer LReLU(1) (identity). ``after`` is the classic RDB: every
    layer applies its LReLU after its conv, with the same slopes (0.2, ..., 0.2, 1).
    """

    def __init__(self, channels: int, num_layers: int, rdb: RDBVariant,
                 growth: int = GROWTH_RATE) -> None:
        super().__init__()
        if rdb not in RDB_VARIANTS:
            raise ValueError(f"rdb must be one of {RDB_VARIANTS}, got {rdb!r}")
        act_first = rdb == "before"
        layers = []
        for j in range(num_layers):
            slope = 1.0 if j == num_layers - 1 else 0.2
            # In RDB* the first layer sees the block input directly: no activation at all.
            use_act = not (act_first and j == 0)
            layers.append(
                DenseLayer(channels + j * growth, growth, slope, act_first, use_act=use_act)
            )
        self.layers = nn.ModuleList(layers)
        self.local_fusion = wn_conv(channels + num_layers * growth, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x
        for layer in self.layers:
            features = torch.cat([features, layer(features)], dim=1)
        return self.local_fusion(features) + x


class HighScaleEncoder(nn.Module):
    """Most of the network's depth, run at 1/32 of full resolution, where it is cheap."""

    def __init__(self, rdb: RDBVariant) -> None:
        super().__init__()
        self.squeeze_grouped = wn_conv(1024, 128, 3, groups=128)
        self.squeeze = wn_conv(128, 64, 3)
        self.rdb1 = ResidualDenseBlock(64, 4, rdb)
        self.rdb2 = ResidualDenseBlock(64, 5, rdb)
        self.rdb3 = ResidualDenseBlock(64, 5, rdb)
        self.global_fusion = wn_conv(192, 64, 1, bias=False)
        self.lift = wn_conv(4, 64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.squeeze(self.squeeze_grouped(F.pixel_unshuffle(x, 16)))
        r1 = self.rdb1(h0)
        r2 = self.rdb2(r1)
        r3 = self.rdb3(r2)
        f = self.global_fusion(torch.cat([r1, r2, r3], dim=1)) + h0
        return self.lift(F.pixel_shuffle(f, 4))


class MediumScaleEncoder(nn.Module):
    """A residual block at 1/8 of full resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = wn_conv(64, 64, 3, slope=0.2)
        self.act = nn.LeakyReLU(0.2, inplace=True)  # on conv1's own output: nothing else reads it
        self.conv2 = wn_conv(64, 64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.pixel_unshuffle(x, 4)
        return self.conv2(self.act(self.conv1(z))) + z


def interleave_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``channel_shuffle(cat[a, b], groups=2)``: channels a0, b0, a1, b1, ..., in one copy.

    The shuffle lets the next grouped conv mix both encoders. Concatenating and then shuffling
    copies the tensor twice, and the shuffle's transpose is a slow strided copy in channels-last
    memory (with the concatenation, about a tenth of a channels-last CPU forward pass). Stacking the
    two inputs along a new last axis of their own memory order writes the interleaved result
    directly, in whichever layout they come in; values and gradients are those of the original.
    """
    if a.shape != b.shape:
        raise ValueError(f"interleave_channels needs equal shapes, got {a.shape} and {b.shape}")
    batch, channels, height, width = a.shape
    if a.is_contiguous() or b.is_contiguous():
        return torch.stack([a, b], dim=2).reshape(batch, 2 * channels, height, width)
    # Channels-last: N x H x W x C in memory, so the channel axis is the last one there.
    nhwc = torch.stack([a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)], dim=-1)
    return nhwc.reshape(batch, height, width, 2 * channels).permute(0, 3, 1, 2)


class FuseBlock1(nn.Module):
    """Merges the medium and high encoders and lifts them to the packed resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.grouped = wn_conv(128, 32, 3, groups=4)
        self.expand = wn_conv(32, 192, 3, slope=0.2)
        self.act = nn.LeakyReLU(0.2, inplace=True)  # on expand's own output

    def forward(self, medium: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        c = interleave_channels(medium, high)
        return F.pixel_shuffle(self.act(self.expand(self.grouped(c))), 4)


class DarkRestorationNet(nn.Module):
    """Packed RGGB ``B x 4 x h x w`` (amplified, [0, ~300]) -> sRGB ``B x 3 x 2h x 2w`` in [0, 1].

    ``h`` and ``w`` must be multiples of 16. 784,768 parameters in either ``rdb`` variant.
    """

    def __init__(self, rdb: RDBVariant = "before") -> None:
        super().__init__()
        if rdb not in RDB_VARIANTS:
            raise ValueError(
                f"model.rdb must be one of {list(RDB_VARIANTS)}, got {rdb!r}: 'before' is the "
                "paper's RDB*, 'after' the classic RDB."
            )
        self.rdb = rdb
        self.high = HighScaleEncoder(rdb)
        self.medium = MediumScaleEncoder()
        self.low = wn_conv(4, 12, 5)
        self.fuse1 = FuseBlock1()
        self.fuse2 = wn_conv(24, 12, 5)

    @staticmethod
    def check_input(x: torch.Tensor) -> None:
        """Fail with a message that says what to do, instead of a shape error deep inside."""
        if x.ndim != 4:
            raise ValueError(
                f"expected a packed Bayer batch of shape B x 4 x h x w, got {tuple(x.shape)}"
            )
        if x.shape[1] != INPUT_CHANNELS:
            raise ValueError(
                f"expected 4 packed Bayer channels (R, G, G, B from pixel_unshuffle of an RGGB "
                f"mosaic), got {x.shape[1]} channels in input of shape {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if h % PACKED_MULTIPLE or w % PACKED_MULTIPLE:
            raise ValueError(
                f"packed height and width must be multiples of {PACKED_MULTIPLE} (full-resolution "
                f"multiples of {2 * PACKED_MULTIPLE}), got {h} x {w} packed; crop or pad the raw "
                f"image (restore.py pads and crops back for you)"
            )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three encoders; they depend only on ``x`` and may run concurrently."""
        return self.low(x), self.medium(x), self.high(x)

    def decode(self, low: torch.Tensor, medium: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        fused = self.fuse1(medium, high)
        y = F.pixel_shuffle(self.fuse2(torch.cat([low, fused], dim=1)), 2)
        return y.clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.decode(*self.encode(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
