"""CNN architectures, rebuilt from a small dataclass of arguments saved in each checkpoint."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from fracture import recipe

OUTPUT_STRIDES = tuple(int(w) for w in recipe.OUTPUT_STRIDES)  # (32, 16, 8)
POOLINGS = recipe.POOLINGS  # ("mean", "lse")


@dataclass(frozen=True)
class ModelArgs:
    """Everything needed to rebuild the network; `arch` is "fracnet" or a torchvision model name."""

    arch: str = "fracnet"
    width: int = 32
    depths: tuple[int, ...] = (1, 1, 2, 1)
    in_channels: int = 1
    dropout: float = 0.2
    # FracNet's last block's map is the image's side over this: 32 (4x4 at 128 px), 16, where the last stage keeps
    # its input's resolution and dilates its convolutions instead of striding (the same weights see the same extent,
    # at twice the resolution: 8x8 at 128 px), or 8, the last two stages so (16x16 at 128 px). The class-activation
    # map, the box loss and the heatmap are that map.
    output_stride: int = 32
    # How FracNet's logit pools its class-activation map (the head's linear layer at every cell of the last block):
    # "mean", the global average (a finding on 2 of 256 cells moves the logit by 2/256 of its evidence), or "lse",
    # log-mean-exp over the cells, which follows the strongest cells (a small finding can carry the image's score).
    # The same weights either way: a checkpoint of one warm-starts the other.
    pooling: str = "mean"

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["depths"] = list(self.depths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ModelArgs:
        return cls(
            arch=str(d["arch"]),
            width=int(d["width"]),  # type: ignore[call-overload]
            depths=tuple(int(x) for x in d["depths"]),  # type: ignore[attr-defined]
            in_channels=int(d["in_channels"]),  # type: ignore[call-overload]
            dropout=float(d["dropout"]),  # type: ignore[arg-type]
            # A checkpoint written before the option was made at stride 32.
            output_stride=int(d.get("output_stride", 32)),  # type: ignore[call-overload]
            pooling=str(d.get("pooling", "mean")),  # a checkpoint written before the option averaged
        )


class BasicBlock(nn.Module):
    """A ResNet basic block: two 3x3 convolutions with batch norm and a shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, dilation[0], dilation=dilation[0], bias=False)
        self.bn1: nn.Module = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, dilation[1], dilation=dilation[1], bias=False)
        self.bn2: nn.Module = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class FracNet(nn.Module):
    """A small ResNet for grayscale X-rays: a strided stem, four stages doubling width, one logit."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        w = args.width
        if args.output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, not {args.output_stride}")
        if args.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {args.pooling!r}")
        self.pooling = args.pooling
        self.stem = nn.Sequential(
            nn.Conv2d(args.in_channels, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        cin, reached, dilation = w, 2, 1  # the stem strides once
        for i, depth in enumerate(args.depths):
            cout = w * 2**i
            # A stage that would stride past the output stride keeps its input's resolution instead and dilates
            # its convolutions twice as much as the stage before, from its first block's second convolution on.
            before = dilation
            if reached * 2 > args.output_stride:
                dilation *= 2
            else:
                reached *= 2
            for j in range(depth):
                stride = 2 if j == 0 and dilation == 1 else 1
                layers.append(BasicBlock(cin, cout, stride, ((before if j == 0 else dilation), dilation)))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(args.dropout), nn.Linear(cin, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each block: each starts as identity
            if isinstance(m, BasicBlock) and isinstance(m.bn2, nn.BatchNorm2d):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(self.stages(self.stem(x)))

    def _cam(self, h: torch.Tensor) -> torch.Tensor:
        linear = self.head[-1]
        assert isinstance(linear, nn.Linear)
        return torch.einsum("nchw,c->nhw", h, linear.weight[0].to(h.dtype)) + linear.bias[0].to(h.dtype)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """The logit of the last block's output: the head on its average, or the log-mean-exp of its map, the
        head's dropout dropping whole channels (at every cell, as dropping a channel of the average does)."""
        if self.pooling == "mean":
            return self.head(h).squeeze(1)
        dropout = self.head[2]
        assert isinstance(dropout, nn.Dropout)
        cam = self._cam(F.dropout2d(h, dropout.p, self.training)).flatten(1).float()
        return (torch.logsumexp(cam, 1) - math.log(cam.shape[1])).to(h.dtype)

    def forward_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and the class-activation map of the last block (N, h, w): the head's linear layer applied
        at every cell, which the logit pools (its mean, or its log-mean-exp; before dropout): what box
        supervision teaches where to look."""
        h = self.stages(self.stem(x))
        return self._logits(h), self._cam(h)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and, in the same pass, the mean and standard deviation of each channel of every block's
        output (N, 2 * sum of block widths), in float32: the features of the out-of-distribution detector.

        The stem's output is left out: the largest map, it cost 30% more serving time for no better detection
        (fracture/release/ood.md).
        """
        h = self.stem(x)
        pooled = []
        for block in self.stages:
            h = block(h)
            pooled.append(_pool(h))
        return self._logits(h), torch.cat(pooled, 1)


def _pool(h: torch.Tensor) -> torch.Tensor:
    """Per channel: the mean and the (population) standard deviation over the map, from the first two moments;
    on 2 CPU cores 4x cheaper than torch.std_mean on a channels_last map."""
    h = h.float()
    mean = h.mean((2, 3))
    second = (h * h).mean((2, 3))
    return torch.cat([mean, (second - mean * mean).clamp_min(0).sqrt()], 1)


def has_features(model: nn.Module) -> bool:
    """Whether `model` gives the detector's features (FracNet does; torchvision models do not)."""
    return isinstance(model, FracNet)


class TorchvisionBinary(nn.Module):
    """A torchvision classifier whose head gives one logit (probability of the positive class)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        import torchvision  # only for a torchvision architecture: serving FracNet does not pay its import

        self.net = torchvision.models.get_model(args.arch, weights=None, num_classes=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def build_model(args: ModelArgs) -> nn.Module:
    """Construct an untrained network for `args`."""
    if args.arch == "fracnet":
        return FracNet(args)
    import torchvision  # a second of start-up that `fracture classify` and the workers skip for FracNet

    if args.arch in torchvision.models.list_models(module=torchvision.models):
        if args.in_channels != 3:
            raise ValueError(f"torchvision arch {args.arch!r} takes 3 channels; set in_channels=3")
        return TorchvisionBinary(args)
    raise ValueError(f"unknown architecture {args.arch!r}")


def _fuse(conv: nn.Module, bn: nn.Module) -> nn.Conv2d:
    """One convolution that computes conv followed by batch norm (in eval mode)."""
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    return fuse_conv_bn_eval(conv, bn)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of a FracNet with each batch norm folded into the convolution it follows.

    Measured on 2 CPU cores: 1.9x the throughput in channels_last (oneDNN runs conv+bias without a separate
    normalisation pass); logits equal to the unfolded network within 2e-5. Serving and the trainer's final
    evaluation both use it, so the reported figures are those of the served network. Other architectures
    are returned as they are.
    """
    if not isinstance(model, FracNet):
        return model
    model = copy.deepcopy(model).eval()
    conv_a, bn_a, relu_a, conv_b, bn_b, relu_b = model.stem
    model.stem = nn.Sequential(_fuse(conv_a, bn_a), relu_a, _fuse(conv_b, bn_b), relu_b)
    for block in model.modules():
        if isinstance(block, BasicBlock):
            block.conv1, block.bn1 = _fuse(block.conv1, block.bn1), nn.Identity()
            block.conv2, block.bn2 = _fuse(block.conv2, block.bn2), nn.Identity()
            if isinstance(block.shortcut, nn.Sequential):
                block.shortcut = _fuse(block.shortcut[0], block.shortcut[1])
    return model


def load_pretrained(model: nn.Module, weights: str | Path) -> list[str]:
    """Load ImageNet-style weights into a torchvision model, skipping the classifier head.

    `weights` is a local state_dict file, or a torchvision weights name such as
    "ResNet18_Weights.IMAGENET1K_V1" (downloaded by torchvision where the network allows).
    Returns the names of the parameters that were not loaded (the new head).
    """
    if not isinstance(model, TorchvisionBinary):
        raise ValueError("pretrained weights apply to torchvision architectures only")
    path = Path(weights)
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        import torchvision

        state = torchvision.models.get_weight(str(weights)).get_state_dict(progress=False)
    own = model.net.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.net.load_state_dict(compatible, strict=False)
    return sorted(set(own) - set(compatible))
