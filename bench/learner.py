"""Learner update throughput: the full learner path vs the bare network step.

learner: ``Learner.train`` — prioritized sampling from the tensor-backed replay buffer, Double-DQN +
SQN step with guard rails, priority update, drift detector, metrics.
bare: the same ``dqn_update`` on the same networks and optimizer, fed prebuilt batch tensors (no
sampling, no priorities). Blocks of each alternate and the medians are reported, so a noisy
neighbour hurts both alike. Last line::

    learner updates_per_s=<x> bare_updates_per_s=<y> ratio=<x/y> batch=256

    .venv/bin/python bench/learner.py [--items 10000] [--transitions 100000] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import time

import numpy as np
import torch

from streamrl.learner.config import LearnerConfig
from streamrl.learner.dqn import dqn_update
from streamrl.learner.worker import Learner


def synthetic_transitions(n: int, n_items: int, seed: int = 0) -> list[dict]:
    """Random histories over topic-clustered items; reward when the action shares the history's topic."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        topic = rng.randrange(20)
        hist = [f"i{rng.randrange(n_items // 20) * 20 + topic}" for _ in range(rng.randint(0, 20))]
        a = rng.randrange(n_items)
        r = 1.0 if (a % 20 == topic and rng.random() < 0.6) or rng.random() < 0.03 else 0.0
        out.append({"id": f"t{k}", "user_id": f"u{k % 5000}", "state": hist, "action": f"i{a}", "reward": r,
                    "next_state": (hist + [f"i{a}"])[-20:] if r else hist, "ts": k, "propensity": 0.01,
                    "policy_version": 0, "request_id": None, "position": 0, "engagement": None})
    return out


class Prebuilt:
    """A batch source that hands out batches built once (the bare step's input)."""

    def __init__(self, batches, pool) -> None:
        self.batches, self.pool, self.k = batches, pool, 0

    def sample(self, batch_size: int):
        self.k += 1
        return self.batches[self.k % len(self.batches)]

    def item_pool(self):
        return self.pool

    def update_priorities(self, slots, td_error) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--transitions", type=int, default=100_000)
    ap.add_argument("--updates", type=int, default=10, help="updates per timed block")
    ap.add_argument("--rounds", type=int, default=15, help="alternating learner/bare block pairs")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0: torch default; on a shared 2-core machine more than 1 thread "
                         "makes every op wait for a preempted worker)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = LearnerConfig(batch_size=256, capacity=max(args.transitions, 1024), min_buffer=1_000,
                        drift_warmup_updates=10**9)
    learner = Learner(None, cfg, device=args.device)
    ids = [f"i{k}" for k in range(args.items)]
    learner.add_items(ids, np.random.default_rng(0).standard_normal((args.items, cfg.text_dim)).astype(np.float32))
    data = synthetic_transitions(args.transitions, args.items)
    t0 = time.perf_counter()
    for k in range(0, len(data), 1000):
        learner.ingest(data[k:k + 1000], 0, k)
    ingest_s = time.perf_counter() - t0
    print(f"ingested {len(data)} transitions in {ingest_s:.2f}s ({len(data) / ingest_s:,.0f}/s); "
          f"buffer {len(learner.buffer)} train + {learner.buffer.holdout.size} held out; device {args.device}; "
          f"torch threads {torch.get_num_threads()}")

    bare = Prebuilt([learner.buffer.sample(cfg.batch_size).to(args.device) for _ in range(8)],
                    learner.buffer.item_pool())
    gen = torch.Generator().manual_seed(1)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def run_learner() -> float:
        sync()
        t = time.perf_counter()
        learner.train(args.updates)
        sync()
        return args.updates / (time.perf_counter() - t)

    def run_bare() -> float:
        sync()
        t = time.perf_counter()
        for i in range(args.updates):
            dqn_update(learner.online, learner.target, learner.opt, bare, cfg, learner.train_step + 1, gen)
        sync()
        return args.updates / (time.perf_counter() - t)

    run_learner(), run_bare()  # warm-up
    lrn, br = [], []
    for r in range(args.rounds):
        lrn.append(run_learner())
        br.append(run_bare())
        if r < 3 or r == args.rounds - 1:
            print(f"round {r}: learner {lrn[-1]:.1f}/s bare {br[-1]:.1f}/s")
    x, y = statistics.median(lrn), statistics.median(br)
    print(f"means: learner {statistics.mean(lrn):.1f}/s bare {statistics.mean(br):.1f}/s")
    print(f"learner updates_per_s={x:.1f} bare_updates_per_s={y:.1f} ratio={x / y:.3f} batch={cfg.batch_size}")


if __name__ == "__main__":
    main()
