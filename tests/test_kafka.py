"""The embedded broker: starts on a free port, creates co-partitioned topics, never orphans."""

import os
import signal
import subprocess
import sys
import time

import pytest

from streamrl.config import Settings
from streamrl.kafka import TOPICS, EmbeddedBroker, ensure_topics, make_consumer

pytestmark = pytest.mark.integration


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_ensure_topics_creates_co_partitioned_topics(broker):
    s = Settings.from_env(bootstrap_servers=broker.bootstrap_servers, topic_prefix="cop.", partitions=4)
    names = ensure_topics(s)
    assert ensure_topics(s) == names  # idempotent
    c = make_consumer(s, group_id=None)
    try:
        meta = {t: len(c.partitions_for_topic(t) or ()) for t in names}
    finally:
        c.close()
    for t in ("events.view", "events.click", "events.purchase", "transitions"):
        assert meta[s.topic(t)] == 4
    assert meta[s.topic("policy.snapshots")] == 1
    assert set(TOPICS) == {n.removeprefix("cop.") for n in names}


def test_broker_stop_kills_process():
    b = EmbeddedBroker().start()
    pid = b.proc.pid
    b.stop()
    assert not alive(pid)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_broker_command_leaves_no_orphan(how):
    """`streamrl broker` stopped by SIGTERM or killed by SIGKILL takes its broker with it."""
    p = subprocess.Popen([sys.executable, "-m", "streamrl.cli", "broker", "--port", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    assert "embedded Kafka broker at 127.0.0.1:" in line
    (child,) = children(p.pid)
    assert alive(child)
    os.kill(p.pid, how)
    p.wait(timeout=20)
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)
