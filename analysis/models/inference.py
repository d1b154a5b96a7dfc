"""Cell-pattern inference for the workers: the bundled production model by default, batched, any device."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse
from torch.fx.proxy import TraceError
from torch.nn import functional as F

from analysis.device import autocast, autocast_dtype, cpu_has_amx, default_precision, resolve_device
from analysis.models import DEFAULT_CELL_MODEL
from analysis.models.checkpoint import model_card
from analysis.models.classifier import load_checkpoint
from analysis.preprocess import dihedral, prepare_crop, to_float
from hep2.vocabulary import CELL_PATTERNS, Pattern

CPU_FORWARD_IMAGES = 128
"""Most images per forward pass on the CPU (:func:`predict_proba` splits a chunk's views into sub-batches).
glibc serves each allocation above its mmap threshold (at most 32 MiB) with fresh pages and unmaps it when
freed: one forward pass of a field's ~520 48-px views page-faulted the stem's ~40 MiB output in every call
(~17,000 page faults, ~35 ms of system time per field). Sub-batches of 128 views stay below the threshold
(the heap reuses their memory) and nearer the caches; the probabilities are the same bit for bit (the
images are independent). docs/results/issue19-session8/."""


def forward_batches(model: nn.Module, views: torch.Tensor, max_images: int | None) -> torch.Tensor:
    """``model(views)`` computed in sub-batches of at most ``max_images`` images (None: one pass)."""
    if max_images is None or len(views) <= max_images:
        return model(views)
    return torch.cat([model(views[i:i + max_images]) for i in range(0, len(views), max_images)])


@torch.inference_mode()
def predict_proba(model: nn.Module, x: np.ndarray | torch.Tensor, tta: int = 1, batch_size: int = 512,
                  device: str | torch.device | None = None, precision: str = "auto",
                  forward_images: int | None = None) -> np.ndarray:
    """Class probabilities ``(N, num_classes)`` of a ``uint8 (N, C, S, S)`` batch; ``tta`` = 1 or 8 views.

    TTA averages the softmax over the eight dihedral views (D4: cells have no preferred orientation). All
    views of a chunk of ``batch_size`` cells (``tta × chunk`` images; one slide's cells are one chunk) go
    through the model together, in forward passes of at most ``forward_images`` images, channels-last on
    the CPU. ``precision``: the autocast of :func:`analysis.device.autocast` (``auto``: bf16/fp16 on CUDA,
    fp32 elsewhere; ``bf16``: bf16 on any device); a model with bf16 weights (:func:`inference_copy`) needs
    that autocast. In fp32 the probabilities equal those of one forward pass per view (the views' softmaxes
    are summed in the same order). ``forward_images``: most images per forward pass (default
    :data:`CPU_FORWARD_IMAGES` on the CPU, all of a chunk's views elsewhere); the probabilities do not
    depend on it.
    """
    if tta not in (1, 8):
        raise ValueError("tta must be 1 (none) or 8 (dihedral views)")
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    weights_dtype = next(model.parameters()).dtype
    if weights_dtype != torch.float32 and autocast_dtype(device, precision) != weights_dtype:
        raise ValueError(f"a model with {weights_dtype} weights runs under its autocast, not precision {precision!r}")
    was_training = model.training
    model.eval()
    # channels-last for inference models only (a model being trained keeps its layout); the parameters are
    # converted outside inference mode, so they stay ordinary tensors
    channels_last = device.type == "cpu" and x.ndim == 4 and not was_training
    if channels_last:
        with torch.inference_mode(False):
            model.to(memory_format=torch.channels_last)
    if forward_images is None and device.type == "cpu":
        forward_images = CPU_FORWARD_IMAGES
    xt = torch.as_tensor(x)
    out = []
    for start in range(0, len(xt), batch_size):
        batch = to_float(xt[start:start + batch_size].to(device, non_blocking=True))
        views = torch.cat([dihedral(batch, k) for k in range(tta)]) if tta > 1 else batch
        if channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = forward_batches(model, views, forward_images)
        per_view = torch.softmax(logits.float(), dim=1).reshape(tta, len(batch), -1)
        probs = 0
        for k in range(tta):
            probs = probs + per_view[k]
        out.append((probs / tta).cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with each BatchNorm folded into the convolution before it (torch.fx):
    one operation instead of two, the CNN's forward pass ~15 % faster on the CPU; in fp32 the same
    probabilities up to float rounding (bf16 argmax agreement on the I3A cells: docs/performance.md). For
    evaluation only: the copy has no BatchNorm to train. A model torch.fx cannot trace is returned as it is."""
    try:
        return fuse(model.eval())
    except TraceError:
        return model


class DenseConv2d(nn.Module):
    """A convolution over an input of fixed small size ``(C, H, W)`` as one matrix product on the
    channels-last flattened image: the same products (plus zeros where the kernel overhangs the border),
    summed in another order. Made by :func:`dense_small_convs`; inference only."""

    def __init__(self, conv: nn.Conv2d, in_shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = in_shape
        k = c * h * w
        with torch.no_grad():  # the convolution of each one-hot input image is one column of the matrix
            basis = torch.eye(k, dtype=torch.float32).reshape(k, h, w, c).permute(0, 3, 1, 2)
            columns = F.conv2d(basis, conv.weight.float(), None, conv.stride, conv.padding, conv.dilation,
                               conv.groups)
            self.out_shape = tuple(columns.shape[1:])  # (C', H', W')
            weight = columns.permute(0, 2, 3, 1).reshape(k, -1).t().contiguous()
            bias = None if conv.bias is None else conv.bias.float().repeat(self.out_shape[1] * self.out_shape[2])
        dtype = conv.weight.dtype
        self.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        y = F.linear(x.permute(0, 2, 3, 1).reshape(n, -1), self.weight, self.bias)
        channels, height, width = self.out_shape
        return y.reshape(n, height, width, channels).permute(0, 3, 1, 2)  # a channels-last view


def dense_small_convs(model: nn.Module, input_shape: tuple[int, ...], max_pixels: int = 9) -> nn.Module:
    """``model`` with each k×k convolution (k > 1) whose input has at most ``max_pixels`` pixels replaced by
    a :class:`DenseConv2d` (ResNet-18's last stages at 48 px: 3×3 and 2×2 maps). For ``input_shape`` images
    only ``(C, S, S)``. On AMX oneDNN runs such convolutions several times slower than the equivalent
    matrix product (a 3×3 kernel on a 2×2 map is mostly padding): the CNN's forward pass ~15-20 % faster,
    probabilities within 4e-5. Without AMX it is no faster (~10 % slower; not used there)."""
    shapes: dict[str, tuple[int, int, int]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
            shapes[name] = tuple(args[0].shape[1:])
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            param = next(model.parameters())
            model(torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device))
    finally:
        for hook in hooks:
            hook.remove()
    for name, (c, h, w) in shapes.items():
        conv = model.get_submodule(name)
        if h * w <= max_pixels and conv.kernel_size != (1, 1):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, DenseConv2d(conv, (c, h, w)))
    return model


def inference_copy(model: nn.Module, device: torch.device, precision: str,
                   input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """The model as :class:`CellClassifier` runs it: BatchNorm folded (:func:`fold_batchnorm`) and, where
    ``precision`` autocasts to bf16 on the CPU, bf16 weights in channels-last layout. Autocast casts fp32
    weights to bf16 again in every forward pass (~45 copies per pass); cast once, the operations and their
    results are the same bit for bit (the input is still cast by autocast). Such a copy runs only under
    that autocast (:func:`predict_proba` checks). On a CPU with AMX, for ``input_shape`` images, the
    convolutions of the smallest maps become matrix products (:func:`dense_small_convs`)."""
    model = fold_batchnorm(model)
    if device.type == "cpu" and autocast_dtype(device, precision) == torch.bfloat16:
        model = model.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        if input_shape is not None and cpu_has_amx():
            model = dense_small_convs(model, input_shape)
    return model


def average(probabilities: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of several members' probability arrays (an averaging ensemble)."""
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probabilities])
    w = np.ones(len(stack)) if weights is None else np.asarray(weights, dtype=np.float64)
    return (np.tensordot(w / w.sum(), stack, axes=1)).astype(np.float32)


class CellClassifier:
    """Staining-pattern probabilities for cell crops, in :data:`CELL_PATTERNS` order.

    ``weights`` may list several checkpoints with the same input config: their probabilities are averaged
    (an ensemble). ``tta`` defaults to what the first model card says (8 dihedral views when shipped). The
    models are inference copies for ``precision`` (:func:`inference_copy`), fixed at construction.
    """

    def __init__(self, weights: str | Path | Sequence[str | Path] | None = None,
                 device: str | torch.device | None = "auto", tta: int | None = None,
                 batch_size: int = 256, precision: str | None = None) -> None:
        paths = [DEFAULT_CELL_MODEL] if not weights else [weights] if isinstance(weights, str | Path) else weights
        self.paths = [Path(p) for p in paths]
        self.weights = self.paths[0]
        self.device = resolve_device(device)
        self.models = []
        for path in self.paths:
            if not path.is_file():
                raise FileNotFoundError(f"cell classifier weights not found: {path}")
            model, config = load_checkpoint(path, self.device)
            if self.models and config != self.config:
                raise ValueError(f"{path}: ensemble members need the same input config")
            self.models.append(model)
            self.config = config
        self.precision = precision or default_precision(self.device)
        shape = (self.config.in_chans, self.config.img_size, self.config.img_size)
        self.models = [inference_copy(m, self.device, self.precision, shape) for m in self.models]
        self.model = self.models[0]
        self.card = model_card(self.weights)
        self.tta = tta if tta is not None else int(self.card.get("tta", 1))
        self.batch_size = batch_size
        if tuple(self.config.classes) != tuple(p.value for p in CELL_PATTERNS):
            raise ValueError(f"{self.weights}: class order {self.config.classes} is not CELL_PATTERNS")

    @property
    def classes(self) -> tuple[Pattern, ...]:
        return CELL_PATTERNS

    def preprocess(self, crops: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
        """(image HxW, mask HxW or None) pairs → ``uint8 (N, C, S, S)``."""
        size, use_mask = self.config.img_size, self.config.use_mask
        if not crops:
            return np.zeros((0, self.config.in_chans, size, size), np.uint8)
        return np.stack([prepare_crop(img, mask, size, use_mask) for img, mask in crops])

    def predict(self, crops: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
        """Probabilities ``(N, 6)`` (rows sum to 1) for a list of (image uint8 HxW, mask bool HxW)."""
        if not crops:
            return np.zeros((0, len(CELL_PATTERNS)), np.float32)
        return self.predict_array(self.preprocess(crops))

    def predict_array(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for already pre-processed crops ``uint8 (N, C, S, S)``."""
        return average([predict_proba(m, x, tta=self.tta, batch_size=self.batch_size, device=self.device,
                                      precision=self.precision) for m in self.models])

    def predict_patterns(self, crops: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> list[Pattern]:
        """The most probable pattern of each crop."""
        return [CELL_PATTERNS[i] for i in self.predict(crops).argmax(axis=1)]
