"""A small synthetic event log for processor tests (the simulator is tested on its own)."""

from __future__ import annotations

import random

from streamrl.schema import Event


def synthetic_log(n_events: int, n_users: int = 50, n_items: int = 40, seed: int = 0,
                  start_ts: int = 1_767_225_600_000) -> list[Event]:
    """Slates of views, clicks seconds later, purchases minutes later, sorted by ts."""
    rng = random.Random(seed)
    out: list[Event] = []
    t = start_ts
    k = 0
    while len(out) < n_events:
        t += rng.randint(0, 3000)
        user = f"u{rng.randrange(n_users)}"
        req = f"r{seed}-{k}"
        for pos, item in enumerate(rng.sample(range(n_items), 5)):
            k += 1
            out.append(Event(f"e{seed}-{k}", "view", user, f"i{item}", t, req, pos, 0.2, 3))
            if rng.random() < 0.25:
                k += 1
                ct = t + rng.randint(0, 20_000)
                out.append(Event(f"e{seed}-{k}", "click", user, f"i{item}", ct))
                if rng.random() < 0.3:
                    k += 1
                    out.append(Event(f"e{seed}-{k}", "purchase", user, f"i{item}", ct + rng.randint(0, 600_000), value=9.5))
        if rng.random() < 0.05:  # organic engagement
            k += 1
            out.append(Event(f"e{seed}-{k}", rng.choice(["click", "purchase"]), user, f"i{rng.randrange(n_items)}", t))
    out = out[:n_events]
    out.sort(key=lambda e: e.ts)
    return out
