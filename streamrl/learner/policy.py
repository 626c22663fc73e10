"""A read-only ranking policy rebuilt from a verified snapshot (what a ranker serves).

>>> policy = load_policy(snapshot, catalog_embeddings)            # doctest: +SKIP
>>> policy.score(["i3", "i9"], ["i1", "i2", "brand-new-item"])    # doctest: +SKIP
array([ 1.3, -0.2,  0.7], dtype=float32)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamrl.learner.model import ModelConfig, QNetwork
from streamrl.learner.vocab import PAD


class Policy:
    """Scores candidates for a history with the snapshot's network: supervised logit + q_weight * Q.

    Items the snapshot never saw are appended with a zero id embedding, so they are scored
    through their text vector alone.
    """

    def __init__(self, version: int, model: QNetwork, item_ids: list[str], metadata: dict[str, Any]) -> None:
        self.version, self.model, self.metadata = version, model.eval(), metadata
        self.index = {i: n for n, i in enumerate(item_ids) if n != PAD}
        self.ids = list(item_ids)

    def add_items(self, item_ids: list[str], vectors: np.ndarray | None) -> None:
        """Set text vectors (catalog embeddings); unknown items get new rows."""
        new = [i for i in item_ids if i not in self.index]
        if new:
            n = len(self.ids)
            self.model.grow(n + len(new))
            for k, i in enumerate(new):
                self.index[i] = n + k
            self.ids.extend(new)
        if vectors is not None:
            rows = torch.tensor([self.index[i] for i in item_ids])
            self.model.text[rows] = torch.as_tensor(np.asarray(vectors, dtype=np.float32)).to(self.model.text.device)

    def _indices(self, ids: list[str]) -> torch.Tensor:
        missing = [i for i in ids if i not in self.index]
        if missing:
            self.add_items(missing, None)
        return torch.tensor([self.index[i] for i in ids], dtype=torch.long)

    @torch.no_grad()
    def score_batch(self, histories: list[list[str]], candidates: list[str]) -> np.ndarray:
        """``(len(histories), len(candidates))`` ranking scores (higher first)."""
        L = self.model.cfg.history_len
        rows = [[PAD] * (L - len(h[-L:])) + self._indices(h[-L:]).tolist() for h in histories]
        cands = self._indices(candidates)
        return self.model.score(torch.tensor(rows, dtype=torch.long), cands).cpu().numpy()

    def score(self, history: list[str], candidates: list[str]) -> np.ndarray:
        return self.score_batch([history], candidates)[0]


def load_policy(snapshot, text: Any = None, device: str = "cpu") -> Policy:
    """Rebuild the network of a verified :class:`~streamrl.producers.snapshot.Snapshot`.

    ``text`` gives item text vectors: a :class:`~streamrl.catalog.ItemEmbeddings` or a mapping
    ``item_id -> vector``; items without one keep a zero text vector.
    """
    mc = snapshot.metadata["model_config"]
    cfg = ModelConfig(**{k: mc[k] for k in ModelConfig.__dataclass_fields__ if k in mc})
    model = QNetwork(cfg)
    model.load_state_dict(snapshot.tensors, strict=True)
    policy = Policy(snapshot.version, model.to(device), snapshot.item_ids, snapshot.metadata)
    if text is not None:
        if hasattr(text, "item_ids") and hasattr(text, "matrix"):
            policy.add_items(list(text.item_ids), text.matrix)
        elif len(text):
            ids = list(text)
            policy.add_items(ids, np.stack([np.asarray(text[i], dtype=np.float32) for i in ids]))
    return policy


@dataclass(frozen=True)
class FrozenScorer:
    """:meth:`QNetwork.score` in numpy, from tables computed once per network (read-only serving).

    ``score(s, a) = <u(s), g(a)> + q_weight b(a)`` with ``u(s) = (q_weight W_q + W_sup) f(s) + ..``:
    the item vectors, biases and the two heads are folded once, and the state encoder ``f`` is
    rebuilt in numpy (:class:`GruEncoder`, :class:`MeanEncoder`). A request then costs a few small
    numpy calls and one item matmul, with no per-op framework dispatch.

    >>> scorer = FrozenScorer.from_model(model)                       # doctest: +SKIP
    >>> scorer.score(np.array([[0, 0, 7, 3]]), np.array([5, 9]))      # doctest: +SKIP
    array([[ 0.81, -0.12]], dtype=float32)
    """

    vectors: np.ndarray    # (items, dim) g(a)
    bias: np.ndarray       # (items,) q_weight * b(a)
    head_w: np.ndarray     # (hidden, dim) (q_weight W_q + W_sup)^T
    head_b: np.ndarray     # (dim,) q_weight b_q + b_sup
    encoder: "GruEncoder | MeanEncoder"

    @classmethod
    @torch.inference_mode()
    def from_model(cls, model: QNetwork) -> "FrozenScorer":
        qw = model.cfg.q_weight
        vectors = model.item_vectors()
        kind = getattr(model.cfg, "encoder", "gru")
        encoder = {"gru": GruEncoder, "mean": MeanEncoder}[kind].from_model(model, vectors)
        return cls(_np32(vectors), _np32(qw * model.item_bias_of()), _np32(qw * model.q_head.weight.T + model.sup_head.weight.T),
                   _np32(qw * model.q_head.bias + model.sup_head.bias), encoder)

    def tables(self) -> list[np.ndarray]:
        """Every precomputed table (a finiteness check of a rebuilt policy)."""
        return [self.vectors, self.bias, self.head_w, self.head_b, *self.encoder.tables()]

    def user_vectors(self, states: np.ndarray) -> np.ndarray:
        """``u(s)`` of left-padded histories ``(B, L)``: ``(B, dim)``."""
        u = self.encoder.encode(states) @ self.head_w
        u += self.head_b
        return u

    def score(self, states: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
        """Ranking scores ``(B, K)`` of histories ``(B, L)`` against shared candidate rows (None: all)."""
        u = self.user_vectors(states)
        if candidates is None:
            return u @ self.vectors.T + self.bias
        return u @ self.vectors[candidates].T + self.bias[candidates]


@dataclass(frozen=True)
class GruEncoder:
    """The GRU state encoder in numpy.

    The input gates depend on the item alone, so they are tabulated per item (PAD: the bias
    alone, its input is masked); a step costs one small ``W [h; 1]`` matmul and ten in-place
    ufuncs on contiguous blocks (column layout: features × batch). The state after the start step
    and ``p`` leading PADs is the same for every request and is tabulated too. Sigmoids are
    ``(1 + tanh(x / 2)) / 2``, with the halving folded into the tables.
    """

    gates_in: np.ndarray   # (items, 3 hidden): [(W_ir,z g(a) + b_ir,z + b_hr,z) / 2 | W_in g(a) + b_in]
    w_hh_t: np.ndarray     # (3 hidden, hidden + 1): [W_hh, (0, 0, b_hn)] / 2 (applied to [h; 1])
    h_pads: np.ndarray     # (history_len + 1, hidden): state after start and p leading PADs

    @classmethod
    def from_model(cls, model: QNetwork, vectors: torch.Tensor) -> "GruEncoder":
        H, gru = model.cfg.hidden, model.gru
        b_ih, b_hh = gru.bias_ih_l0, gru.bias_hh_l0
        fold = torch.cat([b_hh[:2 * H], torch.zeros(H)])          # r, z: both biases on the input side

        def gates(x: torch.Tensor) -> torch.Tensor:               # input gates of inputs x (N, dim)
            g = x @ gru.weight_ih_l0.T + b_ih + fold
            g[:, :2 * H] *= 0.5
            return g

        gates_in = gates(vectors)
        gates_in[PAD] = gates(torch.zeros(1, vectors.shape[1]))[0]
        w_hh_t = torch.cat([gru.weight_hh_l0, torch.cat([torch.zeros(2 * H), b_hh[2 * H:]])[:, None]], dim=1) * 0.5
        enc = cls(_np32(gates_in), _np32(w_hh_t), np.zeros((0, H), np.float32))
        pads = [enc.run(_np32(gates(model.start[None]))[:, None], np.zeros((1, H), np.float32))]
        for _ in range(model.cfg.history_len):
            pads.append(enc.run(enc.gates_in[PAD][None, None], pads[-1]))
        return cls(enc.gates_in, enc.w_hh_t, _frozen(np.concatenate(pads)))

    def tables(self) -> list[np.ndarray]:
        return [self.gates_in, self.w_hh_t, self.h_pads]

    def encode(self, states: np.ndarray) -> np.ndarray:
        """GRU state ``(B, hidden)`` of left-padded histories ``(B, L)`` (as :meth:`QNetwork.encode`)."""
        known = states != PAD
        first = int(np.where(known.any(1), known.argmax(1), states.shape[1]).min())   # leading PADs shared by all
        h0 = np.repeat(self.h_pads[first][None], len(states), axis=0)
        return self.run(self.gates_in[states[:, first:]], h0)

    def run(self, gates: np.ndarray, h0: np.ndarray) -> np.ndarray:
        """The GRU from state ``h0`` ``(B, H)`` over input gates ``(B, T, 3H)``: final state ``(B, H)``."""
        B, H = h0.shape
        g = np.ascontiguousarray(gates.transpose(1, 2, 0))          # (T, 3H, B)
        haug = np.ones((H + 1, B), np.float32)                      # [h; 1]
        h = haug[:H]
        h[:] = h0.T
        w = self.w_hh_t
        gh, rz, n = np.empty((3 * H, B), np.float32), np.empty((2 * H, B), np.float32), np.empty((H, B), np.float32)
        r, z, gh_rz, gh_n = rz[:H], rz[H:], gh[:2 * H], gh[2 * H:]
        for gi in g:
            np.matmul(w, haug, out=gh)                              # [W_hr h; W_hz h; W_hn h + b_hn] / 2
            np.add(gh_rz, gi[:2 * H], out=rz)
            np.tanh(rz, out=rz)
            rz += 1.0                                               # 2 sigmoid(.) of r and z
            np.multiply(r, gh_n, out=n)                             # r (W_hn h + b_hn)
            n += gi[2 * H:]
            np.tanh(n, out=n)
            h -= n                                                  # h' = n + z (h - n)
            h *= z
            h *= 0.5
            h += n
        return np.ascontiguousarray(h.T)


@dataclass(frozen=True)
class MeanEncoder:
    """The mean-of-history encoder in numpy: ``tanh(W_pool (sum g(a) + start) / (n + 1) + b)``."""

    inputs: np.ndarray     # (items, dim) g(a), PAD row zero (masked)
    start: np.ndarray      # (dim,)
    pool_w: np.ndarray     # (dim, hidden) W_pool^T
    pool_b: np.ndarray     # (hidden,)

    @classmethod
    def from_model(cls, model: QNetwork, vectors: torch.Tensor) -> "MeanEncoder":
        inputs = vectors.clone()
        inputs[PAD] = 0.0
        return cls(_np32(inputs), _np32(model.start), _np32(model.pool.weight.T), _np32(model.pool.bias))

    def tables(self) -> list[np.ndarray]:
        return [self.inputs, self.start, self.pool_w, self.pool_b]

    def encode(self, states: np.ndarray) -> np.ndarray:
        x = self.inputs[states].sum(1)
        x += self.start
        x /= np.count_nonzero(states != PAD, axis=1)[:, None].astype(np.float32) + 1
        h = x @ self.pool_w
        h += self.pool_b
        return np.tanh(h, out=h)


def _np32(t: torch.Tensor) -> np.ndarray:
    return _frozen(t.detach().cpu().numpy())


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    a.flags.writeable = False            # shared by every request of a policy
    return a
