"""One honestly timed training run.

Timing protocol (docs/timing.md): the data is already resident on the device; an
untimed warm-up on the same shapes runs first; the clock covers model construction, training
and test evaluation (like the seed recipe's %timeit of main()), and the device is synchronised
before the clock starts and before it stops. Inside the step loop nothing waits on the device
except one look every `check_every` steps at the loss (divergence) and the clock (time limit).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import OneCycleLR

from objective.config import TrainConfig
from objective.data import Mnist
from objective.errors import UserError
from objective.graphed import graphed_step, train_graphed
from objective.model import build_model
from objective.result import RunResult


def resolve_device(name: str) -> torch.device:
    """`auto` picks the first GPU when there is one; `cuda` without a GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} asked for, but this machine has no usable CUDA GPU; "
                             "use --device cpu")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device {name!r} does not exist: this machine has "
                             f"{torch.cuda.device_count()} GPU(s)")
        device = torch.device("cuda", index)
    return device


def fingerprint(device: torch.device) -> dict[str, str | int]:
    """What a timing depends on; trials are compared only within one fingerprint. `cores`: how
    many cores the process may run on, its CPU lease (search/device_lock.py)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"device": name, "device_type": device.type, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cores": len(os.sched_getaffinity(0))}


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_enabled(config: TrainConfig, device: torch.device) -> bool:
    """bf16_autocast resolved on `device`: "auto" means a CPU with AMX, where it was measured to pay."""
    if config.bf16_autocast != "auto":
        return config.bf16_autocast == "on"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)  # private, hence the fallback
    return device.type == "cpu" and bool(amx())


def _autocast(bf16: bool, device: torch.device) -> contextlib.AbstractContextManager[None]:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Adam:
    # fused: one kernel for all parameters; measured faster than the default loop on CPU.
    return torch.optim.Adam(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                            fused=True)


def train_count(config: TrainConfig, data: Mnist) -> int:
    available = len(data.train_labels)
    return min(config.train_subset, available) if config.train_subset else available


def total_steps(config: TrainConfig, data: Mnist) -> int:
    steps_per_epoch = math.ceil(train_count(config, data) / config.batch_size)
    return max(1, math.ceil(config.epochs * steps_per_epoch))


def graphs_enabled(config: TrainConfig, device: torch.device) -> bool:
    return config.cuda_graphs and device.type == "cuda"


_warmed: set[tuple[object, ...]] = set()


def warm_up(config: TrainConfig, data: Mnist) -> None:
    """Untimed: run every shape the timed run will meet once, so cuDNN autotuning, oneDNN
    primitive creation and lazy CUDA init never land in a timing. Done once per shape per process."""
    n = train_count(config, data)
    last = n % config.batch_size or config.batch_size
    bf16 = bf16_enabled(config, data.device)
    key = (config.batch_size, last, config.conv1_kernel, config.conv2_kernel, config.conv1_width,
           config.conv2_width, config.fc_width, config.batch_norm, config.channels_last, bf16,
           config.eval_batch, str(data.device))  # eval_batch: the evaluation's shapes
    if data.device.type == "cuda":
        # Autotune conv kernels per shape; the warm-up below meets every shape, so it is untimed.
        torch.backends.cudnn.benchmark = True
    if graphs_enabled(config, data.device):
        graphed_step(config, data, n, total_steps(config, data), bf16)  # captured unless cached
    if key in _warmed:
        return
    probe = config.replace(epochs=1.0, train_subset=0, seed=config.seed)
    torch.manual_seed(config.seed)
    model = build_model(probe, data.device)
    optimizer = _optimizer(model, config)
    for size in {config.batch_size, last}:
        with _autocast(bf16, data.device):
            loss = F.nll_loss(model(_batch(data.train_images[:size], config)), data.train_labels[:size])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    _evaluate(model, data, config, bf16)
    _sync(data.device)
    _warmed.add(key)


def _batch(images: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    if config.channels_last:
        return images.contiguous(memory_format=torch.channels_last)
    return images


def train_once(config: TrainConfig, data: Mnist, time_limit: float = math.inf) -> RunResult:
    """Train `config` once on resident `data`; stop early on a NaN/inf loss or past `time_limit` s."""
    device = data.device
    warm_up(config, data)
    steps = total_steps(config, data)
    torch.manual_seed(config.seed)
    order_rng = torch.Generator(device=device).manual_seed(config.seed)
    bf16 = bf16_enabled(config, device)  # resolved once, not per step

    _sync(device)
    start = time.perf_counter()
    if graphs_enabled(config, device):
        model, step, diverged, over_time = _replay_graphed(config, data, steps, order_rng, bf16,
                                                           start, time_limit)
    else:
        model, step, diverged, over_time = _train_eager(config, data, steps, order_rng, bf16,
                                                        start, time_limit)
    _sync(device)
    train_seconds = time.perf_counter() - start
    accuracy, holdout_accuracy = _evaluate(model, data, config, bf16)
    _sync(device)
    seconds = time.perf_counter() - start
    return RunResult(seed=config.seed, accuracy=accuracy, holdout_accuracy=holdout_accuracy, seconds=seconds,
                     train_seconds=train_seconds, steps=step, diverged=diverged,
                     over_time=over_time or seconds > time_limit,
                     fingerprint={**fingerprint(device), "bf16_autocast": bf16})


def _train_eager(config: TrainConfig, data: Mnist, steps: int, order_rng: torch.Generator, bf16: bool,
                 start: float, time_limit: float) -> tuple[torch.nn.Module, int, bool, bool]:
    device = data.device
    n = train_count(config, data)
    steps_per_epoch = math.ceil(n / config.batch_size)
    model = build_model(config, device)
    optimizer = _optimizer(model, config)
    schedule = OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=config.pct_start,
                          div_factor=config.div_factor, final_div_factor=config.final_div_factor,
                          cycle_momentum=False)
    loss_sum = torch.zeros((), device=device)  # NaN/inf in any step's loss poisons the sum
    model.train()
    step = 0
    while step < steps:
        position = step % steps_per_epoch
        if position == 0:
            order = torch.randperm(n, device=device, generator=order_rng)
        index = order[position * config.batch_size:(position + 1) * config.batch_size]
        with _autocast(bf16, device):
            loss = F.nll_loss(model(_batch(data.train_images[index], config)), data.train_labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += loss.detach()
        step += 1
        if step % config.check_every == 0 or step == steps:
            stop = _look(loss_sum, start, time_limit)
            if stop:
                return model, step, stop == "diverged", stop == "over time"
    return model, step, False, False


def _replay_graphed(config: TrainConfig, data: Mnist, steps: int, order_rng: torch.Generator,
                    bf16: bool, start: float, time_limit: float
                    ) -> tuple[torch.nn.Module, int, bool, bool]:
    """The eager loop's steps, each one replay of the captured graph (objective/graphed.py)."""
    n = train_count(config, data)
    state, steps_per_epoch = train_graphed(config, data, n, steps, bf16)
    step = 0
    while step < steps:
        position = step % steps_per_epoch
        if position == 0:
            torch.randperm(n, device=data.device, generator=order_rng, out=state.order)
            state.offset.zero_()
        state.graphs[min(config.batch_size, n - position * config.batch_size)].replay()
        step += 1
        if step % config.check_every == 0 or step == steps:
            stop = _look(state.loss_sum, start, time_limit)
            if stop:
                return state.model, step, stop == "diverged", stop == "over time"
    return state.model, step, False, False


def _look(loss_sum: torch.Tensor, start: float, time_limit: float) -> str:
    """The loop's only host sync, every check_every steps: "" to go on, else why it stops."""
    if not torch.isfinite(loss_sum).item():
        return "diverged"
    return "over time" if time.perf_counter() - start > time_limit else ""


def _evaluate(model: torch.nn.Module, data: Mnist, config: TrainConfig, bf16: bool) -> tuple[float, float]:
    """Accuracy on the even-indexed test images (the selection half) and on the odd-indexed ones
    (held out): interleaved, since MNIST's first 5,000 test images are the easier writers'."""
    model.eval()
    correct = torch.zeros(2, dtype=torch.int64, device=data.device)  # even, odd
    with torch.inference_mode(), _autocast(bf16, data.device):
        for first in range(0, len(data.test_labels), config.eval_batch):
            last = first + config.eval_batch
            predicted = model(_batch(data.test_images[first:last], config)).argmax(dim=1)
            hits = predicted == data.test_labels[first:last]
            parity = first % 2  # eval_batch may be odd
            correct[parity] += hits[0::2].sum()
            correct[1 - parity] += hits[1::2].sum()
    even, odd = correct.tolist()
    images = len(data.test_labels)
    return even / ((images + 1) // 2), odd / (images // 2)
