"""The continual-learning worker: transitions in, guarded updates, gated snapshots out.

:class:`Learner` owns networks, buffer and schedule; each new training transition owes
``updates_per_transition`` steps, paid ``max_updates_per_poll`` at a time between polls. The
Kafka side (refill, polling, intervals) is :mod:`streamrl.learner.loop`.

Checkpoint order: check weights finite (else roll back) → collect model, target, optimizer,
published policy, item table, consumed offsets and refill offsets, last published version →
write atomically. A snapshot is published only after the gate passes and the weights are
finite; the checkpoint that records its version is written right after it. At start the learner
also reads the snapshot topic, so a version published just before a crash is never reused.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from kafka.errors import KafkaError

from streamrl import metrics as M
from streamrl.config import Settings
from streamrl.errors import CheckpointError
from streamrl.learner.checkpoint import load_checkpoint, save_checkpoint
from streamrl.learner.config import LearnerConfig
from streamrl.learner.dqn import dqn_update
from streamrl.learner.drift import DriftMonitor
from streamrl.learner.evaluate import EvalReport, evaluate, gate, model_scorer, popularity_scorer
from streamrl.learner.model import ITEM_TENSORS, QNetwork, build_model, grow_optimizer
from streamrl.learner.replay import ReplayBuffer
from streamrl.learner.vocab import ItemVocab

log = logging.getLogger(__name__)

#: Seconds between evaluations of the published policy where the gate does not need them
#: (``gate_baseline`` popularity): they only feed ``streamrl_learner_eval{policy="published"}``,
#: and at a publish a second (the demo) they took a third of the gate's time.
PUBLISHED_EVAL_EVERY_S = 10.0


@dataclass
class LearnSummary:
    updates: int = 0
    ingested: int = 0
    refilled: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    published: list[int] = field(default_factory=list)
    buffer: int = 0
    holdout: int = 0
    unique_ids: int = 0

    def describe(self) -> str:
        return (f"learn updates={self.updates} ingested={self.ingested} refilled={self.refilled} "
                f"duplicates={self.duplicates} rejected={sum(self.rejected.values())} "
                f"skipped={sum(self.skipped.values())} buffer={self.buffer} holdout={self.holdout} "
                f"unique_ids={self.unique_ids} published={','.join(map(str, self.published)) or '-'}")


class Learner:
    """Owns the networks, the replay buffer and the publish/checkpoint schedule.

    Without a broker (``settings=None``) it still trains on :meth:`ingest`-ed transitions:
    that is how tests and ``bench/learner.py`` drive it.
    """

    def __init__(self, settings: Settings | None, cfg: LearnerConfig, checkpoint_dir: str | None = None,
                 catalog_text: tuple[list[str], Any] | None = None, device: str = "cpu") -> None:
        cfg.validate()
        torch.manual_seed(cfg.seed)  # seeding happens here, once
        self.settings, self.cfg, self.device = settings, cfg, torch.device(device)
        self.checkpoint_dir = checkpoint_dir or (settings.learner_dir if settings else None)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.vocab = ItemVocab(text_dim=cfg.text_dim)
        self.train_step = 0
        self.last_version = 0
        self.seen = 0                       # training transitions ever ingested (not refills)
        self.consumed: dict[int, int] = {}  # partition -> next offset to read
        self.trained_offsets: dict[int, int] = {}  # ``consumed`` as of the last gradient step
        self.refill_until: dict[int, int] = {}
        self.published: QNetwork | None = None
        self.published_eval: dict[str, Any] | None = None
        self.summary = LearnSummary()
        self.drift = DriftMonitor(cfg.drift_delta)
        self.boost_left = 0
        self.owed = 0.0
        self._stopping = False
        self._catalog_mtime = 0.0
        self._gated_step = -1
        self._published_eval_at = -float("inf")   # monotonic time of the last evaluation of the published policy
        M.precreate_learner_series()
        state = load_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        self._build(state)
        if catalog_text is not None:
            self.add_items(*catalog_text)
        self.buffer = ReplayBuffer(cfg, self.vocab)

    # --- construction and restore ------------------------------------------------------------
    def _build(self, state: dict[str, Any] | None) -> None:
        cfg = self.cfg
        if state is not None:
            shape = ("dim", "hidden", "text_dim", "history_len", "encoder")
            saved = {k: state["config"].get(k) for k in shape}
            if saved != {k: getattr(cfg, k) for k in shape}:
                raise CheckpointError(f"checkpoint in {self.checkpoint_dir} has network shape {saved}; "
                                      "start with the same --dim/--hidden/--history-len/--encoder or a new --learner-dir")
        # networks are built with the checkpoint's item rows (so its tables load as saved; the
        # vocabulary may have grown past them before the checkpoint) and grown by _attach_text
        rows = state["model"]["item_id.weight"].shape[0] if state else self.vocab.text.shape[0]
        if state is not None:
            self.vocab = ItemVocab.from_state_dict(state["vocab"], cfg.text_dim, capacity=rows)
        self.online = build_model(rows, cfg).to(self.device)
        self.target = build_model(rows, cfg).to(self.device)
        self.opt = torch.optim.Adam(self.online.parameters(), lr=cfg.lr)
        if state is None:
            self.target.load_state_dict(self.online.state_dict())
        else:
            self._load_state(state)
            self.train_step = int(state["train_step"])
            self.last_version = int(state["last_version"])
            self.seen = int(state["seen"])
            self.consumed = {int(k): int(v) for k, v in state["consumed"].items()}
            self.refill_until = dict(self.consumed)
            self._refill_from = {int(k): int(v) for k, v in state["refill"].items()}
            log.info("resumed from checkpoint: step %d, published v%d, %d items, offsets %s",
                     self.train_step, self.last_version, len(self.vocab) - 1, self.consumed)
        self._attach_text()

    def _load_state(self, state: dict[str, Any]) -> None:
        self.online.load_state_dict(state["model"])
        self.target.load_state_dict(state["target"])
        self.opt.load_state_dict(state["optimizer"])
        if state.get("published") is not None:
            self.published = build_model(self.online.n_items, self.cfg).to(self.device)
            self.published.load_state_dict(state["published"])
            self.published_eval = state.get("published_eval")

    def _attach_text(self) -> None:
        """Keep every network's item tables as large as the item table's capacity; share text."""
        rows = self.vocab.text.shape[0]
        nets = [self.online, self.target] + ([self.published] if self.published is not None else [])
        if rows > self.online.n_items:
            grow_optimizer(self.opt, self.online.grow(rows))
            for net in nets[1:]:
                net.grow(rows)
        text = self.vocab.text.to(self.device)  # shared on CPU, one copy on an accelerator
        for net in nets:
            net.attach_text(text)
        self._text_version = self.vocab.text_version
        M.LEARNER_CATALOG.set(len(self.vocab) - 1)

    def add_items(self, item_ids: list[str], text_vectors) -> None:
        """Add or update catalog items (with their text embeddings) while running."""
        self.vocab.set_text(item_ids, text_vectors)
        self._attach_text()

    # --- ingestion ---------------------------------------------------------------------------
    def ingest(self, transitions: Iterable[dict[str, Any]], partition: int = -1, offset: int = -1,
               refill: bool = False) -> int:
        """Put one message's transitions into the buffer; returns how many were new training rows."""
        rej_before, dup_before = dict(self.buffer.rejected), self.buffer.duplicates
        rewards = self.buffer.add(transitions, partition, offset)
        if self.vocab.text_version != self._text_version:
            self._attach_text()
        n_train, n_hold = len(rewards["train"]), len(rewards["holdout"])
        rejected = 0
        for reason, n in self.buffer.rejected.items():
            new = n - rej_before.get(reason, 0)
            if new:
                rejected += new
                M.LEARNER_REJECTED.labels(reason).inc(new)
                log.warning("rejected %d transitions (%s) at partition %d offset %d", new, reason, partition, offset)
        dups = self.buffer.duplicates - dup_before
        M.LEARNER_TRANSITIONS.labels("added").inc(n_train + n_hold)
        M.LEARNER_TRANSITIONS.labels("duplicate").inc(dups)
        M.LEARNER_TRANSITIONS.labels("rejected").inc(rejected)
        self.summary.duplicates += dups
        if refill:
            self.summary.refilled += n_train + n_hold
            return 0
        self.summary.ingested += n_train + n_hold
        self.seen += n_train + n_hold
        self.owed += n_train * self.cfg.updates_per_transition
        for r in rewards["train"]:  # one detector across partitions (see DriftMonitor)
            if self.drift.update("reward", r):
                self._on_drift("reward", partition, offset)
        return n_train

    def _on_drift(self, signal: str, partition: int = -1, offset: int = -1) -> None:
        M.LEARNER_DRIFT.labels(signal).inc()
        log.warning("drift detected on %s (window mean %.4f) at partition %d offset %d, version %d; response: %s",
                    signal, self.drift.get(signal), partition, offset,
                    self.last_version, self.cfg.drift_response)
        if self.cfg.drift_response == "recent":
            self.buffer.recent_share = self.cfg.drift_recent_share
            self.boost_left = self.cfg.drift_boost_updates

    # --- training ----------------------------------------------------------------------------
    def train(self, n_updates: int) -> int:
        """Apply up to ``n_updates`` guarded steps (none before ``min_buffer``); returns steps applied."""
        if len(self.buffer) < max(self.cfg.min_buffer, 1):
            return 0
        applied = 0
        for _ in range(n_updates):
            r = dqn_update(self.online, self.target, self.opt, self.buffer, self.cfg, self.train_step + 1, self.gen)
            if r.skipped is not None:
                M.LEARNER_SKIPPED.labels(r.skipped).inc()
                self.summary.skipped[r.skipped] = self.summary.skipped.get(r.skipped, 0) + 1
                log.warning("update skipped (%s, grad norm %s) at step %d", r.skipped, r.grad_norm, self.train_step)
                continue
            self.train_step += 1
            applied += 1
            if self.train_step > self.cfg.drift_warmup_updates and self.drift.update("td_error", r.td_error):
                self._on_drift("td_error")
            if self.boost_left:
                self.boost_left -= 1
                if not self.boost_left:
                    self.buffer.recent_share = 0.0
        if applied:
            self.trained_offsets = dict(self.consumed)
            M.LEARNER_UPDATES.inc(applied)
            M.LEARNER_LOSS.labels("total").set(r.loss)
            M.LEARNER_LOSS.labels("td").set(r.td_loss)
            M.LEARNER_LOSS.labels("supervised").set(r.sup_loss)
            M.LEARNER_TD_ERROR.set(r.td_error)
            M.LEARNER_Q_MEAN.set(r.q_mean)
            M.LEARNER_GRAD_NORM.set(r.grad_norm)
        self.summary.updates += applied
        return applied

    def pay_owed(self) -> int:
        n = min(int(self.owed), self.cfg.max_updates_per_poll)
        if n <= 0 or len(self.buffer) < self.cfg.min_buffer:
            return 0
        self.owed -= n
        return self.train(n)

    def weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.online.parameters())

    def rollback(self) -> None:
        """Back to the last checkpoint's networks (or a fresh start): never publish bad weights."""
        M.LEARNER_ROLLBACKS.inc()
        M.LEARNER_SKIPPED.labels("non_finite_weights").inc()
        state = load_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        log.error("non-finite weights at step %d: rolling back to %s", self.train_step,
                  "the last checkpoint" if state else "a fresh network")
        rows = state["model"]["item_id.weight"].shape[0] if state else self.online.n_items
        self.online = build_model(rows, self.cfg).to(self.device)
        self.target = build_model(rows, self.cfg).to(self.device)
        self.opt = torch.optim.Adam(self.online.parameters(), lr=self.cfg.lr)
        if state is not None:
            self.online.load_state_dict(state["model"])
            self.target.load_state_dict(state["target"])
            self.opt.load_state_dict(state["optimizer"])
        else:
            self.target.load_state_dict(self.online.state_dict())
        self._attach_text()  # grows the restored tables to today's item count

    # --- evaluation and publishing -------------------------------------------------------------
    def evaluate(self) -> dict[str, EvalReport] | None:
        """Figures of the candidate, the popularity baseline and the published policy on the held-out
        slice; the published policy's at every call where the gate compares with it, else at most
        every :data:`PUBLISHED_EVAL_EVERY_S` seconds."""
        batch = self.buffer.eval_slice(self.cfg.eval_size)
        if not len(batch) or not bool((batch.reward > 0).any()):
            return None
        batch = batch.to(self.device)
        n, seed = len(self.vocab), self.train_step
        popularity = popularity_scorer(self.buffer.popularity(n).to(self.device))
        out = {"candidate": evaluate(model_scorer(self.online), batch, n, self.cfg, seed, model=self.online),
               "popularity": evaluate(popularity, batch, n, self.cfg, seed)}
        now = time.monotonic()
        if self.published is not None and (self.cfg.gate_baseline == "published"
                                           or now - self._published_eval_at >= PUBLISHED_EVAL_EVERY_S):
            out["published"] = evaluate(model_scorer(self.published), batch, n, self.cfg, seed, model=self.published)
            self._published_eval_at = now
        for policy, rep in out.items():
            for metric in ("hr10", "ndcg10", "td_error", "snips"):
                v = getattr(rep, metric)
                if v is not None:
                    M.LEARNER_EVAL.labels(policy, metric).set(v)
        return out

    def gate_ready(self) -> bool:
        """Whether a gate has something to judge: enough transitions seen and a step since the last gate."""
        return self.seen >= self.cfg.min_transitions_to_publish and self.train_step not in (0, self._gated_step)

    def maybe_publish(self, publisher) -> int | None:
        """Run the gate; publish a snapshot when it passes. Returns the new version or None."""
        if not self.gate_ready():
            return None  # nothing to publish, or nothing new since the last gate
        if not self.weights_finite():
            self.rollback()
            return None
        self._gated_step = self.train_step
        figures = self.evaluate()
        if figures is None:
            return None
        reference = figures.get("published") if self.cfg.gate_baseline == "published" else figures["popularity"]
        ok, reason = gate(figures["candidate"], reference, self.cfg)
        M.LEARNER_GATES.labels("published" if ok else "rejected").inc()
        if not ok:
            log.info("gate rejected candidate at step %d (%s): %s vs %s %s", self.train_step, reason,
                     figures["candidate"], self.cfg.gate_baseline, reference)
            return None
        version = self.last_version + 1
        t0 = time.monotonic()
        tensors, item_ids = self.snapshot_tensors()
        meta = {"parent_version": self.last_version or None, "train_step": self.train_step,
                "created_at_ms": int(time.time() * 1000),
                "eval": {k: v.to_dict() for k, v in figures.items()} | {"gate": reason, "eval_seed": self.train_step},
                "model_config": {**self.online.cfg.to_dict(), "n_items": len(item_ids)},
                "hyperparameters": self.cfg.to_dict(), "transitions_seen": self.seen,
                # transitions partition -> next offset: every transition below it was in the buffer
                # that the last gradient step sampled from (how freshness is measured)
                "trained_offsets": {str(p): o for p, o in sorted(self.trained_offsets.items())}}
        try:
            publisher.publish(version, tensors, meta, item_ids)
        except KafkaError as e:  # the version is burned: a retry goes above any chunks already sent
            self.last_version = version
            log.error("publishing v%d failed (%s); keeping v%d published", version, e, version - 1)
            return None
        M.LEARNER_PUBLISH_SECONDS.observe(time.monotonic() - t0)
        self.last_version = version
        self.published = copy.deepcopy(self.online)
        self.published.attach_text(self.online.text)
        self.published_eval = meta["eval"]
        self.summary.published.append(version)
        M.LEARNER_VERSION.set(version)
        log.info("published v%d at step %d: HR@10 %.4f NDCG@10 %.4f (popularity HR@10 %.4f)", version,
                 self.train_step, figures["candidate"].hr10, figures["candidate"].ndcg10, figures["popularity"].hr10)
        self.checkpoint()
        return version

    def snapshot_tensors(self) -> tuple[dict[str, torch.Tensor], list[str]]:
        """The online network's weights with the item tables cut to the known items, and their ids."""
        n = len(self.vocab)
        sd = {k: v.detach().cpu() for k, v in self.online.state_dict().items()}
        for name in ITEM_TENSORS:
            sd[name] = sd[name][:n].contiguous()
        return sd, list(self.vocab.ids)

    # --- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self) -> None:
        if not self.checkpoint_dir:
            return
        if not self.weights_finite():
            self.rollback()
            return
        t0 = time.monotonic()
        state = {"train_step": self.train_step, "last_version": self.last_version, "seen": self.seen,
                 "consumed": dict(self.consumed), "refill": self.buffer.refill_offsets(self.consumed),
                 "vocab": self.vocab.state_dict(), "model": self.online.state_dict(),
                 "target": self.target.state_dict(), "optimizer": self.opt.state_dict(),
                 "published": self.published.state_dict() if self.published is not None else None,
                 "published_eval": self.published_eval, "config": self.cfg.to_dict()}
        save_checkpoint(self.checkpoint_dir, state)
        M.LEARNER_CHECKPOINT_SECONDS.observe(time.monotonic() - t0)
        log.debug("checkpoint at step %d, offsets %s, version %d", self.train_step, self.consumed, self.last_version)

    # --- catalog -------------------------------------------------------------------------------
    def refresh_catalog(self, embedder=None) -> int:
        """Load new or changed catalog items from ``settings.catalog_path`` (when the file changed)."""
        path = self.settings.catalog_path if self.settings else ""
        if not path or not os.path.exists(path):
            return 0
        mtime = os.path.getmtime(path)
        if mtime <= self._catalog_mtime:
            return 0
        from streamrl.catalog import TextEmbedder, item_text, load_catalog

        catalog = load_catalog(path)
        self._catalog_mtime = mtime
        new = [i for i in catalog if i not in self.vocab.index or not bool(self.vocab.has_text[self.vocab.index[i]])]
        if new:
            embedder = embedder or TextEmbedder(self.settings.cache_dir, self.settings.embedding_model)
            self.add_items(new, embedder.embed([item_text(catalog[i]) for i in new]))
            log.info("catalog: %d new items (now %d)", len(new), len(self.vocab) - 1)
        return len(new)

    # --- the loop ------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping = True

    def run(self, max_seconds: float | None = None, until_idle: bool = False, idle_s: float = 2.0) -> LearnSummary:
        """Consume, train, checkpoint and publish until stopped (or idle / out of time)."""
        from streamrl.learner.loop import run_learner

        return run_learner(self, max_seconds=max_seconds, until_idle=until_idle, idle_s=idle_s)

    def _set_buffer_gauges(self) -> None:
        M.LEARNER_BUFFER.labels("train").set(self.buffer.train.size)
        M.LEARNER_BUFFER.labels("holdout").set(self.buffer.holdout.size)

    def finish_summary(self) -> LearnSummary:
        s = self.summary
        s.buffer, s.holdout = self.buffer.train.size, self.buffer.holdout.size
        s.unique_ids = len(self.buffer.where)
        s.rejected = dict(self.buffer.rejected)
        return s
