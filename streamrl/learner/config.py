"""Every learner hyperparameter in one documented dataclass.

The whole object is copied into each snapshot's metadata (:meth:`LearnerConfig.to_dict`), so a
published policy explains how it was trained. ``streamrl learn --help`` lists every field.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields
from typing import Any


@dataclass
class LearnerConfig:
    """Hyperparameters of the continual-learning worker (network, update, buffer, gate, loop)."""

    # --- network ---------------------------------------------------------------------------
    dim: int = 64
    """Width of item vectors g(a) and state vectors f(s)."""
    hidden: int = 64
    """Hidden size of the GRU state encoder."""
    history_len: int = 20
    """Items of history fed to the state encoder (the most recent ones; older ones are cut)."""
    encoder: str = "gru"
    """State encoder: 'gru' (a GRU over the history, order-aware) or 'mean' (a projection of the mean
    item vector: order-free, several times cheaper per update, generalises from fewer rewards)."""
    text_dim: int = 384
    """Width of the frozen text embedding of an item (MiniLM: 384)."""
    q_weight: float = 1.0
    """Ranking score = supervised next-item logit + q_weight * Q(s, a) (SQN: the supervised head ranks,
    the Q head adds long-term value; a large q_weight ranks by Q alone)."""

    # --- update ----------------------------------------------------------------------------
    batch_size: int = 256
    """Transitions per gradient step."""
    lr: float = 1e-3
    """Adam learning rate."""
    gamma: float = 0.5
    """Discount of the Q target: how much an item's effect on the rest of the session counts."""
    huber_delta: float = 1.0
    """Huber loss threshold of the TD loss; about the largest reward (the purchase weight), so a
    purchase's error is not clipped to a click's."""
    sup_weight: float = 1.0
    """Weight of the supervised next-engaged-item loss (SQN head) next to the TD loss; 0 never
    trains the head (it stays zero), so the policy ranks by ``q_weight`` * Q alone."""
    sup_negatives: int = 64
    """Sampled negative items per batch for the supervised head (shared across the batch)."""
    next_candidates: int = 128
    """Items over which max_a' Q(s', a') is taken in the Double-DQN target (sampled per step)."""
    target_tau: float = 0.0
    """Soft target update rate (Polyak); 0 selects periodic hard sync every target_sync_every steps."""
    target_sync_every: int = 200
    """Steps between hard copies of the online network into the target network (when target_tau is 0)."""
    max_grad_norm: float = 10.0
    """Gradients are clipped to this global norm."""
    skip_grad_norm: float = 1e4
    """A step whose gradient norm exceeds this (or is not finite) is skipped and counted."""
    id_l2: float = 1e-6
    """L2 penalty on the id embeddings of the batch, so the text tower carries shared structure."""

    # --- replay buffer ---------------------------------------------------------------------
    capacity: int = 1_000_000
    """Most transitions kept for training (FIFO beyond it)."""
    prioritized: bool = True
    """Proportional prioritized sampling (by |TD error|); false: uniform."""
    alpha: float = 0.6
    """Priority exponent: p_i = (|TD_i| + eps)^alpha."""
    beta: float = 0.4
    """Importance-sampling correction exponent of prioritized and positive-share sampling (0: none; the
    demo uses 0, which ranked better on its simulated stream: ``streamrl.demo.DEMO_LEARNER``)."""
    positive_share: float = 0.25
    """Share of each batch drawn uniformly from rewarded transitions (rewards are sparse: ~2% of views);
    importance weights correct the TD loss for it."""
    priority_eps: float = 1e-3
    """Added to |TD error| so every transition keeps some probability."""
    holdout_fraction: float = 0.1
    """Share of transitions (chosen by hashing their id) kept out of training for evaluation."""
    holdout_capacity: int = 20_000
    """Most recent held-out transitions kept for the evaluation gate."""

    # --- loop ------------------------------------------------------------------------------
    updates_per_transition: float = 0.25
    """Gradient steps owed per newly arrived (training) transition."""
    max_updates_per_poll: int = 64
    """Most gradient steps between two polls of the transitions topic (keeps ingestion live)."""
    min_buffer: int = 1_000
    """No gradient step before the buffer holds this many transitions."""
    checkpoint_interval_s: float = 30.0
    """Seconds between atomic checkpoints."""
    publish_interval_s: float = 60.0
    """Least seconds between two evaluation gates (a snapshot is published when the gate passes); the
    first gate runs as soon as ``min_transitions_to_publish`` transitions were seen and a step taken."""
    min_transitions_to_publish: int = 5_000
    """Transitions that must have been seen before the first snapshot goes out."""
    seed: int = 0
    """Seed of every random choice the learner makes (set once, at start)."""

    # --- evaluation gate -------------------------------------------------------------------
    eval_size: int = 2_000
    """Most recent held-out transitions evaluated at each gate."""
    eval_negatives: int = 100
    """Random items each rewarded action is ranked against for HR/NDCG@10 (0: the whole catalog)."""
    eval_reward_weighted: bool = False
    """HR@10 and NDCG@10 of the gate weight each rewarded held-out action by its reward (a purchase
    worth 5 counts 5 times), so the gate judges the candidate on what the TD loss optimises; off:
    every engaged action counts once."""
    gate_baseline: str = "published"
    """What a candidate must not trail: 'published' (the serving policy, on held-out data) or 'popularity'
    (the popularity scorer on the same data). In a closed loop the published policy chose the very
    items it is evaluated on, which favours it; 'popularity' is the unbiased bar there."""
    gate_tolerance: float = 0.02
    """The candidate may trail the published policy's HR@10 and NDCG@10 by at most this much (absolute)."""
    gate_z: float = 0.0
    """Evidence the gate needs to reject: a shortfall in HR@10 or NDCG@10 must exceed ``gate_tolerance``
    plus ``gate_z`` standard errors of the difference (from the rewarded held-out actions evaluated,
    ``sqrt((a(1-a) + b(1-b)) / n)``). 0: the tolerance alone. With a few dozen rewarded held-out
    actions (a young stream, ~2% of views rewarded) a shortfall of 0.1-0.2 is noise; 2 stops such
    coin flips from holding versions back, and a large sample still rejects a real regression."""
    snips_tolerance: float = 0.05
    """Relative SNIPS shortfall allowed, applied when both policies have SNIPS estimates."""
    policy_temperature: float = 1.0
    """Softmax temperature turning Q-values into the target policy's probabilities for SNIPS."""
    max_importance_weight: float = 100.0
    """Importance weights of the SNIPS estimate are clipped to this."""

    # --- drift -----------------------------------------------------------------------------
    drift_delta: float = 0.002
    """ADWIN confidence parameter for reward and TD-error drift."""
    drift_response: str = "recent"
    """What a detected drift does: 'recent' (sample more recent transitions for a while) or 'none'."""
    drift_recent_share: float = 0.5
    """Share of each batch drawn from the most recent transitions after a drift."""
    drift_recent_window: int = 20_000
    """How many of the newest transitions count as recent."""
    drift_boost_updates: int = 2_000
    """Gradient steps the drift response lasts."""
    drift_warmup_updates: int = 2_000
    """Gradient steps before TD error is watched for drift (it falls anyway while the network first learns)."""

    def validate(self) -> "LearnerConfig":
        if self.batch_size < 1 or self.dim < 1 or self.hidden < 1 or self.history_len < 1:
            raise ValueError("batch_size, dim, hidden and history_len must be >= 1")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError("gamma must be in [0, 1)")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError("holdout_fraction must be in [0, 1)")
        if self.encoder not in ("gru", "mean"):
            raise ValueError("encoder must be 'gru' or 'mean'")
        if self.gate_baseline not in ("published", "popularity"):
            raise ValueError("gate_baseline must be 'published' or 'popularity'")
        if self.drift_response not in ("recent", "none"):
            raise ValueError("drift_response must be 'recent' or 'none'")
        if self.capacity < self.batch_size:
            raise ValueError("capacity must be >= batch_size")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "LearnerConfig":
        return dataclasses.replace(self, **changes).validate()


def field_docs() -> dict[str, str]:
    """Field name -> its docstring (read from the source, so docs and ``--help`` never differ)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(LearnerConfig))
    docs: dict[str, str] = {}
    body = tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value)
    return docs


def add_learner_args(parser: argparse.ArgumentParser) -> None:
    """One ``--<field>`` flag per hyperparameter (default: the dataclass default)."""
    group = parser.add_argument_group("learner hyperparameters (copied into every snapshot)")
    docs = field_docs()
    for f in fields(LearnerConfig):
        typ = {"int": int, "float": float, "str": str, "bool": _bool}[f.type if isinstance(f.type, str) else f.type.__name__]
        group.add_argument("--" + f.name.replace("_", "-"), dest="lc_" + f.name, type=typ, default=None,
                           metavar=f.name.upper(),
                           help=f"{docs.get(f.name, '')} [default: {f.default}]".replace("%", "%%"))


def config_from_args(args: argparse.Namespace) -> LearnerConfig:
    changes = {f.name: getattr(args, "lc_" + f.name) for f in fields(LearnerConfig)
               if getattr(args, "lc_" + f.name, None) is not None}
    return LearnerConfig(**changes).validate()


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {s!r} (true/false, yes/no, on/off, 1/0)")
