"""Offline evaluation on held-out transitions and the publish gate.

Figures (all on the same held-out slice, same sampled negatives for every policy compared):

- HR@10 / NDCG@10: each rewarded action is ranked against ``eval_negatives`` random items (or the
  whole catalog); ties count half. With ``eval_reward_weighted`` each action counts by its reward
  (a purchase worth 5 clicks counts 5 times), so the figures rank what the learner optimises.
- TD error: mean |r + γ Q(s', a*) - Q(s, a)|, the policy acting as its own target.
- SNIPS: self-normalised importance-sampling estimate of the reward the policy would collect,
  from logged propensities; the policy's probability of the logged action is a softmax of its
  Q-values (temperature ``policy_temperature``) over the action and the sampled negatives.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from streamrl.learner.config import LearnerConfig
from streamrl.learner.replay import Batch

#: scorer(state (B, L), candidates (K,) or None for every item) -> scores (B, K)
Scorer = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass
class EvalReport:
    hr10: float
    ndcg10: float
    td_error: float | None
    snips: float | None
    n: int            # held-out transitions evaluated
    n_rewarded: int   # of which rewarded (the HR/NDCG population)
    n_logged: int     # of which with a logged propensity (the SNIPS population)

    def to_dict(self) -> dict:
        return asdict(self)


def model_scorer(model) -> Scorer:
    return lambda state, cands: model.score(state, cands)


def popularity_scorer(counts: torch.Tensor) -> Scorer:
    """Ranks every user's candidates by how often each item was rewarded (the baseline)."""
    def score(state: torch.Tensor, cands: torch.Tensor | None) -> torch.Tensor:
        c = counts if cands is None else counts[cands]
        return c.unsqueeze(0).expand(state.shape[0], -1)
    return score


def rank_of_positive(pos: torch.Tensor, neg: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """0-based rank of each positive among its valid negatives (ties count half).

    >>> rank_of_positive(torch.tensor([2.0]), torch.tensor([[3.0, 2.0, 1.0]]), torch.ones(1, 3, dtype=torch.bool)).tolist()
    [1.5]
    """
    p = pos.unsqueeze(1)
    return (((neg > p) & valid).sum(1) + 0.5 * ((neg == p) & valid).sum(1)).float()


@torch.no_grad()
def evaluate(scorer: Scorer, batch: Batch, n_items: int, cfg: LearnerConfig, seed: int = 0,
             model=None, chunk: int = 512) -> EvalReport:
    """Figures of one policy on a held-out batch; ``model`` (a QNetwork) adds TD error and SNIPS."""
    gen = torch.Generator().manual_seed(seed)
    if cfg.eval_negatives > 0:
        negs = torch.randint(1, max(n_items, 2), (cfg.eval_negatives,), generator=gen)
    else:
        negs = torch.arange(1, n_items)
    negs = negs.to(batch.state.device)
    hits = ndcg = weight_sum = 0.0
    n_rew = n_logged = 0
    td_sum, w_sum, wr_sum = 0.0, 0.0, 0.0
    # every item's vector once for the whole slice where that pays (the chunks' histories, next
    # states, actions and negatives cover a small catalog several times over; projecting each
    # call's own items was a tenth of the learner's time at a gate a second)
    touched = 2 * batch.state.numel() + len(batch) + len(negs) * -(-len(batch) // chunk)
    with model.every_item_once() if model is not None and model.whole_table_pays(touched) else contextlib.nullcontext():
        for i in range(0, len(batch), chunk):
            state, action = batch.state[i:i + chunk], batch.action[i:i + chunk]
            reward, prop = batch.reward[i:i + chunk], batch.propensity[i:i + chunk]
            scores = scorer(state, torch.cat([negs, action]))  # (B, K + B): negatives, then actions
            k = len(negs)
            rows = torch.arange(len(action), device=scores.device)
            neg, pos = scores[:, :k], scores[rows, k + rows]
            valid = negs.unsqueeze(0) != action.unsqueeze(1)
            rew = reward > 0
            if bool(rew.any()):
                rank = rank_of_positive(pos[rew], neg[rew], valid[rew])
                hit = rank < 10
                w = reward[rew] if cfg.eval_reward_weighted else torch.ones_like(rank)
                hits += float((hit * w).sum())
                ndcg += float((hit / torch.log2(rank + 2) * w).sum())
                weight_sum += float(w.sum())
                n_rew += int(rew.sum())
            if model is not None:
                td_sum += float(_td_error(model, state, action, reward, batch.next_state[i:i + chunk], negs, cfg).sum())
                logged = torch.isfinite(prop)
                if bool(logged.any()):
                    logits = torch.cat([pos.unsqueeze(1), neg.masked_fill(~valid, float("-inf"))], 1) / cfg.policy_temperature
                    pi = torch.softmax(logits, dim=1)[:, 0]
                    w = (pi / prop).clamp(max=cfg.max_importance_weight)[logged]
                    w_sum += float(w.sum())
                    wr_sum += float((w * reward[logged]).sum())
                    n_logged += int(logged.sum())
    n = len(batch)
    return EvalReport(hr10=hits / weight_sum if weight_sum else 0.0, ndcg10=ndcg / weight_sum if weight_sum else 0.0,
                      td_error=td_sum / n if (model is not None and n) else None,
                      snips=wr_sum / w_sum if w_sum > 0 else None, n=n, n_rewarded=n_rew, n_logged=n_logged)


def _td_error(model, state, action, reward, next_state, cands, cfg: LearnerConfig) -> torch.Tensor:
    q = model.q_pair(model.encode(state), action)
    h_next = model.encode(next_state)
    q_next = model.q_cands(h_next, cands).max(dim=1).values
    return (reward + cfg.gamma * q_next - q).abs()


def _diff_se(a: float, b: float, n: int) -> float:
    """Standard error of the difference of two hit rates (figures in [0, 1]) each over ``n`` actions."""
    if n <= 0:
        return math.inf
    return math.sqrt(max(a * (1 - a) + b * (1 - b), 0.0) / n)


def gate(candidate: EvalReport, published: EvalReport | None, cfg: LearnerConfig) -> tuple[bool, str]:
    """Whether the candidate may replace the published policy, and why (a short reason).

    >>> cfg = LearnerConfig(gate_tolerance=0.02)
    >>> gate(EvalReport(0.30, 0.2, 0.1, None, 100, 50, 0), EvalReport(0.31, 0.2, 0.1, None, 100, 50, 0), cfg)
    (True, 'pass')
    >>> gate(EvalReport(0.20, 0.2, 0.1, None, 100, 50, 0), EvalReport(0.31, 0.2, 0.1, None, 100, 50, 0), cfg)
    (False, 'hr10')

    With ``gate_z`` a shortfall must also exceed that many standard errors of the difference:
    0.11 on 50 rewarded actions is within noise, on 2000 it is not.

    >>> cfg = LearnerConfig(gate_tolerance=0.02, gate_z=2.0)
    >>> gate(EvalReport(0.20, 0.2, 0.1, None, 100, 50, 0), EvalReport(0.31, 0.2, 0.1, None, 100, 50, 0), cfg)
    (True, 'pass')
    >>> gate(EvalReport(0.20, 0.2, 0.1, None, 9000, 2000, 0), EvalReport(0.31, 0.2, 0.1, None, 9000, 2000, 0), cfg)
    (False, 'hr10')
    """
    figures = [candidate.hr10, candidate.ndcg10] + [v for v in (candidate.td_error, candidate.snips) if v is not None]
    if not all(math.isfinite(v) for v in figures):
        return False, "non_finite"
    if published is None:
        return True, "first"
    for name in ("hr10", "ndcg10"):
        a, b = getattr(candidate, name), getattr(published, name)
        margin = cfg.gate_tolerance
        if cfg.gate_z > 0:
            margin += cfg.gate_z * _diff_se(a, b, min(candidate.n_rewarded, published.n_rewarded))
        if a < b - margin:
            return False, name
    if candidate.snips is not None and published.snips is not None and published.snips > 0:
        if candidate.snips < published.snips * (1 - cfg.snips_tolerance):
            return False, "snips"
    return True, "pass"
