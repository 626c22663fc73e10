"""The replay buffer: transitions from topic ``transitions`` as preallocated tensors.

Ingestion (:meth:`ReplayBuffer.add`) validates each transition, drops duplicate ids, maps item
ids to indices and writes whole message batches into ring tensors. A deterministic share of the
transitions (by a hash of their id) goes to a separate held-out ring used only for evaluation.
Sampling (:meth:`ReplayBuffer.sample`) is uniform or proportional-prioritized over the training
ring and touches no per-sample Python object. Each slot remembers the partition and offset it
came from, so a restarted learner can refill the buffer by re-reading the topic from
:meth:`ReplayBuffer.refill_offsets`.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch

from streamrl.learner.config import LearnerConfig
from streamrl.learner.sumtree import SumTree
from streamrl.learner.vocab import PAD, ItemVocab

#: Reasons a transition is refused at ingestion (bounded: a metric label).
REJECT_REASONS = ("non_finite_reward", "malformed", "bad_propensity")


@dataclass
class Batch:
    """A batch of transitions as tensors (item histories left-padded with PAD)."""

    state: torch.Tensor        # (B, L) long
    action: torch.Tensor       # (B,) long
    reward: torch.Tensor       # (B,) float
    next_state: torch.Tensor   # (B, L) long
    propensity: torch.Tensor   # (B,) float, NaN when not logged
    weight: torch.Tensor       # (B,) importance-sampling weight (1 for uniform)
    slots: np.ndarray          # (B,) ring slots, for priority updates

    def __len__(self) -> int:
        return self.action.shape[0]

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in (self.state, self.action, self.reward,
                                                                  self.next_state, self.propensity, self.weight)),
                     self.slots)


class Ring:
    """Fixed-capacity FIFO of transitions held in preallocated tensors."""

    def __init__(self, capacity: int, history_len: int) -> None:
        self.capacity = capacity
        self.history_len = history_len
        self.state = torch.zeros(capacity, history_len, dtype=torch.int32)
        self.next_state = torch.zeros(capacity, history_len, dtype=torch.int32)
        self.action = torch.zeros(capacity, dtype=torch.int32)
        self.reward = torch.zeros(capacity)
        self.propensity = torch.full((capacity,), math.nan)
        self.ts = torch.zeros(capacity, dtype=torch.int64)
        self.partition = torch.full((capacity,), -1, dtype=torch.int32)
        self.offset = torch.full((capacity,), -1, dtype=torch.int64)
        self.ids: list[str | None] = [None] * capacity
        self.ptr = 0      # next slot to write
        self.size = 0

    def write(self, rows: dict[str, torch.Tensor], ids: list[str]) -> tuple[np.ndarray, list[str]]:
        """Append rows (overwriting the oldest); returns the slots and the evicted ids."""
        n = len(ids)
        slots = (self.ptr + np.arange(n)) % self.capacity
        t_slots = torch.from_numpy(slots)
        evicted = [self.ids[s] for s in slots if self.ids[s] is not None]
        for name, value in rows.items():
            getattr(self, name)[t_slots] = value
        for s, i in zip(slots.tolist(), ids):
            self.ids[s] = i
        self.ptr = int((self.ptr + n) % self.capacity)
        self.size = min(self.capacity, self.size + n)
        return slots, evicted

    def recent(self, n: int) -> torch.Tensor:
        """Slots of the ``n`` newest rows, oldest first."""
        n = min(n, self.size)
        return (torch.arange(self.ptr - n, self.ptr)) % self.capacity

    def gather(self, slots: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.state[slots].long(), self.action[slots].long(), self.reward[slots],
                self.next_state[slots].long(), self.propensity[slots])


def is_holdout(tid: str, fraction: float) -> bool:
    """Whether a transition id belongs to the evaluation slice (stable across processes).

    >>> is_holdout("t-1", 0.0)
    False
    """
    return fraction > 0 and (zlib.crc32(tid.encode()) % 10_000) < fraction * 10_000


def _history(items: list[str], vocab: ItemVocab, length: int) -> list[int]:
    idx = vocab.add_list(items[-length:]) if items else []
    return [PAD] * (length - len(idx)) + idx


class ReplayBuffer:
    """Training ring (sampled) + held-out ring (evaluated), deduplicated by transition id."""

    def __init__(self, cfg: LearnerConfig, vocab: ItemVocab) -> None:
        self.cfg = cfg
        self.vocab = vocab
        self.train = Ring(cfg.capacity, cfg.history_len)
        self.holdout = Ring(max(1, cfg.holdout_capacity), cfg.history_len)
        self.tree = SumTree(cfg.capacity) if cfg.prioritized else None
        self.pos_tree = SumTree(cfg.capacity)  # leaf 1 where the transition was rewarded
        self.max_priority = 1.0
        self.where: dict[str, tuple[int, int]] = {}  # id -> (0 train | 1 holdout, slot)
        self.rng = np.random.default_rng(cfg.seed)
        self.recent_share = 0.0
        self.rejected: Counter[str] = Counter()
        self.duplicates = 0
        self._acted = torch.zeros(0, dtype=torch.bool)  # item index -> appeared as an action
        self._pool: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.train.size

    def __contains__(self, tid: str) -> bool:
        return tid in self.where

    # --- ingestion -------------------------------------------------------------------------
    def add(self, transitions: Iterable[dict[str, Any]], partition: int = -1, offset: int = -1) -> dict[str, list]:
        """Validate, dedupe and store transitions from one message.

        Returns ``{"train": [...], "holdout": [...]}`` with the accepted transitions' rewards, so the
        caller can feed drift detectors; rejections and duplicates are counted on the buffer.
        """
        L = self.cfg.history_len
        rows: dict[int, dict[str, list]] = {0: _empty_rows(), 1: _empty_rows()}
        seen_here: set[str] = set()
        for t in transitions:
            reason = _invalid_reason(t)
            if reason is not None:
                self.rejected[reason] += 1
                continue
            tid = t["id"]
            if tid in self.where or tid in seen_here:
                self.duplicates += 1
                continue
            seen_here.add(tid)
            r = rows[1 if is_holdout(tid, self.cfg.holdout_fraction) else 0]
            r["ids"].append(tid)
            r["state"].append(_history(t["state"], self.vocab, L))
            r["next_state"].append(_history(t["next_state"], self.vocab, L))
            r["action"].append(self.vocab.add_list([t["action"]])[0])
            r["reward"].append(float(t["reward"]))
            p = t.get("propensity")
            r["propensity"].append(math.nan if p is None else float(p))
            r["ts"].append(int(t.get("ts") or 0))
        out = {}
        for which, ring in ((0, self.train), (1, self.holdout)):
            r = rows[which]
            out["train" if which == 0 else "holdout"] = r["reward"]
            if r["ids"]:
                self._store(which, ring, r, partition, offset)
        return out

    def _store(self, which: int, ring: Ring, r: dict[str, list], partition: int, offset: int) -> None:
        n = len(r["ids"])
        if n > ring.capacity:  # keep only the newest rows of an oversize batch
            r = {k: v[-ring.capacity:] for k, v in r.items()}
            n = ring.capacity
        tensors = {"state": torch.tensor(r["state"], dtype=torch.int32),
                   "next_state": torch.tensor(r["next_state"], dtype=torch.int32),
                   "action": torch.tensor(r["action"], dtype=torch.int32),
                   "reward": torch.tensor(r["reward"], dtype=torch.float32),
                   "propensity": torch.tensor(r["propensity"], dtype=torch.float32),
                   "ts": torch.tensor(r["ts"], dtype=torch.int64),
                   "partition": torch.full((n,), partition, dtype=torch.int32),
                   "offset": torch.full((n,), offset, dtype=torch.int64)}
        slots, evicted = ring.write(tensors, r["ids"])
        for tid in evicted:
            self.where.pop(tid, None)
        for tid, s in zip(r["ids"], slots.tolist()):
            self.where[tid] = (which, s)
        acted = tensors["action"].long()
        if self._acted.shape[0] <= int(acted.max()):
            grown = torch.zeros(max(int(acted.max()) + 1, 2 * self._acted.shape[0]), dtype=torch.bool)
            grown[:self._acted.shape[0]] = self._acted
            self._acted = grown
        if not bool(self._acted[acted].all()):
            self._acted[acted] = True
            self._pool = None
        if which == 0:
            self.pos_tree.update(slots, (tensors["reward"] > 0).double().numpy())
        if which == 0 and self.tree is not None:
            self.tree.update(slots, np.full(n, self.max_priority ** self.cfg.alpha))

    # --- sampling --------------------------------------------------------------------------
    def sample(self, batch_size: int) -> Batch:
        """A batch from the training ring, drawn from a mixture of three proposals:

        - main: proportional to priority (prioritized) or uniform;
        - rewarded: uniform over rewarded transitions (``positive_share``; sparse rewards);
        - recent: uniform over the newest ``drift_recent_window`` (``recent_share``, after drift).

        Importance weights ``(1 / (N * P(i))) ** beta`` (max-normalised) use the exact mixture
        probability, so the oversampling does not bias the TD loss (fully at beta = 1).
        """
        ring, size = self.train, self.train.size
        if size == 0:
            raise ValueError("cannot sample from an empty buffer")
        n_pos_total = self.pos_tree.total
        pos_share = self.cfg.positive_share if n_pos_total >= 1 else 0.0
        n_recent = int(round(batch_size * self.recent_share))
        n_pos = min(int(round(batch_size * pos_share)), batch_size - n_recent)
        n_main = batch_size - n_recent - n_pos
        parts = []
        if n_main:
            if self.tree is not None:
                main = self.tree.sample(n_main, self.rng)
                parts.append(np.where(main < size, main, self.rng.integers(0, size, n_main)))
            else:
                parts.append(self.rng.integers(0, size, n_main))
        if n_pos:
            pos = self.pos_tree.sample(n_pos, self.rng)
            parts.append(np.where(pos < size, pos, self.rng.integers(0, size, n_pos)))
        window = min(self.cfg.drift_recent_window, size)
        if n_recent:
            parts.append((ring.ptr - self.rng.integers(1, window + 1, n_recent)) % ring.capacity)
        slots = np.concatenate(parts)
        weight = self._weights(slots, size, n_main / batch_size, n_pos / batch_size, n_recent / batch_size, window)
        state, action, reward, next_state, prop = ring.gather(torch.from_numpy(slots))
        return Batch(state, action, reward, next_state, prop, torch.from_numpy(weight), slots)

    def _weights(self, slots: np.ndarray, size: int, s_main: float, s_pos: float, s_recent: float,
                 window: int) -> np.ndarray:
        if s_main == 1.0 and self.tree is None:
            return np.ones(len(slots), dtype=np.float32)
        if self.tree is not None:
            p_main = self.tree.get(slots) / max(self.tree.total, 1e-12)
        else:
            p_main = np.full(len(slots), 1.0 / size)
        p = s_main * p_main
        if s_pos:
            p = p + s_pos * self.pos_tree.get(slots) / self.pos_tree.total
        if s_recent:
            age = (self.train.ptr - 1 - slots) % self.train.capacity
            p = p + s_recent * (age < window) / window
        w = (size * np.maximum(p, 1e-12)) ** (-self.cfg.beta)
        return (w / w.max()).astype(np.float32)

    def item_pool(self) -> torch.Tensor:
        """Indices of items that have been logged as actions: where negatives and next-state
        candidates are drawn from (catalog items never shown keep a pure text vector)."""
        if self._pool is None:
            self._pool = torch.nonzero(self._acted).flatten()
        return self._pool

    def update_priorities(self, slots: np.ndarray, td_error: np.ndarray) -> None:
        if self.tree is None:
            return
        p = np.abs(td_error) + self.cfg.priority_eps
        p = np.where(np.isfinite(p), p, self.max_priority)
        self.max_priority = max(self.max_priority, float(p.max()))
        self.tree.update(slots, p ** self.cfg.alpha)

    def eval_slice(self, n: int) -> Batch:
        """The ``n`` most recent held-out transitions (never trained on)."""
        slots = self.holdout.recent(n)
        state, action, reward, next_state, prop = self.holdout.gather(slots)
        return Batch(state, action, reward, next_state, prop, torch.ones(len(slots)), slots.numpy())

    # --- restart ---------------------------------------------------------------------------
    def refill_offsets(self, consumed: dict[int, int]) -> dict[int, int]:
        """Per partition, the offset to re-read from so a restart rebuilds this buffer.

        That is the oldest message still represented in either ring; a partition with nothing
        stored re-reads from its consumed position.
        """
        out = dict(consumed)
        for ring in (self.train, self.holdout):
            n = ring.size
            if not n:
                continue
            part, off = ring.partition[:n], ring.offset[:n]
            for p in torch.unique(part).tolist():
                if p < 0:
                    continue
                oldest = int(off[part == p].min())
                out[p] = min(out.get(p, oldest), oldest)
        return out

    def popularity(self, n_items: int) -> torch.Tensor:
        """Rewarded-action counts per item index over the training ring (the popularity baseline)."""
        n = self.train.size
        a = self.train.action[:n].long()
        rewarded = self.train.reward[:n] > 0
        return torch.bincount(a[rewarded], minlength=n_items)[:n_items].float()


def _empty_rows() -> dict[str, list]:
    return {"ids": [], "state": [], "next_state": [], "action": [], "reward": [], "propensity": [], "ts": []}


def _invalid_reason(t: Any) -> str | None:
    """Why a transition cannot enter the buffer, or None.

    >>> _invalid_reason({"id": "x", "state": [], "action": "a", "reward": float("nan"), "next_state": []})
    'non_finite_reward'
    """
    if not isinstance(t, dict):
        return "malformed"
    tid, action, reward = t.get("id"), t.get("action"), t.get("reward")
    if not isinstance(tid, str) or not tid or not isinstance(action, str) or not action:
        return "malformed"
    if not isinstance(t.get("state"), list) or not isinstance(t.get("next_state"), list):
        return "malformed"
    if not all(isinstance(i, str) for i in t["state"]) or not all(isinstance(i, str) for i in t["next_state"]):
        return "malformed"
    if reward is None:  # JSON has no NaN: strict encoders write a NaN reward as null
        return "non_finite_reward"
    if isinstance(reward, bool) or not isinstance(reward, (int, float)):
        return "malformed"
    if not math.isfinite(reward):
        return "non_finite_reward"
    p = t.get("propensity")
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0):
        return "bad_propensity"
    return None
