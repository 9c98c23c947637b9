"""Data-parallel training of rnnfast.torch.RNN with PyTorch's DistributedDataParallel.

Two processes on this machine (gloo backend, meeting through a file in a temporary folder) train the demo's time-series task --
windows of a noisy two-sine series, predict the next value -- with ``rnnfast.torch.RNN`` and an ``nn.Linear``
read-out. Each process takes half of every batch; DistributedDataParallel averages the gradients across them, so
the run equals training one model on the whole batch in one process. The script checks exactly that: it trains
the same model single-process on the combined batches and compares the parameters after the last step.

Needs torch (``pip install "rnnfast[torch]"``); without it this script says so and exits with status 0.

Run: python examples/ddp_train.py [--steps 20] [--world-size 2] [--hidden 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

import rnnfast
from rnnfast.demo import make_series, make_windows

try:
    import torch
except ImportError:
    print("torch is not installed: skipping the DistributedDataParallel example (pip install torch)")
    sys.exit(0)

import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import rnnfast.torch

CONFIG: Dict[str, Any] = dict(steps=20, batch=32, window=40, warmup=10, hidden=32, lr=0.01, seed=0)


class Forecaster(torch.nn.Module):
    """rnnfast.torch.RNN (a drop-in torch.nn.RNN) and a linear read-out of every step's state."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.rnn = rnnfast.torch.RNN(input_size=1, hidden_size=hidden, dtype=torch.float64)
        self.head = torch.nn.Linear(hidden, 1, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])  # [T, B, 1]


def make_batches(steps: int, batch: int, window: int, seed: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches of ``batch`` windows drawn from the series: (inputs, targets), both [window, batch, 1]."""
    inputs, targets = make_windows(make_series(2000, seed=seed), window)  # [window, N, 1] float32
    order = np.random.default_rng(seed).permutation(inputs.shape[1])
    batches = []
    for step in range(steps):
        pick = order[(np.arange(batch) + step * batch) % len(order)]
        batches.append((torch.from_numpy(inputs[:, pick].astype(np.float64)),
                        torch.from_numpy(targets[:, pick].astype(np.float64))))
    return batches


def train(model: torch.nn.Module, batches: Sequence[Tuple[torch.Tensor, torch.Tensor]], lr: float, warmup: int,
          shard: Optional[Tuple[int, int]] = None) -> List[float]:
    """Adam steps on the MSE of steps >= warmup, with gradient clipping; ``shard = (rank, world_size)`` trains on
    that part of each batch. Returns the loss of each step (of the whole batch when sharded: averaged over ranks)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for inputs, targets in batches:
        if shard is not None:
            rank, world = shard
            part = inputs.shape[1] // world
            inputs, targets = inputs[:, rank * part:(rank + 1) * part], targets[:, rank * part:(rank + 1) * part]
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs)[warmup:], targets[warmup:])
        loss.backward()  # DistributedDataParallel averages the gradients across the processes here
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        value = loss.detach().clone()
        if shard is not None:
            dist.all_reduce(value)
            value /= shard[1]
        losses.append(float(value))
    return losses


def build_model(config: Dict[str, Any]) -> Forecaster:
    torch.manual_seed(config["seed"])
    return Forecaster(config["hidden"])


def worker(rank: int, world_size: int, store: str, config: Dict[str, Any], out_dir: str) -> None:
    """One process: join the group, train its shard with DistributedDataParallel, save parameters and losses."""
    torch.set_num_threads(1)
    rnnfast.set_num_threads(1)
    # A file store rather than tcp://: no free port to race for, and no store server thread in rank 0 to be torn
    # down at interpreter exit.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        model = DistributedDataParallel(build_model(config))
        batches = make_batches(config["steps"], config["batch"], config["window"], config["seed"])
        losses = train(model, batches, config["lr"], config["warmup"], shard=(rank, world_size))
        torch.save({"state_dict": model.module.state_dict(), "losses": losses},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        del model  # its reducer holds the group's pending work: release it before the group
    finally:
        dist.destroy_process_group()


def run_ddp(config: Dict[str, Any], world_size: int = 2) -> List[Dict[str, Any]]:
    """Spawn ``world_size`` processes training with DistributedDataParallel; what each saved, by rank."""
    if config["batch"] % world_size:
        raise ValueError(f"batch: expected a multiple of world_size={world_size}, got {config['batch']}")
    with tempfile.TemporaryDirectory() as out_dir:
        store = os.path.join(out_dir, "store")
        mp.spawn(worker, args=(world_size, store, config, out_dir), nprocs=world_size, join=True)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world_size)]


def run_single(config: Dict[str, Any]) -> Dict[str, Any]:
    """The same training in this process on the whole batches."""
    torch.set_num_threads(1)
    rnnfast.set_num_threads(1)
    model = build_model(config)
    batches = make_batches(config["steps"], config["batch"], config["window"], config["seed"])
    losses = train(model, batches, config["lr"], config["warmup"])
    return {"state_dict": model.state_dict(), "losses": losses}


def max_difference(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=CONFIG["steps"])
    parser.add_argument("--hidden", type=int, default=CONFIG["hidden"])
    parser.add_argument("--world-size", type=int, default=2)
    args = parser.parse_args(argv)
    config = dict(CONFIG, steps=args.steps, hidden=args.hidden)

    ranks = run_ddp(config, args.world_size)
    single = run_single(config)
    losses = ranks[0]["losses"]
    print(f"DistributedDataParallel, {args.world_size} processes (gloo, file store), rnnfast.torch.RNN(1, "
          f"{config['hidden']}) + Linear, Adam, batch {config['batch']} ({config['batch'] // args.world_size} "
          f"per process), {config['steps']} steps: MSE {losses[0]:.5f} -> {losses[-1]:.5f}")
    between_ranks = max(max_difference(ranks[0]["state_dict"], r["state_dict"]) for r in ranks[1:])
    to_single = max_difference(ranks[0]["state_dict"], single["state_dict"])
    print(f"max |parameter difference| between the processes: {between_ranks:.1e}")
    print(f"max |parameter difference| from single-process training on the combined batch: {to_single:.1e}")
    ok = between_ranks == 0.0 and to_single < 1e-9 and losses[-1] < losses[0]
    print("OK: data-parallel training equals single-process training" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
