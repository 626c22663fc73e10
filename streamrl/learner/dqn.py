"""One learner update, in DQN order: sample, TD target, loss, guard, step, priorities, target sync.

Double DQN: the online network picks ``argmax_a' Q(s', a')`` among a sampled candidate set and
the target network values it. Next to the Huber TD loss, the SQN-style supervised head learns
to rank the next engaged item (rewarded actions) above sampled negatives (Xin et al., 2020).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from streamrl.learner.config import LearnerConfig
from streamrl.learner.model import QNetwork
from streamrl.learner.replay import Batch

#: Why an update was skipped (bounded: a metric label).
SKIP_REASONS = ("non_finite_loss", "exploding_gradient")


class BatchSource(Protocol):
    def sample(self, batch_size: int) -> Batch: ...
    def item_pool(self) -> torch.Tensor: ...
    def update_priorities(self, slots: np.ndarray, td_error: np.ndarray) -> None: ...


@dataclass
class UpdateResult:
    loss: float
    td_loss: float
    sup_loss: float
    td_error: float      # mean |TD error| of the batch
    q_mean: float
    grad_norm: float
    skipped: str | None  # one of SKIP_REASONS, or None when the step was applied


def dqn_update(online: QNetwork, target: QNetwork, opt: torch.optim.Optimizer, source: BatchSource,
               cfg: LearnerConfig, step: int, gen: torch.Generator) -> UpdateResult:
    """Sample a batch from ``source`` and apply one guarded gradient step. Next-state candidates
    and supervised negatives are drawn uniformly from ``source.item_pool()``."""
    device = online.start.device
    # 1. sample: transitions, next-state candidates, negatives
    b = source.sample(cfg.batch_size).to(device)
    pool = source.item_pool()
    cands = pool[torch.randint(0, len(pool), (cfg.next_candidates,), generator=gen)].to(device)
    negs = pool[torch.randint(0, len(pool), (cfg.sup_negatives,), generator=gen)].to(device)

    # a small catalog: every item's vector once per network and step (a large one: per call, its
    # unique items)
    touched = b.state.numel() + b.next_state.numel() + 2 * len(b.action) + len(cands) + len(negs)
    with contextlib.ExitStack() as once:
        if online.whole_table_pays(touched):
            once.enter_context(online.every_item_once())
            with torch.no_grad():
                once.enter_context(target.every_item_once())
        return _step(online, target, opt, source, cfg, step, b, cands, negs)


def _step(online: QNetwork, target: QNetwork, opt: torch.optim.Optimizer, source: BatchSource,
          cfg: LearnerConfig, step: int, b: Batch, cands: torch.Tensor, negs: torch.Tensor) -> UpdateResult:
    device = online.start.device
    # 2. TD target (Double DQN) without gradients
    with torch.no_grad():
        best = online.q_cands(online.encode(b.next_state), cands).argmax(dim=1)
        q_next = target.q_pair(target.encode(b.next_state), cands[best])
        y = b.reward + cfg.gamma * q_next

    # 3. losses: weighted Huber TD + supervised next-item head + id-embedding L2
    h = online.encode(b.state)
    q = online.q_pair(h, b.action)
    td_loss = (b.weight * F.huber_loss(q, y, delta=cfg.huber_delta, reduction="none")).mean()
    sup_loss = _sup_loss(online, h, b, negs) if cfg.sup_weight else torch.zeros((), device=device)
    l2 = online.item_id(b.action).pow(2).sum(-1).mean()
    loss = td_loss + cfg.sup_weight * sup_loss + cfg.id_l2 * l2

    # 4. guard: a non-finite loss or an exploding gradient never reaches the weights
    opt.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return UpdateResult(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, "non_finite_loss")
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(online.parameters(), cfg.max_grad_norm))
    td = (y - q).detach()
    if not math.isfinite(grad_norm) or grad_norm > cfg.skip_grad_norm:
        opt.zero_grad(set_to_none=True)
        return UpdateResult(loss.item(), td_loss.item(), sup_loss.item(), td.abs().mean().item(),
                            q.detach().mean().item(), grad_norm, "exploding_gradient")

    # 5. step, then new priorities for the sampled transitions
    opt.step()
    source.update_priorities(b.slots, td.cpu().numpy())

    # 6. target sync (the only place it happens)
    sync_target(online, target, cfg, step)
    return UpdateResult(loss.item(), td_loss.item(), sup_loss.item(), td.abs().mean().item(),
                        q.detach().mean().item(), grad_norm, None)


def _sup_loss(online: QNetwork, h: torch.Tensor, b: Batch, negs: torch.Tensor) -> torch.Tensor:
    """Sampled-softmax cross-entropy of the engaged item against shared negatives."""
    mask = b.reward > 0
    if not bool(mask.any()):
        return h.sum() * 0.0
    hp, pos = h[mask], b.action[mask]
    z = online.sup_head(hp)
    pos_logit = (z * online.item_vectors(pos)).sum(-1, keepdim=True)
    neg_logit = z @ online.item_vectors(negs).T
    neg_logit = neg_logit.masked_fill(negs.unsqueeze(0) == pos.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=h.device))


@torch.no_grad()
def sync_target(online: QNetwork, target: QNetwork, cfg: LearnerConfig, step: int) -> None:
    """Soft (Polyak, ``target_tau`` > 0) or periodic hard copy of the online weights."""
    if cfg.target_tau > 0:
        for p, tp in zip(online.parameters(), target.parameters()):
            tp.lerp_(p, cfg.target_tau)
    elif step % cfg.target_sync_every == 0:
        target.load_state_dict(online.state_dict())
