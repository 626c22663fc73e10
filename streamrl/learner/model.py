"""The Q-network: Q(s, a) = <f(s), g(a)> + b(a), plus the SQN next-item head.

Ranking score of the policy (what serving computes): ``<z(s), g(a)> + q_weight * Q(s, a)``, with
``z`` the supervised head's state vector (see :meth:`QNetwork.score`).

- item tower g(a) = id_embedding[a] + W_text · text(a): the text projection gives items never
  seen in training (id embedding still zero) a meaningful vector;
- state encoder f(s): a GRU over the item vectors of the user's history (left-padded), or
  (``encoder="mean"``) a projection of their mean: order-free, far cheaper, and less prone to
  overfit when rewarded transitions are few (a young closed loop);
- two heads on the GRU state: the Q head and the supervised next-engaged-item head, both scored
  against the same item vectors, so any candidate set is scored in one batched matmul.

The id table grows in place (:meth:`QNetwork.grow`) when new catalog items appear.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from streamrl.learner.vocab import PAD

#: Tensors of a QNetwork's state_dict that are per item (first dimension = number of items).
ITEM_TENSORS = ("item_id.weight", "item_bias.weight")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a QNetwork; goes into snapshot metadata so a reader can rebuild and check it."""

    n_items: int
    dim: int = 64
    hidden: int = 64
    text_dim: int = 384
    history_len: int = 20
    q_weight: float = 1.0
    encoder: str = "gru"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class QNetwork(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_id = nn.Embedding(cfg.n_items, cfg.dim)
        self.item_bias = nn.Embedding(cfg.n_items, 1)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.dim)
        self.start = nn.Parameter(torch.zeros(cfg.dim))
        if cfg.encoder == "gru":
            self.gru = nn.GRU(cfg.dim, cfg.hidden, batch_first=True)
        elif cfg.encoder == "mean":
            self.pool = nn.Linear(cfg.dim, cfg.hidden)
        else:
            raise ValueError(f"unknown encoder {cfg.encoder!r} (gru, mean)")
        self.q_head = nn.Linear(cfg.hidden, cfg.dim)
        self.sup_head = nn.Linear(cfg.hidden, cfg.dim)
        nn.init.zeros_(self.item_id.weight)   # unseen items: text only
        nn.init.zeros_(self.item_bias.weight)
        nn.init.normal_(self.text_proj.weight, std=cfg.text_dim ** -0.5)
        # frozen text embeddings live outside the parameters (and outside snapshots)
        self.register_buffer("text", torch.zeros(cfg.n_items, cfg.text_dim), persistent=False)
        self._table: torch.Tensor | None = None   # every item's g(a), within every_item_once()

    @property
    def n_items(self) -> int:
        return self.item_id.num_embeddings

    # --- towers ----------------------------------------------------------------------------
    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """g(a) for item indices ``items`` (any shape), or for every item when None."""
        if self._table is not None:
            return self._table if items is None else self._table[items]
        if items is None:
            return self.item_id.weight + self.text_proj(self.text[:self.n_items])
        uniq, inv = torch.unique(items.reshape(-1), return_inverse=True)  # project each item once
        g = self.item_id(uniq) + self.text_proj(self.text[uniq])
        return g[inv].view(*items.shape, -1)

    @contextlib.contextmanager
    def every_item_once(self) -> Iterator[None]:
        """Within the block, g(a) of every item is computed once and looked up (under the grad
        mode the block is entered in). A training step on a small catalog touches most of its
        items several times over (states, next states, actions, candidates): one projection of
        the whole table is cheaper than projecting each call's unique items."""
        self._table = self.item_vectors()
        try:
            yield
        finally:
            self._table = None

    def whole_table_pays(self, references: int) -> bool:
        """Whether :meth:`every_item_once` is cheaper than per-call projections for work that makes
        ``references`` item lookups: while the table is at most half of them. Demo shapes (a
        training step: batch 256, 20-item histories, ~10.9k references), one thread: 1000 items
        5.3-6.0 ms per step against 7.9-9.0, 4000 items 9.9-10.0 against 10.6-10.9, 8000 items
        18.6 against 12.2."""
        return 2 * self.n_items <= references

    def item_bias_of(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.item_bias.weight.squeeze(-1) if items is None else self.item_bias(items).squeeze(-1)

    def encode(self, state: torch.Tensor) -> torch.Tensor:
        """State vectors ``(B, hidden)`` of histories ``(B, L)`` (left-padded with PAD)."""
        mask = (state != PAD).unsqueeze(-1)
        x = self.item_vectors(state) * mask
        if self.cfg.encoder == "mean":  # the learned start vector is a prior item: an empty history gets it alone
            return torch.tanh(self.pool((x.sum(1) + self.start) / (mask.sum(1) + 1)))
        x = torch.cat([self.start.expand(x.shape[0], 1, -1), x], dim=1)
        _, h = self.gru(x)
        return h[-1]

    # --- heads -----------------------------------------------------------------------------
    def q_pair(self, h: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q(s_i, a_i) for GRU states ``(B, hidden)`` and actions ``(B,)``: ``(B,)``."""
        return (self.q_head(h) * self.item_vectors(actions)).sum(-1) + self.item_bias_of(actions)

    def q_cands(self, h: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Q-values of a shared candidate set ``(K,)`` (None: every item) for each state: ``(B, K)``."""
        return self.q_head(h) @ self.item_vectors(candidates).T + self.item_bias_of(candidates)

    def score(self, state: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """The policy's ranking scores ``(B, K)`` of histories ``(B, L)`` against shared candidates
        (None: every item): supervised logit + ``q_weight`` * Q(s, a), as in SQN, where the
        supervised head ranks and the Q head adds each item's long-term value."""
        h = self.encode(state)
        s = self.q_cands(h, candidates) * self.cfg.q_weight
        return s + self.sup_head(h) @ self.item_vectors(candidates).T

    def sup_logits(self, h: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Supervised next-item logits ``(B, K)`` of shared candidates ``(K,)``."""
        return self.sup_head(h) @ self.item_vectors(candidates).T

    # --- growth ----------------------------------------------------------------------------
    @torch.no_grad()
    def grow(self, n_items: int) -> dict[nn.Parameter, nn.Parameter]:
        """Enlarge the per-item tables to ``n_items`` rows (new rows zero); old -> new params."""
        if n_items <= self.n_items:
            return {}
        swapped = {}
        for name in ("item_id", "item_bias"):
            old = getattr(self, name)
            new = nn.Embedding(n_items, old.embedding_dim).to(old.weight.device)
            new.weight.zero_()
            new.weight[:old.num_embeddings] = old.weight
            swapped[old.weight] = new.weight
            setattr(self, name, new)
        if self.text.shape[0] < n_items:
            text = torch.zeros(n_items, self.cfg.text_dim, device=self.text.device)
            text[:self.text.shape[0]] = self.text
            self.text = text
        self.cfg = dataclasses.replace(self.cfg, n_items=n_items)
        return swapped

    def attach_text(self, text: torch.Tensor) -> None:
        """Use ``text`` (at least ``n_items`` rows) as the frozen text table; shared, not copied, on CPU."""
        if text.shape[0] < self.n_items:
            raise ValueError(f"text table has {text.shape[0]} rows < {self.n_items} items")
        self.text = text.to(self.text.device)


def grow_optimizer(opt: torch.optim.Optimizer, swapped: dict[nn.Parameter, nn.Parameter]) -> None:
    """Point ``opt`` at grown parameters, zero-padding their per-parameter state (Adam moments)."""
    for group in opt.param_groups:
        group["params"] = [swapped.get(p, p) for p in group["params"]]
    for old, new in swapped.items():
        state = opt.state.pop(old, None)
        if state is None:
            continue
        for k, v in state.items():
            if torch.is_tensor(v) and v.shape[:1] == old.shape[:1] and v.dim() == old.dim():
                pad = torch.zeros_like(new)
                pad[:v.shape[0]] = v
                state[k] = pad
        opt.state[new] = state


def build_model(n_items: int, lc) -> QNetwork:
    """A QNetwork for ``n_items`` rows shaped by a :class:`~streamrl.learner.config.LearnerConfig`.

    With ``sup_weight`` 0 the supervised head is never trained, so it starts (and stays) zero: an
    untrained head would add random logits to the ranking score instead of nothing."""
    net = QNetwork(ModelConfig(n_items, lc.dim, lc.hidden, lc.text_dim, lc.history_len, lc.q_weight, lc.encoder))
    if lc.sup_weight == 0:
        with torch.no_grad():
            net.sup_head.weight.zero_()
            net.sup_head.bias.zero_()
    return net
