"""What the broker benchmarks share: the mqkit side of a run, and the bar chart.

Each ``bench_<broker>.py`` writes its own raw-driver side (that is what differs);
the mqkit side is the same public API everywhere, so it lives here once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import mqkit
from mqkit.policy import Policy
from mqkit.producer import OutgoingMessage

__all__ = ["mq_consume", "mq_produce", "plot_pairs"]


def mq_produce(mq: mqkit.Client, topic: str, n: int, body: bytes, *, batch: int | None) -> float:
    """Seconds to send ``n`` confirmed persistent messages.

    ``batch`` 1: one ``send()`` each; None: one ``send_many`` of all ``n``;
    else ``send_many`` in chunks of ``batch``.
    """
    producer = mq.producer(Policy(confirm=True, persistent=True))
    t0 = time.perf_counter()
    if batch == 1:
        for _ in range(n):
            producer.send(topic, body)
    else:
        step = n if batch is None else batch
        for start in range(0, n, step):
            producer.send_many(topic, [OutgoingMessage(body) for _ in range(min(step, n - start))])
    return time.perf_counter() - t0


def mq_consume(mq: mqkit.Client, topic: str, group: str, n: int, prefetch: int) -> float:
    """Seconds for ``consumer.run`` (manual ack after a no-op handler) to take ``n`` messages."""
    consumer = mq.consumer(topic, group=group, policy=Policy(prefetch=prefetch))
    got = 0

    def handler(_message: Any) -> None:
        nonlocal got
        got += 1

    t0 = time.perf_counter()
    consumer.run(handler, max_messages=n)
    elapsed = time.perf_counter() - t0
    consumer.close()
    if got != n:
        raise SystemExit(f"mqkit consumed {got} of {n}")
    return elapsed


def plot_pairs(
    path: Path, labels: list[str], raw: list[float], mine: list[float], raw_name: str
) -> None:
    """A PNG of raw-driver vs mqkit msg/s per case (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = range(len(labels))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar([i - 0.2 for i in x], raw, width=0.4, label=raw_name)
    ax.bar([i + 0.2 for i in x], mine, width=0.4, label="mqkit")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("msg/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")
