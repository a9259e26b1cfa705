"""The README's quick start, runnable: ``python examples/quickstart.py``.

Uses ``MQKIT_URL`` if set, else the embedded native broker in ./.mqkit.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel

import mqkit


class Order(BaseModel):
    id: int
    item: str


def main() -> None:
    billed: list[Order] = []
    with mqkit.connect() as mq:
        topic = f"orders-{uuid.uuid4().hex[:8]}"
        mq.declare(topic, partitions=4, groups=["billing"])
        producer = mq.producer()
        receipt = producer.send(topic, Order(id=1, item="book"), key="user-42", id="order-1")
        assert receipt.confirmed

        def bill(order: Order) -> None:
            billed.append(order)

        consumer = mq.consumer(
            topic, group="billing", policy=mqkit.Policy(ordering="per_key", dedupe="memory://")
        )
        consumer.run(bill, idle_timeout=1.0)
        consumer.close()
    print(f"billed {billed}")
    assert billed == [Order(id=1, item="book")]


if __name__ == "__main__":
    main()
