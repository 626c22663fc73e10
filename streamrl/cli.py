"""The ``streamrl`` command: one entrypoint per role.

Each subcommand is a small ``_cmd_<name>(args)`` that builds :class:`Settings` and hands over
to the component; the parser entries below document every flag (``streamrl <cmd> --help``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from streamrl.config import KAFKA_FLAGS, Settings, add_settings_args, settings_from_args
from streamrl.errors import StreamrlError

log = logging.getLogger("streamrl")

PROCESS_FLAGS = KAFKA_FLAGS + [
    "group_id", "session_timeout_ms", "heartbeat_interval_ms", "state_store", "state_namespace",
    "attribution_window_ms", "reward_view", "reward_click", "reward_purchase", "history_len",
    "interest_half_life_ms", "max_lateness_ms", "idle_timeout_ms", "dedupe_window_ms",
    "max_event_bytes", "max_id_bytes", "max_future_ms", "commit_interval_ms", "poll_max_records",
    "user_cache_size", "catalog_path", "embedding_model", "cache_dir", "max_request_bytes",
]


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)  # kafka-python logs every reconnect at INFO/ERROR


def stop_on_signals(stopper) -> None:
    """SIGTERM/SIGINT only ask the loop to stop; the loop finishes its checkpoint."""
    def handler(signum, frame):
        log.info("signal %d: stopping after the current batch", signum)
        stopper()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# --- subcommands ----------------------------------------------------------------------------

def _cmd_broker(args: argparse.Namespace) -> int:
    from streamrl.kafka import EmbeddedBroker, ensure_topics

    broker = EmbeddedBroker(port=args.port).start()
    settings = settings_from_args(args, bootstrap_servers=broker.bootstrap_servers)
    ensure_topics(settings)
    print(f"embedded Kafka broker at {broker.bootstrap_servers} "
          f"(topics created with prefix {settings.topic_prefix!r}, {settings.partitions} partitions); Ctrl-C stops it",
          flush=True)
    stopping = []
    stop_on_signals(lambda: stopping.append(1))
    while not stopping and broker.proc is not None and broker.proc.poll() is None:
        time.sleep(0.2)
    broker.stop()
    return 0


def _cmd_topics(args: argparse.Namespace) -> int:
    from streamrl.kafka import ensure_topics

    for name in ensure_topics(settings_from_args(args)):
        print(name)
    return 0


def _cmd_process(args: argparse.Namespace) -> int:
    from streamrl.consumers.processor import EventProcessor
    from streamrl.metrics import serve

    settings = settings_from_args(args)
    serve(settings.metrics_port, default=9401)
    proc = EventProcessor(settings)
    stop_on_signals(proc.stop)
    summary = proc.run(until_idle=args.until_idle, max_seconds=args.max_seconds)
    print(summary.describe(), flush=True)
    return 0


SERVE_FLAGS = KAFKA_FLAGS + [
    "state_store", "state_namespace", "history_len", "catalog_path", "embedding_model", "cache_dir",
    "max_id_bytes", "max_request_bytes", "serve_host", "serve_port", "serve_workers", "serve_token", "serve_exploration",
    "serve_epsilon", "serve_temperature", "serve_softmax_pool", "serve_feedback_weight", "serve_feedback_source", "serve_feedback_hold", "serve_feedback_lr", "serve_feedback_decay", "serve_feedback_diversity",
    "serve_feedback_dim", "serve_batch_wait_ms", "serve_max_candidates", "serve_max_k", "serve_max_body_bytes", "snapshot_dir",
]


def _cmd_serve(args: argparse.Namespace) -> int:
    from streamrl.serving.server import run_server

    run_server(settings_from_args(args))
    return 0


def _int_list(text: str) -> list[int]:
    """``--drift-at 1000,5000`` -> ``[1000, 5000]``."""
    return [int(x) for x in text.split(",") if x.strip()]


def _sim_config(args: argparse.Namespace) -> "SimConfig":
    from streamrl.producers.simulator import SimConfig

    return SimConfig(n_users=args.users, n_items=args.items, seed=args.seed,
                     policy=getattr(args, "policy", "random"),
                     drift_at=sorted(n for chunk in args.drift_at or [] for n in chunk))


def _add_world_args(parser: argparse.ArgumentParser, users: int = 2000) -> None:
    """The simulated world's flags (shared by simulate, baselines and demo: same world, same flags)."""
    parser.add_argument("--users", type=int, default=users, help=f"simulated users [default: {users}]")
    parser.add_argument("--items", type=int, default=1000, help="catalog items [default: 1000]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole world and stream [default: 0]")
    parser.add_argument("--drift-at", type=_int_list, action="append", metavar="N[,N...]",
                        help="event counts at which every user's interests drift (repeatable or comma list)")


def _cmd_simulate(args: argparse.Namespace) -> int:
    import json
    import threading

    from streamrl.metrics import serve
    from streamrl.producers.simulator import run_simulate

    settings = settings_from_args(args)
    serve(settings.metrics_port, default=9404)
    cfg = _sim_config(args)
    if args.ranker_url:
        from streamrl.producers.closed_loop import run_closed_loop

        if not args.run_dir:
            raise SystemExit("--ranker-url needs --run-dir (where the closed loop records its figures)")
        if args.concurrency < 1:
            raise SystemExit("--concurrency must be >= 1")
        stop = threading.Event()
        stop_on_signals(stop.set)
        summary = run_closed_loop(settings, cfg, args.events, args.ranker_url, args.run_dir,
                                  max_seconds=args.max_seconds, rate=args.rate, stop=stop,
                                  concurrency=args.concurrency)
    else:
        summary = run_simulate(settings, cfg, args.events, out_path=args.out, catalog_out=args.catalog_out)
    print(json.dumps(summary), flush=True)
    return 0


def _cmd_baselines(args: argparse.Namespace) -> int:
    import json
    import threading

    from streamrl.producers.closed_loop import run_arms

    settings = settings_from_args(args)
    stop = threading.Event()
    stop_on_signals(stop.set)
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    counts = run_arms(settings, _sim_config(args), args.events, args.run_dir, arms=arms, follow=args.follow, stop=stop)
    print(json.dumps(counts), flush=True)
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    import json
    import threading

    from streamrl.metrics import serve
    from streamrl.producers.replay import run_replay

    settings = settings_from_args(args)
    serve(settings.metrics_port, default=9404)
    stop = threading.Event()
    stop_on_signals(stop.set)
    summary = run_replay(settings, args.file, speed=args.speed, stop=stop)
    print(json.dumps(summary), flush=True)
    return 0


LEARN_FLAGS = KAFKA_FLAGS + ["catalog_path", "embedding_model", "cache_dir", "max_request_bytes",
                             "poll_max_records", "learner_dir"]


def _cmd_learn(args: argparse.Namespace) -> int:
    from streamrl.learner.config import config_from_args
    from streamrl.learner.worker import Learner
    from streamrl.metrics import serve

    settings = settings_from_args(args)
    serve(settings.metrics_port, default=9402)
    learner = Learner(settings, config_from_args(args), device=args.device)
    stop_on_signals(learner.stop)
    summary = learner.run(max_seconds=args.max_seconds, until_idle=args.until_idle)
    print(summary.describe(), flush=True)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import json
    from dataclasses import fields
    from pathlib import Path

    from streamrl.demo import DemoConfig, explicit_settings, render, run_demo

    settings = settings_from_args(args)
    run_dir = Path(args.run_dir or time.strftime("runs/demo-%Y%m%d-%H%M%S"))
    given = {f.name for f in fields(Settings) if getattr(args, f.name, None) is not None}
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    demo = DemoConfig(events=args.events, duration_s=args.duration, rate=args.rate, arms=arms)
    summary = run_demo(settings, _sim_config(args), run_dir, demo, explicit=explicit_settings(given),
                       progress=not args.quiet)
    print(json.dumps(summary) if args.json else render(summary, run_dir), flush=True)
    print(f"[demo] run directory: {run_dir} (report.md, reward.png, summary.json, one log per process)",
          file=sys.stderr)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from streamrl.report import markdown_table, render_run

    summary = render_run(args.run_dir)
    print(markdown_table(summary))
    print(f"[report] {args.run_dir}/report.md and {args.run_dir}/reward.png written", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrl", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu) and create the topics")
    b.add_argument("--port", type=int, default=9092, help="listen port on 127.0.0.1 (0: a free port) [default: 9092]")
    add_settings_args(b, ["topic_prefix", "partitions", "log_level"])
    b.set_defaults(func=_cmd_broker)

    t = sub.add_parser("topics", help="create the project's topics on --bootstrap-servers (idempotent)")
    add_settings_args(t, KAFKA_FLAGS + ["replication_factor"])
    t.set_defaults(func=_cmd_topics)

    pr = sub.add_parser("process", help="event processor: validate, user state, reward join, transitions")
    pr.add_argument("--until-idle", action="store_true",
                    help="drain: exit once every assigned partition is caught up and idle, closing all open joins (end of stream)")
    pr.add_argument("--max-seconds", type=float, default=None, help="stop after this many seconds")
    add_settings_args(pr, PROCESS_FLAGS)
    pr.set_defaults(func=_cmd_process)

    sm = sub.add_parser("simulate", help="simulated users: write the catalog, produce view/click/purchase events "
                        "(open loop with a built-in policy, or closed loop against a ranker with --ranker-url)")
    sm.add_argument("--events", type=int, default=100_000, help="events to produce [default: 100000]")
    _add_world_args(sm)
    sm.add_argument("--policy", choices=("random", "popularity"), default="random",
                    help="built-in feed policy serving the slates (open loop) [default: random]")
    sm.add_argument("--out", default=None, metavar="PATH",
                    help="write events to this JSONL file instead of Kafka")
    sm.add_argument("--catalog-out", default=None, metavar="PATH",
                    help="write the item catalog (JSONL) here [default: --catalog-path, else not written]")
    sm.add_argument("--ranker-url", default=None, metavar="URL",
                    help="closed loop: ask this ranking service for every slate (random slates until it is ready); "
                         "needs --run-dir")
    sm.add_argument("--run-dir", default=None, metavar="DIR",
                    help="closed loop: where curves.jsonl, loop.json (status), produced_wall.npy and served_at.json go")
    sm.add_argument("--max-seconds", type=float, default=None, help="closed loop: stop after this many seconds")
    sm.add_argument("--rate", type=float, default=0.0,
                    help="closed loop: most events per second (0: as fast as the ranker serves) [default: 0]")
    sm.add_argument("--concurrency", type=int, default=8,
                    help="closed loop: slate requests in flight at once, each on its own connection, as a "
                         "service's many clients send them (1: one at a time) [default: 8]")
    add_settings_args(sm, KAFKA_FLAGS + ["catalog_path", "max_request_bytes", "serve_token",
                                         "reward_view", "reward_click", "reward_purchase"])
    sm.set_defaults(func=_cmd_simulate)

    bl = sub.add_parser("baselines", help="baseline arms (oracle, river, popularity, random) on in-process copies "
                        "of the simulated world; reward curves to RUN_DIR/curves.jsonl")
    bl.add_argument("--events", type=int, default=100_000, help="events per arm [default: 100000]")
    _add_world_args(bl)
    bl.add_argument("--arms", default=",".join(("oracle", "river", "popularity", "random")),
                    help="comma list of arms [default: oracle,river,popularity,random]")
    bl.add_argument("--run-dir", required=True, metavar="DIR", help="where curves.jsonl goes")
    bl.add_argument("--follow", action="store_true",
                    help="keep pace with the closed loop's RUN_DIR/loop.json and end at its final event count")
    add_settings_args(bl, ["reward_view", "reward_click", "reward_purchase", "log_level"])
    bl.set_defaults(func=_cmd_baselines)

    rp = sub.add_parser("replay", help="replay an event log (JSONL or RetailRocket CSV) into Kafka in event-time order")
    rp.add_argument("file", metavar="FILE", help="event log: .jsonl (event contract) or RetailRocket events.csv")
    rp.add_argument("--speed", type=float, default=None,
                    help="pace at N x real (event) time [default: as fast as possible]")
    add_settings_args(rp, KAFKA_FLAGS + ["catalog_path", "max_request_bytes"])
    rp.set_defaults(func=_cmd_replay)

    dm = sub.add_parser("demo", help="the closed loop on one machine: broker, processor, learner, ranker and "
                        "simulated users as processes, against baselines; live progress, report and plot")
    dm.add_argument("--events", type=int, default=1_000_000,
                    help="event budget of each arm [default: 1000000, more than --duration allows on 2 cores]")
    dm.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                    help="longest the closed loop runs; the demo ends at the event budget or this, whichever is "
                         "first [default: what start-up leaves of a 170 s run, less 15 s to stop and report: "
                         "~150 s, so the whole demo stays under 3 minutes]")
    _add_world_args(dm, users=500)
    dm.add_argument("--rate", type=float, default=0.0,
                    help="most events per second of the closed loop (0: as fast as the ranker serves) [default: 0]")
    dm.add_argument("--arms", default="oracle,river,popularity,random",
                    help="baseline arms, comma list ('' for none) [default: oracle,river,popularity,random]")
    dm.add_argument("--run-dir", default=None, help="where the run's files go [default: runs/demo-<time>]")
    dm.add_argument("--json", action="store_true",
                    help="print the summary as one JSON object (reward_vs_oracle, reward_vs_popularity, freshness_p50_s, "
                         "freshness_p99_s; with --drift-at also drift_recovery_ratio and same_request_recovery; "
                         "the README's demo section lists every key)")
    dm.add_argument("--quiet", action="store_true", help="no live progress on stderr")
    add_settings_args(dm, KAFKA_FLAGS + ["attribution_window_ms", "idle_timeout_ms", "commit_interval_ms",
                                         "history_len", "reward_view", "reward_click", "reward_purchase",
                                         "state_store", "cache_dir", "serve_exploration", "serve_epsilon",
                                         "serve_temperature", "serve_token"])
    dm.set_defaults(func=_cmd_demo)

    sv = sub.add_parser("serve", help="ranking service: POST /rank with the newest verified policy snapshot")
    add_settings_args(sv, SERVE_FLAGS)
    sv.set_defaults(func=_cmd_serve)

    rep = sub.add_parser("report", help="render a run's recorded figures as report.md (table) and reward.png (plot)")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with curves.jsonl (from `streamrl demo`)")
    rep.set_defaults(func=_cmd_report)

    from streamrl.learner.config import add_learner_args

    ln = sub.add_parser("learn", help="continual learner: replay buffer, Double-DQN + SQN head, gated snapshots")
    ln.add_argument("--until-idle", action="store_true",
                    help="exit once the transitions topic is drained and owed updates are done (after a last gate)")
    ln.add_argument("--max-seconds", type=float, default=None, help="stop after this many seconds")
    ln.add_argument("--device", default="cpu", help="torch device (cpu, cuda) [default: cpu]")
    add_settings_args(ln, LEARN_FLAGS)
    add_learner_args(ln)
    ln.set_defaults(func=_cmd_learn)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", None) or Settings.from_env().log_level)
    try:
        return int(args.func(args) or 0)
    except StreamrlError as e:  # a clear message, not a traceback; supervisors restart on non-zero
        log.error("%s: %s", type(e).__name__, e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
