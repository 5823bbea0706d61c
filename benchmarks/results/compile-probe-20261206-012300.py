"""The probe behind docs/benchmarks.md's torch.compile figures (issue 25): one training step of
three CinC cases, fp32 / bf16 autocast, eager / torch.compile; one thread; run from the project's
root with ../shared/data beside it. Its output is the .log beside this file."""

import functools
import statistics
import time

import torch

from ecg_tune.benchmarks.precision import cases
from ecg_tune.config import make_config
from ecg_tune.pipeline import DataOptions
from ecg_tune.training.network import build_network


def train_step(forward, optimiser, x, y, bf16: bool) -> None:
    optimiser.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = torch.nn.functional.cross_entropy(forward(x), y)
    loss.backward()
    optimiser.step()


torch.set_num_threads(1)
dataset = DataOptions("../shared/data/cinc2017/training2017", None, seed=0).load()
WANTED = {"start 3 resnet1d", "ecg_cnn on start 0's input", "start 0 resnet1d"}
for label, values in cases(dataset):
    if label not in WANTED:
        continue
    config = make_config(values)
    length = int(config.input_length or 9000)
    torch.manual_seed(0)
    network = build_network(config, length, 4)
    x = network.inputs(torch.randn(config.batch_size, network.input_length)).detach()
    y = torch.randint(0, 4, (config.batch_size,))
    ms = {}
    for mode in ("fp32", "bf16", "bf16+compile", "fp32+compile"):
        torch.manual_seed(0)
        model = build_network(config, length, 4).model.train()
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        forward = torch.compile(model) if "compile" in mode else model
        step = functools.partial(train_step, forward, optimiser, x, y, mode.startswith("bf16"))

        started = time.perf_counter()
        step()
        first = time.perf_counter() - started
        for _ in range(3):
            step()
        times = []
        for _ in range(15):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        ms[mode] = statistics.median(times) * 1000
        print(f"{label} {mode}: {ms[mode]:.1f} ms/step (first step {first:.1f} s)", flush=True)
    print(f"{label}: bf16 {ms['fp32'] / ms['bf16']:.2f}x, bf16+compile {ms['fp32'] / ms['bf16+compile']:.2f}x, "
          f"fp32+compile {ms['fp32'] / ms['fp32+compile']:.2f}x", flush=True)
