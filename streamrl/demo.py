"""``streamrl demo``: the closed loop on one machine, against baselines, with a learning report.

Starts the embedded broker (unless ``--bootstrap-servers``), a SQLite state store, and as separate
processes: the event processor, the learner, the ranking service, the closed-loop simulator
(whose users are served by the ranker over HTTP) and the baseline arms (the same simulated world
served by the oracle, river, popularity and random). Shows live progress, then stops everything
and writes to the run directory:

- ``curves.jsonl`` — every arm's reward per window of events; ``reward.png`` and ``report.md``
  (the plot and the table, also ``streamrl report RUN_DIR``);
- ``summary.json`` — the figures: ``reward_vs_oracle``, ``reward_vs_popularity`` (learned reward
  per view over the last 20% of events over the baseline's, same event range),
  ``freshness_p50_s``/``freshness_p99_s``, ``drift_recovery_ratio`` and ``same_request_recovery``
  (with ``--drift-at``; :func:`streamrl.report.drift_recovery`), ...
- one log per process.

Freshness (:mod:`streamrl.freshness`): wall time from an event's production to the first moment
the simulator was served a policy version trained on its transition. The demo's rate is what the
machine leaves the closed loop; ``bench/freshness.py`` measures freshness at a fixed rate.
Drift figures: :func:`streamrl.report.drift_recovery`.

The demo shortens the event-time parts of the pipeline that real traffic spreads over minutes,
because simulated time runs hundreds of times faster than the wall clock
(:data:`DEMO_SETTINGS`, :data:`DEMO_LEARNER`); a setting given explicitly (flag or env) wins.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from streamrl.config import Settings
from streamrl.errors import StreamrlError
from streamrl.freshness import freshness
from streamrl.kafka import EmbeddedBroker, ensure_topics, free_port, signal_on_parent_death
from streamrl.producers.closed_loop import BASELINE_ARMS, CURVES, PRODUCED, SERVED, read_status
from streamrl.producers.simulator import SimConfig
from streamrl.report import (ARM_ORDER, UNLEARNED_AT_DRIFT, drift_recovery, load_curves, markdown_table,
                             render_run, window_rate)

log = logging.getLogger(__name__)

#: Settings the demo changes from their defaults (unless given by flag or environment):
#: simulated time runs ~100-500x faster than wall time, so event-time windows shrink with it.
DEMO_SETTINGS: dict[str, Any] = {
    "attribution_window_ms": 5 * 60 * 1000,  # 5 simulated minutes: ~95% of purchases still join
    "idle_timeout_ms": 1000,                 # a quiet purchase partition holds windows back 1 s at most
    "commit_interval_ms": 250,               # transitions reach the learner within ~0.25 s
    "serve_epsilon": 0.05,
    # the simulated feed client sends ``recent``: the ranker's layer learns a view's outcome from the
    # user's next request, not ~3.4k events later from the transitions topic (see README, drift)
    "serve_feedback_source": "session",
}

#: Learner flags of the demo: publish often (freshness), start early, poll between short bursts.
DEMO_LEARNER: dict[str, Any] = {
    # a small, order-free state encoder ranked by Q alone: in a young loop (a few thousand rewarded
    # transitions) the GRU and the supervised next-item head overfit; this holds up best (see README).
    # sup-weight 0 drops the SQN head's loss: on the same simulated stream it raised the learned
    # arm's late reward/view from 0.082 to 0.124-0.130 (the head learns "what was clicked next"
    # under the logging policy, which ranks against Q's value)
    # history-len 20 (all the processor keeps) rather than 10: the mean of more engaged items reads a
    # user's interests sooner (bench/learning.py, 500k events, seeds 0/1/2: learned/oracle over the
    # 50k-event windows from 100k to 400k higher by 0.035 on average, paired (se 0.008, windows
    # correlated); the last 20% within noise, 0.853/0.807/0.789 against 0.836/0.799/0.809; 30 items
    # did no better)
    "encoder": "mean", "dim": 32, "hidden": 32, "history-len": 20, "q-weight": 20.0, "sup-weight": 0.0,
    # a purchase is worth 5: with the default Huber threshold of 1 its TD error counts no more
    # than a click's, so the learner barely learns which items sell (bench/learning.py: 0.12 -> 0.18)
    "huber-delta": 5.0,
    # ... and the gate then counts purchases as the loss does: judged on clicks alone, such a learner
    # trails popularity's HR@10 in the first minute and versions wait (freshness p99 4.9-8.4 s)
    "eval-reward-weighted": True,
    # positive-share 0.25 (the learner's default; the demo had 0.1): bench/learning.py at 300k events,
    # seeds 0/1/2: 0.756/0.789/0.639 of the oracle against 0.732/0.752/0.604
    "lr": 0.001, "positive-share": 0.25, "id-l2": 1.0, "capacity": 300_000,
    # beta 0: no importance weights on prioritized and positive-share sampling, so the loss weighs
    # the batch as drawn (a quarter rewarded, high |TD| first); the learner's default 0.4 gave back
    # weight the ranking needs from the rare rewarded transitions. bench/learning.py, 250k events,
    # seeds 0-11: learned/oracle over the last 20% 0.746 against 0.700 (paired +0.046, se 0.013;
    # 0.2: +0.042, se 0.016)
    "beta": 0.0,
    "gate-baseline": "popularity", "gate-tolerance": 0.1,  # the published policy logged the held-out data itself
    # a young stream gives the gate a few dozen rewarded held-out actions: reject on evidence only,
    # not on a 0.2 shortfall in 30 coin flips (versions waited 10-15 s on such rejections)
    "gate-z": 2.0,
    "publish-interval-s": 1.0,
    "min-transitions-to-publish": 3000,
    "min-buffer": 1000,
    "max-updates-per-poll": 4,
    "updates-per-transition": 0.01,  # ~10 steps per 1000 events: more overfits the young buffer
    "checkpoint-interval-s": 30.0,
}

ROLES = ("processor", "learner", "ranker", "simulator", "baselines")

#: Shortest closed loop of a default run, however long start-up took.
MIN_LOOP_S = 30.0

#: What a run leaves in its directory that a new run must not pick up.
PREVIOUS_RUN = ("learner", "state.db", CURVES, "summary.json")


@dataclass
class DemoConfig:
    events: int = 1_000_000
    """Event budget of each arm (the default is more than 2-3 minutes give on 2 cores: the duration decides)."""
    duration_s: float | None = None
    """Longest the closed loop runs (wall seconds); the demo ends at whichever comes first. None:
    what ``wall_budget_s`` leaves once the pipeline is up (less ``finish_reserve_s``)."""
    wall_budget_s: float = 170.0
    """Wall time of the whole run, start to summary, when ``duration_s`` is None: the closed loop
    gets what start-up (broker, catalog embedding, torch imports) leaves of it, so the demo stays
    under 3 minutes on a slow machine and learns for longer where start-up is quick."""
    finish_reserve_s: float = 15.0
    """Wall seconds kept, within ``wall_budget_s``, for the baselines to catch up, every process to
    stop and the report to be drawn (5-8 s on 2 cores)."""
    rate: float = 0.0
    """Events per second the closed loop may produce at most (0: as fast as the ranker serves)."""
    arms: tuple[str, ...] = BASELINE_ARMS
    window: int = 2000
    """Events per curve point."""
    progress_every_s: float = 5.0
    simulator_nice: int = 5
    """Niceness of the closed-loop simulator: the learner gets CPU first, the event rate adapts."""
    learner_args: dict[str, Any] = field(default_factory=lambda: dict(DEMO_LEARNER))


def demo_settings(settings: Settings, run_dir: Path, explicit: set[str]) -> Settings:
    """``settings`` with the demo's defaults for what the user did not set, and the run's paths."""
    changes = {k: v for k, v in DEMO_SETTINGS.items() if k not in explicit}
    if "state_store" not in explicit:
        changes["state_store"] = f"sqlite:///{run_dir / 'state.db'}"
    changes["catalog_path"] = str(run_dir / "catalog.jsonl")
    changes["learner_dir"] = str(run_dir / "learner")
    return settings.replace(**changes)


def explicit_settings(argv_flags: set[str]) -> set[str]:
    """Setting names given on the command line or as ``STREAMRL_*`` variables."""
    names = {f.name for f in fields(Settings)}
    env = {k[len("STREAMRL_"):].lower() for k in os.environ if k.startswith("STREAMRL_")}
    return (env | argv_flags) & names


def scrape(port: int, names: tuple[str, ...]) -> dict[str, float]:
    """Sum of each named metric (all label sets) on a local /metrics endpoint; {} when unreachable."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in names:
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


# --- processes -------------------------------------------------------------------------------

def _child_setup(nice: int) -> None:  # runs in a child between fork and exec
    # a demo that dies without stopping its processes (kill -9, an OOM kill) still stops them: each
    # gets the SIGTERM that Children.stop would have sent (else the simulator and the processor
    # ran on, retrying the broker that died with the demo)
    signal_on_parent_death(signal.SIGTERM)
    if nice:
        os.nice(nice)


class Children:
    """The demo's processes: started with their own log, stopped with SIGTERM (then SIGKILL),
    and sent SIGTERM by the kernel if the demo dies first."""

    def __init__(self, run_dir: Path, env: dict[str, str]) -> None:
        self.run_dir, self.env = run_dir, env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, role: str, args: list[str], extra_env: dict[str, str] | None = None,
              nice: int = 0) -> subprocess.Popen:
        with open(self.run_dir / f"{role}.log", "w") as logf:
            p = subprocess.Popen([sys.executable, "-m", "streamrl.cli", *args], env={**self.env, **(extra_env or {})},
                                 stdout=logf, stderr=subprocess.STDOUT, preexec_fn=lambda: _child_setup(nice))
        self.procs[role] = p
        return p

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) each role's process tree has used so far (Linux /proc)."""
        ticks = os.sysconf("SC_CLK_TCK")
        parent, used = {}, {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        fields_ = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parent[int(d)] = int(fields_[1])
                used[int(d)] = (int(fields_[11]) + int(fields_[12])) / ticks
        out = {}
        for role, p in self.procs.items():
            tree, todo = set(), [p.pid]
            while todo:
                pid = todo.pop()
                tree.add(pid)
                todo.extend(c for c, pp in parent.items() if pp == pid and c not in tree)
            out[role] = round(sum(used.get(pid, 0.0) for pid in tree), 1)
        return out

    def failed(self) -> list[str]:
        return [r for r, p in self.procs.items() if p.poll() not in (None, 0)]

    def stop(self, roles: list[str] | None = None, timeout_s: float = 20.0) -> None:
        roles = [r for r in (roles or list(self.procs)) if r in self.procs]
        for r in roles:
            if self.procs[r].poll() is None:
                self.procs[r].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for r in roles:
            try:
                self.procs[r].wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs: killed", r, timeout_s)
                self.procs[r].kill()
                self.procs[r].wait()


def _progress_line(elapsed: float, status: dict | None, arms: dict[str, list[dict]], metrics: dict[str, float],
                   window_events: int = 10_000) -> str:
    st = status or {}
    parts = [f"[demo {elapsed:4.0f}s] events {st.get('events', 0):>7,} ({st.get('events_per_s', 0):,.0f}/s)",
             f"transitions {int(metrics.get('streamrl_processor_transitions_total', 0)):>7,}",
             f"updates {int(metrics.get('streamrl_learner_updates_total', 0)):>5,}",
             f"policy v{st.get('policy_version') or '-'}{'' if st.get('live') else ' (random until ready)'}"]
    rates = []
    for arm in sorted(arms, key=lambda a: ARM_ORDER.index(a) if a in ARM_ORDER else 99):
        rows = arms[arm]
        if rows:
            end = rows[-1]["events"]
            rates.append(f"{arm} {window_rate(rows, end - window_events, end):.3f}")
    if rates:
        parts.append("reward/view " + " ".join(rates))
    learned = arms.get("learned")
    if learned:
        recent = [r for r in learned if r["events"] > learned[-1]["events"] - window_events]
        views = sum(r["views"] for r in recent)
        if views:
            parts.append(f"CTR {sum(r['clicks'] for r in recent) / views:.3f}")
    return " | ".join(parts)


def loop_duration(demo: DemoConfig, up_s: float) -> float:
    """Seconds the closed loop may run, the pipeline having taken ``up_s`` to come up.

    >>> loop_duration(DemoConfig(), 5.0), loop_duration(DemoConfig(duration_s=60.0), 5.0)
    (150.0, 60.0)
    >>> loop_duration(DemoConfig(), 200.0)  # start-up ate the budget: still a short loop
    30.0
    """
    if demo.duration_s is not None:
        return demo.duration_s
    return max(MIN_LOOP_S, demo.wall_budget_s - demo.finish_reserve_s - up_s)


def _stop_on_signals() -> Callable[[], None]:
    """Ctrl-C (SIGINT) and SIGTERM (``kill``, a supervisor, ``timeout``) stop the run: every
    process stopped, the summary of what ran written. SIGINT is handled even where it was
    inherited ignored (a shell's background job), as the children handle it. A second signal
    cuts the stopping short; the children still stop, sent SIGTERM by the kernel when the demo
    exits. Returns what restores the previous handlers. Only the main thread can take signals;
    elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def run_demo(settings: Settings, cfg: SimConfig, run_dir: Path, demo: DemoConfig | None = None,
             explicit: set[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """The whole run; returns the summary (also ``run_dir/summary.json``, ``report.md``, ``reward.png``)."""
    demo = demo or DemoConfig()
    run_dir = run_dir.resolve()
    # a run's learner checkpoint, user state and curves belong to the broker it ran against: a
    # second run on top of them would resume a learner at offsets of a broker that is gone
    left = sorted(p.name for p in (run_dir / n for n in PREVIOUS_RUN) if p.exists())
    if left:
        raise StreamrlError(f"{run_dir} holds a previous run ({', '.join(left)}): "
                            "give a new --run-dir or remove that one")
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    settings = demo_settings(settings, run_dir, explicit or set())
    broker = None
    if not settings.bootstrap_servers:
        broker = EmbeddedBroker().start()
        settings = settings.replace(bootstrap_servers=broker.bootstrap_servers)
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    restore = _stop_on_signals()
    try:
        return _run(settings, cfg, run_dir, demo, say, started)
    finally:
        restore()
        if broker is not None:
            broker.stop()


def _run(settings: Settings, cfg: SimConfig, run_dir: Path, demo: DemoConfig, say: Callable[[str], None],
         started: float) -> dict[str, Any]:
    """Start the pipeline, run the closed loop and the baselines, stop them all, then the figures."""
    children = None
    interrupted = False
    cpu: dict[str, float] = {}
    try:
        ensure_topics(settings)
        embed_catalog(settings, cfg, say)
        children, settings, ports = start_pipeline(settings, run_dir, demo.learner_args)
        ranker_port = settings.serve_port
        sim_args = ["--users", str(cfg.n_users), "--items", str(cfg.n_items), "--seed", str(cfg.seed)]
        sim_args += ["--drift-at", ",".join(map(str, cfg.drift_at))] if cfg.drift_at else []
        if demo.arms:  # they keep pace with the closed loop; niced, they take what the loop leaves
            children.start("baselines", ["baselines", *sim_args, "--events", str(demo.events), "--run-dir", str(run_dir),
                                         "--arms", ",".join(demo.arms), "--follow"], {"STREAMRL_METRICS_PORT": "-2"},
                           nice=10)
        # simulated users arrive once the ranker is up and the learner has its catalog (it then
        # consumes): the random warm-up before the first snapshot lasts only as long as the learner
        # needs, not as long as torch takes to import; every second of it is thousands of events
        # of random slates, and the learned arm's world starts behind (docs/demo-findings.md)
        wait_listening({"learner": ports["learner"], "ranker": ranker_port}, children, timeout_s=120)
        _wait_metric(ports["learner"], "streamrl_learner_items", "learner", children, timeout_s=120)
        up_s = time.monotonic() - started
        duration_s = loop_duration(demo, up_s)
        say(f"[demo] learner and ranker up after {up_s:.0f}s: simulated users arrive")
        children.start("simulator", ["simulate", *sim_args, "--events", str(demo.events),
                                     "--ranker-url", f"http://127.0.0.1:{ranker_port}", "--run-dir", str(run_dir),
                                     "--max-seconds", f"{duration_s:.1f}", "--rate", str(demo.rate)],
                       {"STREAMRL_METRICS_PORT": "-2"}, nice=demo.simulator_nice)
        say(f"[demo] broker {settings.bootstrap_servers}; ranker http://127.0.0.1:{ranker_port}; "
            f"{cfg.n_users} users, {cfg.n_items} items; up to {demo.events:,} events or {duration_s:.0f}s"
            f"{'' if demo.duration_s is not None else f' (what start-up left of {demo.wall_budget_s:.0f}s)'}; "
            f"logs in {run_dir}")
        last = 0.0
        while True:
            time.sleep(0.5)
            failed = children.failed()
            if failed:
                raise RuntimeError(f"{', '.join(failed)} exited with an error; see "
                                   + ", ".join(str(run_dir / f'{r}.log') for r in failed))
            sim_done = children.procs["simulator"].poll() is not None
            arms_done = "baselines" not in children.procs or children.procs["baselines"].poll() is not None
            if time.monotonic() - last >= demo.progress_every_s or (sim_done and arms_done):
                last = time.monotonic()
                cpu = {r: max(c, cpu.get(r, 0.0)) for r, c in children.cpu_seconds().items()}
                metrics = {**scrape(ports["processor"], ("streamrl_processor_transitions_total",)),
                           **scrape(ports["learner"], ("streamrl_learner_updates_total",))}
                arms = load_curves(run_dir / CURVES) if (run_dir / CURVES).exists() else {}
                say(_progress_line(time.monotonic() - started, read_status(run_dir), arms, metrics))
            if sim_done and arms_done:
                break
    except KeyboardInterrupt:
        interrupted = True
        say("[demo] interrupted: stopping every process")
    finally:
        if children is not None:
            cpu = {r: max(c, cpu.get(r, 0.0)) for r, c in children.cpu_seconds().items()}
            (run_dir / "cpu_seconds.json").write_text(json.dumps(cpu))
            say("[demo] CPU seconds by process: " + ", ".join(f"{r} {c:.0f}" for r, c in cpu.items()))
            children.stop(["simulator", "baselines"])
            children.stop()
    return _figures(settings, cfg, run_dir, time.monotonic() - started, interrupted)


def start_pipeline(settings: Settings, run_dir: Path, learner_args: dict[str, Any],
                   ) -> tuple[Children, Settings, dict[str, int]]:
    """Start the processor, the learner (``learner_args`` as flags) and the ranker as processes.

    Returns their :class:`Children`, ``settings`` with the ranker's ``serve_port``, and the
    metrics ports (``processor``, ``learner``, ``ranker_metrics``); the ranker listens on
    ``serve_port``. A failed start stops whatever had started."""
    ports = {"processor": free_port(), "learner": free_port(), "ranker_metrics": free_port()}
    settings = settings.replace(serve_port=free_port())
    children = Children(run_dir, {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"})
    try:
        children.start("processor", ["process"], {"STREAMRL_METRICS_PORT": str(ports["processor"])})
        children.start("learner", ["learn", *[a for k, v in learner_args.items() for a in (f"--{k}", str(v))]],
                       {"STREAMRL_METRICS_PORT": str(ports["learner"]), "OMP_NUM_THREADS": "1"})
        children.start("ranker", ["serve"], {"STREAMRL_METRICS_PORT": str(ports["ranker_metrics"]),
                                             "OMP_NUM_THREADS": "1"})
    except BaseException:
        children.stop()
        raise
    return children, settings, ports


def wait_listening(ports: dict[str, int], children: Children, timeout_s: float) -> None:
    """Until every named process accepts TCP connections on its port (or one of them has died)."""
    waiting = dict(ports)

    def listening() -> bool:
        for role, port in list(waiting.items()):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                del waiting[role]
            except OSError:
                pass
        return not waiting

    _wait_for(listening, lambda: f"{', '.join(waiting)} not listening", children, timeout_s, every_s=0.25)


def _wait_metric(port: int, name: str, role: str, children: Children, timeout_s: float) -> None:
    """Until the metric ``name`` on a process's /metrics endpoint is above zero (or it has died)."""
    _wait_for(lambda: scrape(port, (name,)).get(name, 0.0) > 0, lambda: f"{role} not ready ({name} still 0)",
              children, timeout_s, every_s=0.1)


def _wait_for(done: Callable[[], bool], what: Callable[[], str], children: Children, timeout_s: float,
              every_s: float) -> None:
    """Poll ``done`` every ``every_s`` until it holds; raise when a child has died or after
    ``timeout_s`` (the message: ``what()``)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        failed = children.failed()
        if failed:
            raise RuntimeError(f"{', '.join(failed)} exited during start-up; see its log in {children.run_dir}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what()} after {timeout_s:.0f}s; see the logs in {children.run_dir}")
        time.sleep(every_s)


def embed_catalog(settings: Settings, cfg: SimConfig, say) -> None:
    """Write the simulated catalog and embed it once, so learner and ranker start from the cache
    (used by the demo and bench/freshness.py)."""
    from streamrl.catalog import TextEmbedder, item_text, write_catalog
    from streamrl.producers.simulator import Simulator

    items = Simulator(cfg).catalog_items()
    write_catalog(settings.catalog_path, items)
    t0 = time.monotonic()
    TextEmbedder(settings.cache_dir, settings.embedding_model).embed([item_text(i) for i in items])
    say(f"[demo] catalog of {len(items)} items embedded ({time.monotonic() - t0:.1f}s, cache {settings.cache_dir})")


def _newest_served(run_dir: Path) -> int | None:
    try:
        return max((int(v) for v in json.loads((run_dir / SERVED).read_text())), default=None)
    except (OSError, ValueError):
        return None


def _figures(settings: Settings, cfg: SimConfig, run_dir: Path, seconds: float, interrupted: bool) -> dict[str, Any]:
    status = read_status(run_dir) or {}
    figures: dict[str, Any] = {"events": status.get("events", 0), "seconds": round(seconds, 1),
                               "closed_loop_events_per_s": status.get("events_per_s"),
                               "policy_version": _newest_served(run_dir) or status.get("policy_version"),
                               "ranker_failures": status.get("ranker_failures"),
                               "warmup_events": status.get("warmup_events"), "users": cfg.n_users,
                               "items": cfg.n_items, "seed": cfg.seed, "interrupted": interrupted}
    if cfg.drift_at:
        figures["drift_at"] = list(cfg.drift_at)
    if (run_dir / PRODUCED).exists() and (run_dir / SERVED).exists():
        figures.update(freshness(settings, run_dir, cfg.seed))
    if (run_dir / CURVES).exists():
        arms = load_curves(run_dir / CURVES)
        if cfg.drift_at:
            figures.update(drift_recovery(arms, cfg.drift_at[0]))
        (run_dir / "figures.json").write_text(json.dumps(figures, indent=2))
        summary = render_run(run_dir)
    else:
        summary = dict(figures, arms={})
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


KEY_FIGURES = ("reward_vs_oracle", "reward_vs_popularity", "freshness_p50_s", "freshness_p99_s",
               "drift_recovery_ratio")


def render(summary: dict[str, Any], run_dir: Path) -> str:
    lines = ["", "streamrl demo", "-------------", markdown_table(summary), ""]
    for k in KEY_FIGURES + ("events", "closed_loop_events_per_s", "warmup_events", "policy_version", "freshness_samples",
                            "freshness_unserved", "transition_lag_p50_s", "transition_lag_p99_s",
                            "pre_drift_oracle_ratio", "post_drift_oracle_ratio", "drift_recovered_after_events",
                            "pre_drift_vs_random", "drift_recovery_by_arm", "same_request_pre", "same_request_post",
                            "same_request_recovery", "seconds"):
        if k in summary:
            v = summary[k]
            lines.append(f"{k:>30}: {'n/a' if v is None or (isinstance(v, float) and math.isnan(v)) else v}")
    if (summary.get("pre_drift_vs_random") or math.inf) < UNLEARNED_AT_DRIFT:
        lines.append(f"{'note':>30}: at the drift the learned arm earned < {UNLEARNED_AT_DRIFT}x random's reward: it had "
                     "not learned yet, so drift_recovery_ratio says little; use a later --drift-at")
    lines.append(f"{'plot':>30}: {run_dir / 'reward.png'}")
    return "\n".join(lines)
