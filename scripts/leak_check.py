#!/usr/bin/env python3
"""Leak check: many forward / backward calls (RNN and RNNCell, with and without caches, lengths, dropout, rejected
calls) must keep the process's resident memory flat and create no lasting Python objects.

    python scripts/leak_check.py                  # 100,000 calls
    python scripts/leak_check.py --calls 20000    # the test suite's shortened run

Resident memory (RSS, from /proc/self/statm) is measured after a warmup and at the end; the run fails (exit 1)
when it grew by more than --max-growth-kib, or when the number of objects tracked by the garbage collector grew by
more than --max-objects. Prints the figures either way.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np

import rnnfast


def rss_bytes() -> int:
    """Current resident set size (Linux); the peak RSS elsewhere, which still catches steady growth."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def make_workload():
    """A closure doing a fixed cycle of calls; each call returns how many API calls it made."""
    rng = np.random.default_rng(0)
    rnn = rnnfast.RNN(4, 8, num_layers=2, bidirectional=True, dropout=0.25, seed=0)
    rnn64 = rnnfast.RNN(3, 5, batch_first=True, nonlinearity="relu", dtype="float64", seed=1)
    cell = rnnfast.RNNCell(4, 8, seed=2)
    x = rng.standard_normal((6, 3, 4)).astype(np.float32)
    x64 = rng.standard_normal((3, 6, 3))
    lengths = np.array([6, 2, 4])
    g_out = np.ones((6, 3, 16), np.float32)
    g_h_n = np.ones((4, 3, 8), np.float32)
    xc = rng.standard_normal((3, 4)).astype(np.float32)
    bad = np.zeros((6, 3, 4), np.float64)
    state = rnn.state_dict()
    step = [0]

    def cycle() -> int:
        step[0] += 1
        i = step[0]
        calls = 0
        rnn(x)  # inference
        calls += 1
        out, h_n, cache = rnn.forward(x, lengths=lengths, return_cache=True)  # training, dropout, lengths
        rnn.backward(cache, g_out, g_h_n)
        calls += 2
        out64, _, cache64 = rnn64.forward(x64, return_cache=True)
        rnn64.backward(cache64, np.ones_like(out64))
        calls += 2
        h, c = cell.forward(xc, return_cache=True)
        cell.backward(c, np.ones_like(h))
        calls += 2
        cell(xc, h)
        calls += 1
        if i % 4 == 0:  # rejected calls: their exceptions and tracebacks must not leak either
            for call in (lambda: rnn(bad), lambda: rnn.backward(cache64, g_out), lambda: cell.backward(c, h[:1])):
                try:
                    call()
                except (TypeError, ValueError):
                    pass
                calls += 1
        if i % 64 == 0:
            rnn.zero_grad()
            rnn64.zero_grad()
            cell.zero_grad()
            rnn.load_state_dict(state)
            calls += 1
        return calls

    return cycle


def run(calls: int, warmup: int) -> dict[str, float]:
    cycle = make_workload()
    done = 0
    while done < warmup:
        done += cycle()
    gc.collect()
    rss_start, objects_start = rss_bytes(), len(gc.get_objects())
    t0 = time.perf_counter()
    checkpoints = []
    done = 0
    next_mark = calls // 10
    while done < calls:
        done += cycle()
        if done >= next_mark:
            checkpoints.append(rss_bytes())
            next_mark += calls // 10
    elapsed = time.perf_counter() - t0
    gc.collect()
    rss_end, objects_end = rss_bytes(), len(gc.get_objects())
    return {"calls": done, "seconds": elapsed, "rss_start": rss_start, "rss_end": rss_end,
            "rss_max": max(checkpoints + [rss_end]), "objects_start": objects_start, "objects_end": objects_end}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100_000, help="API calls to make after the warmup")
    parser.add_argument("--warmup", type=int, default=5_000, help="API calls before the first measurement")
    parser.add_argument("--max-growth-kib", type=float, default=1024, help="allowed RSS growth")
    parser.add_argument("--max-objects", type=int, default=100, help="allowed growth of gc-tracked objects")
    args = parser.parse_args()
    rnnfast.set_num_threads(1)  # thread pools grow memory once; keep the measurement about the calls
    r = run(args.calls, args.warmup)
    growth_kib = (r["rss_end"] - r["rss_start"]) / 1024
    peak_kib = (r["rss_max"] - r["rss_start"]) / 1024
    objects = r["objects_end"] - r["objects_start"]
    print(f"leak_check: {r['calls']} forward/backward calls in {r['seconds']:.1f} s "
          f"({r['calls'] / r['seconds']:.0f}/s) after {args.warmup} warmup calls")
    print(f"leak_check: RSS {r['rss_start'] / 2**20:.1f} MiB after warmup, {r['rss_end'] / 2**20:.1f} MiB at the "
          f"end: growth {growth_kib:+.0f} KiB (peak {peak_kib:+.0f} KiB; limit {args.max_growth_kib:.0f} KiB); "
          f"gc-tracked objects {objects:+d} (limit {args.max_objects})")
    ok = growth_kib <= args.max_growth_kib and objects <= args.max_objects
    print("leak_check: " + ("OK, memory stays flat" if ok else "FAILED: memory grows"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
