"""Order pipeline: confirmed publish, manual ack, Redis dedupe, dead letters for poison.

    python examples/order_pipeline.py                      # embedded native broker, ./.mqkit
    python examples/order_pipeline.py --dedupe redis://127.0.0.1:6379/0
    MQKIT_URL=amqp://guest:guest@127.0.0.1:5672/%2F python examples/order_pipeline.py

The checkout service sends orders with ``confirm=True``: ``send`` returns
only once the broker has the order, so an order is never lost between
checkout and fulfilment.  The network is flaky, so checkout re-sends some
orders whose confirm it did not see -- with the SAME id.  Fulfilment charges
each order with the default policy: ack only after the charge succeeded
(manual ack), a payment gateway timeout is retried with backoff, dedupe makes
the re-sent orders charge once, and an order that can never be valid (a
negative quantity) goes to ``<topic>.dlq`` with reason ``invalid`` instead of
blocking the queue or vanishing.

Exits 1 if an order was charged twice, not charged, or a poison order was not
dead-lettered.
"""

from __future__ import annotations

import argparse
import sys
import threading
import uuid

from pydantic import BaseModel, PositiveInt

import mqkit
from mqkit.message import DLQ_REASON


class Order(BaseModel):
    id: str
    customer: str
    item: str
    qty: PositiveInt  # a negative quantity fails validation: reason "invalid"
    cents: int


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=200, help="orders to send")
    ap.add_argument("--dedupe", default="memory://", help="dedupe store: memory:// or redis://")
    ap.add_argument("--poison-every", type=int, default=25, help="every Nth order is invalid")
    ap.add_argument(
        "--prefix",
        default=f"ex-{uuid.uuid4().hex[:8]}-",
        help="start of every topic name (default: fresh per run, so runs on a shared broker "
        "never meet each other's leftovers)",
    )
    args = ap.parse_args(argv)

    topic = f"{args.prefix}orders"
    charged: dict[str, int] = {}
    flaky_once: set[str] = set()
    lock = threading.Lock()

    with mqkit.connect() as mq:  # MQKIT_URL, else the embedded native broker
        backend = mq.scheme
        persistent = mq.capabilities.supports("persistent")
        mq.declare(topic, partitions=4, groups=["fulfilment"])

        # -- checkout: confirmed sends; some are re-sent with the same id ---------------
        producer = mq.producer(mqkit.Policy(confirm=True, persistent=persistent))
        poison: set[str] = set()
        resent = 0
        for i in range(args.orders):
            bad = args.poison_every > 0 and i % args.poison_every == args.poison_every - 1
            order_id, customer = f"order-{i}", f"customer-{i % 20}"
            order = {
                "id": order_id,
                "customer": customer,
                "item": "book",
                "qty": -1 if bad else 1 + i % 3,
                "cents": 1299,
            }
            receipt = producer.send(topic, order, key=customer, id=order_id)
            assert receipt.confirmed
            if bad:
                poison.add(receipt.id)
            if i % 10 == 0:  # the confirm "got lost": checkout sends it again, same id
                producer.send(topic, order, key=customer, id=order_id)
                resent += 1

        # -- fulfilment: manual ack after the charge, retries, dedupe, DLQ -------------
        def charge(order: Order) -> None:
            with lock:
                if order.id.endswith("7") and order.id not in flaky_once:
                    flaky_once.add(order.id)  # the gateway times out once for these
                    raise TimeoutError("payment gateway timeout")
                charged[order.id] = charged.get(order.id, 0) + 1

        policy = mqkit.Policy(
            ack="manual", dedupe=args.dedupe, max_attempts=3, backoff=(0.01, 2.0, 0.1)
        )
        consumer = mq.consumer(topic, group="fulfilment", policy=policy)
        stats = consumer.run(charge, idle_timeout=2.0)
        consumer.close()

        # -- what ended in the dead-letter queue, and why ------------------------------
        dead: dict[str, str] = {}
        dlq = mq.consumer(f"{topic}.dlq")
        for d in dlq.iter(timeout=1.0):
            dead[d.message.id] = d.message.headers.get(DLQ_REASON, "")
            d.ack()
        dlq.close()

    good = {f"order-{i}" for i in range(args.orders)} - poison
    twice = sorted(k for k, n in charged.items() if n > 1)
    missing = sorted(good - set(charged))
    problems = []
    if twice:
        problems.append(f"charged twice: {twice[:5]}")
    if missing:
        problems.append(f"never charged: {missing[:5]}")
    if dead != dict.fromkeys(poison, "invalid"):
        problems.append(f"dead letters {sorted(dead)[:5]} != poison orders {sorted(poison)[:5]}")
    status = "OK" if not problems else "FAILED"
    print(
        f"order_pipeline: {status} on {backend} sent={args.orders} resent={resent} "
        f"charged={len(charged)} duplicates_absorbed={stats.duplicates} retried={stats.retried} "
        f"dead_lettered={len(dead)} (reason invalid)"
    )
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
