"""The training step as CUDA graphs: the `cuda_graphs` knob.

On a data-centre GPU a run of this network is bound by Python launching a few dozen small kernels
per step, not by arithmetic. A CUDA graph replays a captured step with one launch. Following
PyTorch's CUDA-graph notes, everything a step touches is static: the model and its Adam state
(`capturable=True`, the learning rate a device tensor), the epoch's order, a device counter of the
step (it picks the batch's rows and the step's learning rate inside the graph) and the loss sum.
The full batch and the short last batch each get a graph of their own.

What the clock covers stays the eager run's (objective/timed_run.py): the capture happens in the
untimed warm-up, once per shape and betas per process, like cuDNN's autotuning; inside the clock the
weights are drawn afresh on the host exactly as `build_model` draws them and copied in, the Adam
state and the counters are zeroed, and the one-cycle learning rates are computed and copied over.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from objective.config import TrainConfig
from objective.data import Mnist
from objective.model import Net, build_model

KEEP = 4  # graphed shapes kept per process; each holds its activations' memory pool


def one_cycle_lrs(config: TrainConfig, steps: int) -> list[float]:
    """The learning rate of each step, as torch's OneCycleLR (cos, two phases) would set it."""
    initial = config.lr / config.div_factor
    least = initial / config.final_div_factor
    peak_step = float(config.pct_start * steps) - 1

    def cos(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    rates = []
    for step in range(steps):
        if step <= peak_step:
            rates.append(cos(initial, config.lr, step / peak_step))
        else:
            rates.append(cos(config.lr, least, (step - peak_step) / (steps - 1 - peak_step)))
    return rates


def shape_key(config: TrainConfig, data: Mnist, n: int, bf16: bool) -> tuple[object, ...]:
    """What a captured graph depends on: the shapes, the model's layout, the data's storage and
    Adam's betas (the fused kernel takes them as numbers, fixed at capture)."""
    return (n, config.batch_size, config.beta1, config.beta2, config.conv1_kernel,
            config.conv2_kernel, config.conv1_width, config.conv2_width, config.fc_width,
            config.batch_norm, config.channels_last, bf16, data.train_images.data_ptr())


@dataclass
class GraphedStep:
    model: Net
    optimizer: torch.optim.Adam
    order: torch.Tensor  # this epoch's permutation of the n training rows
    offset: torch.Tensor  # (1,) int64: the first row of this step's batch in `order`
    step: torch.Tensor  # (1,) int64: this step's index into `rates`
    rates: torch.Tensor  # the one-cycle learning rates, room for `capacity` steps
    lr: torch.Tensor  # the optimizer's learning rate, read inside the graph
    loss_sum: torch.Tensor
    graphs: dict[int, torch.cuda.CUDAGraph]  # batch size -> the captured step

    @property
    def capacity(self) -> int:
        return len(self.rates)


_graphed: OrderedDict[tuple[object, ...], GraphedStep] = OrderedDict()


def graphed_step(config: TrainConfig, data: Mnist, n: int, steps: int, bf16: bool) -> GraphedStep:
    """The captured step for this shape, captured now (untimed) if this process has none."""
    key = shape_key(config, data, n, bf16)
    found = _graphed.get(key)
    if found is not None and found.capacity >= steps:
        _graphed.move_to_end(key)
        return found
    _graphed.pop(key, None)
    while len(_graphed) >= KEEP:
        _graphed.popitem(last=False)
    _graphed[key] = _capture(config, data, n, max(steps, 4 * math.ceil(n / config.batch_size), 16), bf16)
    return _graphed[key]


def _capture(config: TrainConfig, data: Mnist, n: int, capacity: int, bf16: bool) -> GraphedStep:
    device = data.device
    model = build_model(config, device)
    lr = torch.tensor(config.lr, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(config.beta1, config.beta2),
                                 fused=True, capturable=True)
    state = GraphedStep(
        model=model, optimizer=optimizer, order=torch.arange(n, device=device),
        offset=torch.zeros(1, dtype=torch.int64, device=device),
        step=torch.zeros(1, dtype=torch.int64, device=device),
        rates=torch.full((capacity,), config.lr, device=device), lr=lr,
        loss_sum=torch.zeros((), device=device), graphs={})
    last = n % config.batch_size or config.batch_size

    def step(rows: torch.Tensor) -> None:
        state.lr.copy_(state.rates.index_select(0, state.step).squeeze(0))
        index = state.order.index_select(0, rows + state.offset)
        images = data.train_images.index_select(0, index)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            loss = F.nll_loss(model(images), data.train_labels.index_select(0, index))
        loss.backward()
        optimizer.step()
        state.loss_sum.add_(loss.detach())
        state.offset.add_(rows.numel())
        state.step.add_(1)

    model.train()
    for size in sorted({config.batch_size, last}, reverse=True):
        rows = torch.arange(size, device=device)
        # The notes' recipe: a few eager steps on a side stream (lazy init, cuDNN's choice of
        # kernels, Adam's state), then the capture with the gradients unset, so backward
        # allocates them from the graph's own pool.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                optimizer.zero_grad(set_to_none=True)
                state.offset.zero_()
                state.step.zero_()
                step(rows)
        torch.cuda.current_stream(device).wait_stream(side)
        optimizer.zero_grad(set_to_none=True)
        state.offset.zero_()
        state.step.zero_()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step(rows)
        state.graphs[size] = graph
    torch.cuda.synchronize(device)
    return state


def train_graphed(config: TrainConfig, data: Mnist, n: int, steps: int,
                  bf16: bool) -> tuple[GraphedStep, int]:
    """Reset the captured state to a fresh run of `config`, inside the clock, and return it with
    the steps per epoch. The caller replays `graphs` one step at a time (timed_run.train_once)."""
    state = graphed_step(config, data, n, steps, bf16)
    torch.manual_seed(config.seed)
    fresh = Net(config)  # drawn on the host, as build_model draws it, so both paths start alike
    with torch.no_grad():
        for static, drawn in zip(state.model.state_dict().values(), fresh.state_dict().values(),
                                 strict=True):
            static.copy_(drawn)
        for values in state.optimizer.state.values():
            for tensor in values.values():
                tensor.zero_()
        state.rates[:steps].copy_(torch.tensor(one_cycle_lrs(config, steps)))
        state.step.zero_()
        state.loss_sum.zero_()
    state.model.train()
    return state, math.ceil(n / config.batch_size)
