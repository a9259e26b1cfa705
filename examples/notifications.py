"""Notifications: SMS and e-mail decoupled from the request, with retries and backoff.

    python examples/notifications.py                  # embedded native broker, ./.mqkit
    python examples/notifications.py --users 500
    MQKIT_URL=kafka://127.0.0.1:9092 python examples/notifications.py

The sign-up request only publishes one ``user.signed_up`` event (confirmed)
and returns; it neither waits for the SMS gateway nor fails when the mail
server hiccups.  Two consumer groups -- ``sms`` and ``email`` -- each get
every event (publish/subscribe) and run an ``async def`` handler on asyncio
(``mq.aio``).  The stand-in gateways fail now and then; the consumer retries
with exponential backoff and the message stays unacked meanwhile, so a crash
would not lose it.  An address that is permanently bad is rejected at once
(``mqkit.Reject``) and kept in the dead-letter queue.

Exits 1 unless every user got exactly one SMS and one e-mail (bad addresses:
one dead letter each instead).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid

import mqkit
import mqkit.aio


class FlakyGateway:
    """A stand-in for an SMS or e-mail provider: a share of calls time out."""

    def __init__(self, name: str, failure_rate: float, seed: int) -> None:
        self.name = name
        self.failure_rate = failure_rate
        self.rng = random.Random(seed)
        self.sent: dict[str, int] = {}
        self.failures = 0

    async def send(self, user: str, text: str) -> None:
        await asyncio.sleep(0.001)  # the network round trip
        if self.rng.random() < self.failure_rate:
            self.failures += 1
            raise ConnectionError(f"{self.name} gateway timed out")
        self.sent[user] = self.sent.get(user, 0) + 1


async def run(users: int, failure_rate: float, prefix: str) -> int:
    topic = f"{prefix}user.signed_up"
    sms = FlakyGateway("sms", failure_rate, seed=1)
    email = FlakyGateway("email", failure_rate, seed=2)
    bad = {f"user-{i}" for i in range(users) if i % 50 == 49}
    async with mqkit.aio.connect() as mq:  # MQKIT_URL, else the embedded native broker
        backend = mq.sync.scheme
        persistent = mq.capabilities.supports("persistent")
        await mq.declare(topic, partitions=2, groups=["sms", "email"])

        # -- the sign-up request: publish and return ------------------------------------
        producer = mq.producer(mqkit.Policy(persistent=persistent))
        started = time.perf_counter()
        await producer.send_many(
            topic,
            [
                mqkit.OutgoingMessage(
                    {"user": f"user-{i}", "phone": f"+1555{i:07d}", "email": f"u{i}@example.com"},
                    key=f"user-{i}",
                    id=f"signup-user-{i}",
                )
                for i in range(users)
            ],
        )
        publish_ms = (time.perf_counter() - started) * 1000

        # -- the notification workers: retries with backoff, async handlers -------------
        policy = mqkit.Policy(max_attempts=8, backoff=(0.01, 2.0, 0.2), dedupe="memory://")

        async def send_sms(m: mqkit.Message) -> None:
            event = m.payload
            await sms.send(event["user"], "Welcome!")

        async def send_email(m: mqkit.Message) -> None:
            event = m.payload
            if event["user"] in bad:
                raise mqkit.Reject("mailbox does not exist")  # no point retrying
            await email.send(event["user"], "Welcome! Confirm your address.")

        sms_consumer = mq.consumer(topic, group="sms", policy=policy)
        email_consumer = mq.consumer(topic, group="email", policy=policy)
        sms_stats, email_stats = await asyncio.gather(
            sms_consumer.run(send_sms, idle_timeout=2.0),
            email_consumer.run(send_email, idle_timeout=2.0),
        )
        await sms_consumer.close()
        await email_consumer.close()

        dead = 0
        dlq = mq.consumer(f"{topic}.dlq")
        async for d in dlq.iter(timeout=1.0):
            dead += 1
            await d.ack()
        await dlq.close()

    everyone = {f"user-{i}" for i in range(users)}
    problems = []
    if sms.sent != dict.fromkeys(everyone, 1):
        problems.append(f"SMS: {len(sms.sent)} users, expected {len(everyone)} once each")
    if email.sent != dict.fromkeys(everyone - bad, 1):
        problems.append(f"e-mail: {len(email.sent)} users, expected {len(everyone - bad)}")
    if dead != len(bad):
        problems.append(f"{dead} dead letters, expected {len(bad)}")
    if failure_rate > 0 and users >= 50 and sms_stats.retried + email_stats.retried == 0:
        problems.append("no retry happened: the gateways never failed?")
    status = "OK" if not problems else "FAILED"
    print(
        f"notifications: {status} on {backend} users={users} published_in={publish_ms:.0f}ms "
        f"sms={len(sms.sent)} email={len(email.sent)} "
        f"gateway_failures={sms.failures + email.failures} "
        f"retried={sms_stats.retried + email_stats.retried} dead_lettered={dead}"
    )
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return 0 if not problems else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=200, help="sign-ups to notify")
    ap.add_argument("--failure-rate", type=float, default=0.1, help="share of gateway timeouts")
    ap.add_argument(
        "--prefix",
        default=f"ex-{uuid.uuid4().hex[:8]}-",
        help="start of every topic name (default: fresh per run, so runs on a shared broker "
        "never meet each other's leftovers)",
    )
    args = ap.parse_args(argv)
    return asyncio.run(run(args.users, args.failure_rate, args.prefix))


if __name__ == "__main__":
    sys.exit(main())
