"""Built-in models for the papers: two-layer nets, MLPs, a small CNN, VGG-11 and ResNet-18 (no BN).

Width-dependent scales are applied as explicit multipliers *in front of* plain ``nn.Linear`` /
``nn.Conv2d`` layers (a parameter-free :class:`Scale` module), so every weight layer is a standard
torch layer and the structured NTK rules (which capture a layer's actual input) apply unchanged.

Parametrizations of a layer ``y = c * W x + b`` with fan-in ``n`` (Yang & Hu's abc-table):

==============  ==================  =================  ==========================
name            hidden init W       hidden multiplier  output layer
==============  ==================  =================  ==========================
``standard``    N(0, 1/n)           1                  N(0, 1/n), multiplier 1
``ntk``         N(0, 1)             1/sqrt(n)          N(0, 1), multiplier 1/sqrt(n)
``mean_field``  N(0, 1)             1/sqrt(n)          N(0, 1), multiplier 1/n
``mup``         N(0, 1/n)           1                  N(0, 1), multiplier 1/n
==============  ==================  =================  ==========================

Biases start at 0 unless stated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "PARAMETRIZATIONS",
    "Scale",
    "TwoLayerNet",
    "MLP",
    "SmallCNN",
    "vgg11",
    "resnet18",
    "activation",
]

PARAMETRIZATIONS = ("standard", "ntk", "mean_field", "mup")


class _Quadratic(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * x


class _Erf(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.erf(x)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "quadratic": _Quadratic,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "erf": _Erf,
    "identity": nn.Identity,
}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


_act = activation


class Scale(nn.Module):
    """Multiply by a constant: ``x -> c * x`` (no parameters)."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = float(c)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.c if self.c != 1.0 else x

    def extra_repr(self) -> str:
        return f"c={self.c:.4g}"


def _check_dim(name: str, v: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def _check_input(x: Tensor, d: int, who: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != d:
        raise ValueError(f"{who}: x must have shape (N, {d}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: x must be a floating-point tensor, got dtype {x.dtype}")


class TwoLayerNet(nn.Module):
    """Two-layer net ``f(x) = s_out * sum_j a_j sigma(s_in * <w_j, x> + b_j)``.

    Shapes: x (N, d) -> (N, out_dim), or (N,) when ``squeeze`` and out_dim == 1.

    Args:
        d: input dimension. m: width.
        activation: relu | quadratic | tanh | softplus | erf.
        scaling: output scale ``s_out``: ``"ntk"`` = 1/sqrt(m), ``"mean_field"`` = 1/m, or a float.
        input_scale: ``s_in`` (default 1/sqrt(d)).
        bias: hidden biases ``b_j`` (init like the hidden weights: N(0, init_std**2), or
            N(0, init_std**2 / d) under the standard/mup parametrization) and an output bias (init 0).
        init_std: std of every weight at init (w_j, a_j ~ N(0, init_std**2)); for a homogeneous net
            this is Chizat's init scale tau.
        parametrization: shortcut setting scaling/input_scale/init to the module docstring's table.

    Layers: ``self.hidden = nn.Linear(d, m)``, ``self.out = nn.Linear(m, out_dim)``.
    Cost: O(N d m) per forward.
    """

    def __init__(
        self,
        d: int,
        m: int,
        activation: str = "relu",
        scaling: str | float = "ntk",
        input_scale: float | None = None,
        bias: bool = False,
        out_dim: int = 1,
        init_std: float = 1.0,
        parametrization: str | None = None,
        squeeze: bool = True,
    ) -> None:
        super().__init__()
        self.d, self.m = _check_dim("d", d), _check_dim("m", m)
        _check_dim("out_dim", out_dim)
        hidden_std = out_std = float(init_std)
        if parametrization is not None:
            if parametrization not in PARAMETRIZATIONS:
                raise ValueError(
                    f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}"
                )
            if parametrization == "standard":
                input_scale, scaling = 1.0, 1.0
                hidden_std, out_std = init_std / math.sqrt(d), init_std / math.sqrt(m)
            elif parametrization == "ntk":
                input_scale, scaling = 1.0 / math.sqrt(d), "ntk"
            elif parametrization == "mean_field":
                input_scale, scaling = 1.0 / math.sqrt(d), "mean_field"
            else:  # mup
                input_scale, scaling = 1.0, "mean_field"
                hidden_std = init_std / math.sqrt(d)
        if isinstance(scaling, str):
            if scaling not in ("ntk", "mean_field"):
                raise ValueError(f"scaling must be 'ntk', 'mean_field' or a float, got {scaling!r}")
            out_scale = 1.0 / math.sqrt(m) if scaling == "ntk" else 1.0 / m
        else:
            out_scale = float(scaling)
        self.scaling = scaling
        self.act_name = activation
        self.squeeze = squeeze and out_dim == 1
        self.in_scale = Scale(1.0 / math.sqrt(d) if input_scale is None else input_scale)
        self.hidden = nn.Linear(d, m, bias=bias)
        self.act = _act(activation)
        self.out_scale = Scale(out_scale)
        self.out = nn.Linear(m, out_dim, bias=bias)
        with torch.no_grad():
            self.hidden.weight.normal_(0.0, hidden_std)
            self.out.weight.normal_(0.0, out_std)
            if bias:
                self.hidden.bias.normal_(0.0, hidden_std)
                self.out.bias.zero_()

    def features(self, x: Tensor) -> Tensor:
        """Hidden activations ``sigma(s_in W x + b)``, shape (N, m)."""
        _check_input(x, self.d, "TwoLayerNet")
        return self.act(self.hidden(self.in_scale(x)))

    def forward(self, x: Tensor) -> Tensor:
        out = self.out(self.out_scale(self.features(x)))
        return out.squeeze(-1) if self.squeeze else out


class MLP(nn.Module):
    """Fully connected net with ``len(sizes) - 1`` linear layers, e.g. ``MLP([784, 1024, 1024, 10])``.

    ``parametrization`` follows the module docstring's table; ``activation`` by name. Biases (init 0)
    on every layer when ``bias``. Input (N, sizes[0]) or images (N, C, H, W) flattened to sizes[0].
    Cost: O(N sum_l n_l n_{l+1}).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "relu",
        parametrization: str = "standard",
        bias: bool = True,
        squeeze: bool = False,
    ) -> None:
        super().__init__()
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least input and output widths, got {sizes}")
        for i, s in enumerate(sizes):
            _check_dim(f"sizes[{i}]", s)
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(
                f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}"
            )
        self.sizes = sizes
        self.squeeze = squeeze and sizes[-1] == 1
        layers: list[nn.Module] = []
        n_layers = len(sizes) - 1
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == n_layers - 1
            std, mult = _layer_init(parametrization, n_in, last)
            if mult != 1.0:
                layers.append(Scale(mult))
            lin = nn.Linear(n_in, n_out, bias=bias)
            with torch.no_grad():
                lin.weight.normal_(0.0, std)
                if bias:
                    lin.bias.zero_()
            layers.append(lin)
            if not last:
                layers.append(_act(activation))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() > 2:
            x = x.flatten(1)
        _check_input(x, self.sizes[0], "MLP")
        out = self.net(x)
        return out.squeeze(-1) if self.squeeze else out


def _layer_init(parametrization: str, fan_in: int, last: bool) -> tuple[float, float]:
    """(init std, multiplier) of a layer with this fan-in (see the module docstring's table)."""
    if parametrization == "standard":
        return 1.0 / math.sqrt(fan_in), 1.0
    if parametrization == "ntk":
        return 1.0, 1.0 / math.sqrt(fan_in)
    if parametrization == "mean_field":
        return 1.0, (1.0 / fan_in if last else 1.0 / math.sqrt(fan_in))
    # mup
    return (1.0, 1.0 / fan_in) if last else (1.0 / math.sqrt(fan_in), 1.0)


class SmallCNN(nn.Module):
    """``depth`` 3x3 conv layers (``width`` channels, ReLU, stride 2 every other layer), global
    average pooling, a linear head. Input (N, in_channels, H, W) -> (N, n_classes).

    Default PyTorch init (Kaiming-uniform) unless ``init="xavier"`` (Xavier-normal weights, zero
    biases, as in Chizat et al.'s CNN code).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        width: int = 32,
        depth: int = 3,
        init: str = "default",
    ) -> None:
        super().__init__()
        _check_dim("in_channels", in_channels)
        _check_dim("n_classes", n_classes)
        _check_dim("width", width)
        _check_dim("depth", depth)
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            layers += [nn.Conv2d(c, width, 3, stride=2 if i % 2 == 1 else 1, padding=1), nn.ReLU()]
            c = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)
        _init(self, init)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SmallCNN: x must have shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        return self.head(self.features(x).mean(dim=(2, 3)))


def _init(model: nn.Module, init: str, gain: float = 1.0) -> None:
    if init == "default":
        return
    if init != "xavier":
        raise ValueError(f"init must be 'default' or 'xavier', got {init!r}")
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(mod.weight, gain=gain)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)


_VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class _VGG(nn.Module):
    def __init__(self, cfg: list, width_mult: float, n_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                w = max(1, int(round(v * width_mult)))
                layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU()]
                c = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def vgg11(
    n_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3, gain: float = 1.0
) -> nn.Module:
    """VGG-11 without BatchNorm for 32x32 inputs (Chizat et al. 2019, Sec 3.2): 8 conv layers
    (64-M-128-M-256-256-M-512-512-M-512-512-M, channels times ``width_mult``), 512k-d features,
    one linear layer. Xavier-normal weights (``gain``), zero biases."""
    net = _VGG(_VGG11, width_mult, n_classes, in_channels)
    _init(net, "xavier", gain)
    return net


def _conv_bn(c_in: int, c_out: int, k: int, stride: int, bn: bool) -> nn.Module:
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=not bn)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out)) if bn else conv


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, bn: bool = False) -> None:
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, 3, stride, bn)
        self.conv2 = _conv_bn(c_out, c_out, 3, 1, bn)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = _conv_bn(c_in, c_out, 1, stride, bn)
        self.bn = bn

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        if self.bn:  # BN sets the scale itself
            return self.relu(out + self.shortcut(x))
        return self.relu(out / math.sqrt(2) + self.shortcut(x) / math.sqrt(2))


class _ResNet(nn.Module):
    def __init__(self, width_mult: float, n_classes: int, in_channels: int, bn: bool = False) -> None:
        super().__init__()
        w = [max(1, int(round(c * width_mult))) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(_conv_bn(in_channels, w[0], 3, 1, bn), nn.ReLU())
        blocks: list[nn.Module] = []
        c = w[0]
        for i, c_out in enumerate(w):
            for j in range(2):
                blocks.append(_Block(c, c_out, 2 if (i > 0 and j == 0) else 1, bn))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def resnet18(
    n_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3, gain: float = 1.0,
    batch_norm: bool = False,
) -> nn.Module:
    """ResNet-18 for 32x32 inputs (3x3 stem, stride 1; four stages of two basic blocks, channels
    64-128-256-512 times ``width_mult``; global average pooling; linear head).

    ``batch_norm=False`` (default, as in Chizat et al.'s lazy-training experiments): no normalization;
    the residual sum is scaled by ``1/sqrt(2)`` so activations keep their scale with depth (our choice;
    Chizat et al. do not give theirs). ``batch_norm=True`` (the usual ResNet-18, as in Loo et al.):
    every conv (stem, both convs of a block, 1x1 shortcuts) is followed by ``BatchNorm2d``, convs have
    no bias, the residual sum is unscaled. Xavier-normal conv/linear weights (``gain``), zero biases;
    BN starts at weight 1, bias 0. ``lazylab.linearize``/``lazy``/``ntk`` evaluate BN with its running
    statistics (eval mode)."""
    net = _ResNet(width_mult, n_classes, in_channels, batch_norm)
    _init(net, "xavier", gain)
    return net
