"""A consumer process for fault tests: records each handled id in a Redis list.

``python -m tests.fault.native_consumer_proc URL TOPIC REDIS_URL EFFECTS_KEY [CRASH_AT]``
With CRASH_AT = n, the process kills itself with SIGKILL right after the n-th
message's handler finished and its dedupe 'done' marker was written, and
before the ack: the exact window C7 is about.
"""

from __future__ import annotations

import os
import signal
import sys

import redis

import mqkit
from mqkit.delivery import Delivery


def main() -> None:
    url, topic, redis_url, effects = sys.argv[1:5]
    crash_at = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    r = redis.Redis.from_url(redis_url)
    handled = 0

    with mqkit.connect(url) as mq:
        policy = mqkit.Policy(dedupe=redis_url, backoff=(0.05, 2.0, 0.2), prefetch=10)
        consumer = mq.consumer(topic, group="workers", policy=policy)

        def after_done(d: Delivery) -> None:
            if crash_at and handled == crash_at:
                os.kill(os.getpid(), signal.SIGKILL)

        consumer._on_handled = after_done

        def handle(m: mqkit.Message) -> None:
            nonlocal handled
            r.rpush(effects, m.id)
            handled += 1

        consumer.run(handle, idle_timeout=2.0)
        consumer.close()


if __name__ == "__main__":
    main()
