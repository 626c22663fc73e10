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
    "serve_epsilon", "serve_temperature", "serve_softmax_pool", "serve_batch_wait_ms", "serve_max_candidates", "serve_max_k",
    "serve_max_body_bytes", "snapshot_dir",
]


def _cmd_serve(args: argparse.Namespace) -> int:
    from streamrl.serving.server import run_server

    run_server(settings_from_args(args))
    return 0


def _int_list(text: str) -> list[int]:
    """``--drift-at 1000,5000`` -> ``[1000, 5000]``."""
    return [int(x) for x in text.split(",") if x.strip()]


def _cmd_simulate(args: argparse.Namespace) -> int:
    import json

    from streamrl.metrics import serve
    from streamrl.producers.simulator import SimConfig, run_simulate

    settings = settings_from_args(args)
    serve(settings.metrics_port, default=9404)
    cfg = SimConfig(n_users=args.users, n_items=args.items, seed=args.seed, policy=args.policy,
                    drift_at=sorted(n for chunk in args.drift_at or [] for n in chunk))
    summary = run_simulate(settings, cfg, args.events, out_path=args.out, catalog_out=args.catalog_out)
    print(json.dumps(summary), flush=True)
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
    from pathlib import Path

    from streamrl.demo import render, run_demo
    from streamrl.producers.simulator import SimConfig

    settings = settings_from_args(args)
    run_dir = Path(args.run_dir or time.strftime("runs/demo-%Y%m%d-%H%M%S"))
    cfg = SimConfig(n_users=args.users, seed=args.seed, policy=args.policy,
                    drift_at=sorted(n for chunk in args.drift_at or [] for n in chunk))
    summary = run_demo(settings, cfg, args.events, run_dir, progress=not args.json)
    print(json.dumps(summary) if args.json else render(summary), flush=True)
    print(f"[demo] run directory: {run_dir}", file=sys.stderr)
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

    sm = sub.add_parser("simulate", help="simulated users: write the catalog, produce view/click/purchase events")
    sm.add_argument("--events", type=int, default=100_000, help="events to produce [default: 100000]")
    sm.add_argument("--users", type=int, default=2000, help="simulated users [default: 2000]")
    sm.add_argument("--items", type=int, default=1000, help="catalog items [default: 1000]")
    sm.add_argument("--seed", type=int, default=0, help="seed of the whole world and stream [default: 0]")
    sm.add_argument("--policy", choices=("random", "popularity"), default="random",
                    help="built-in feed policy serving the slates [default: random]")
    sm.add_argument("--drift-at", type=_int_list, action="append", metavar="N[,N...]",
                    help="event counts at which users' interests drift (repeatable or comma list)")
    sm.add_argument("--out", default=None, metavar="PATH",
                    help="write events to this JSONL file instead of Kafka")
    sm.add_argument("--catalog-out", default=None, metavar="PATH",
                    help="write the item catalog (JSONL) here [default: --catalog-path, else not written]")
    add_settings_args(sm, KAFKA_FLAGS + ["catalog_path", "max_request_bytes"])
    sm.set_defaults(func=_cmd_simulate)

    rp = sub.add_parser("replay", help="replay an event log (JSONL or RetailRocket CSV) into Kafka in event-time order")
    rp.add_argument("file", metavar="FILE", help="event log: .jsonl (event contract) or RetailRocket events.csv")
    rp.add_argument("--speed", type=float, default=None,
                    help="pace at N x real (event) time [default: as fast as possible]")
    add_settings_args(rp, KAFKA_FLAGS + ["catalog_path", "max_request_bytes"])
    rp.set_defaults(func=_cmd_replay)

    dm = sub.add_parser("demo", help="end-to-end run: embedded broker, simulator -> Kafka -> processor, summary")
    dm.add_argument("--events", type=int, default=100_000, help="events to simulate [default: 100000]")
    dm.add_argument("--users", type=int, default=2000, help="simulated users [default: 2000]")
    dm.add_argument("--seed", type=int, default=0, help="simulator seed [default: 0]")
    dm.add_argument("--policy", choices=["random", "popularity"], default="random",
                    help="feed policy of the open-loop simulator [default: random]")
    dm.add_argument("--drift-at", type=_int_list, action="append", metavar="N[,N...]",
                    help="event counts at which users' interests drift (repeatable)")
    dm.add_argument("--run-dir", default=None, help="where the run's files go [default: runs/demo-<time>]")
    dm.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_settings_args(dm, KAFKA_FLAGS + ["attribution_window_ms", "history_len", "reward_click", "reward_purchase"])
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
