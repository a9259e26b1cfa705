"""Crawler pipeline: filter-and-store with two consumer groups (store + index).

    python examples/crawler_pipeline.py               # embedded native broker, ./.mqkit
    python examples/crawler_pipeline.py --pages 5000
    MQKIT_URL=stomp://127.0.0.1:61613 python examples/crawler_pipeline.py

Crawlers produce pages much faster than the database takes inserts: instead
of hammering it (row locks, "too many connections"), they publish each page
to ``pages`` and return.  Two consumer groups read the same stream at their
own pace -- publish/subscribe: each group gets every page:

* ``store`` filters (HTTP 200, not spam, has a title) and inserts into SQLite,
  two members sharing the work;
* ``index`` builds a word index of every 200 page, two members as well.

A page re-crawled later carries the same id (a hash of its URL), so dedupe
stores it once.  Exits 1 if a group missed or repeated a page.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import sqlite3
import sys
import tempfile
import threading
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import mqkit

WORDS = [
    "queue",
    "broker",
    "partition",
    "offset",
    "consumer",
    "producer",
    "ack",
    "lease",
    "topic",
    "group",
]


def page(i: int, rng: random.Random) -> dict[str, object]:
    """A fetched page: mostly fine, some 404s, some spam, some without a title."""
    status = 404 if i % 17 == 0 else 200
    spam = i % 23 == 0
    title = "" if i % 29 == 0 else f"Page {i}"
    body = " ".join(rng.choice(WORDS) for _ in range(20)) + (" buy now cheap" if spam else "")
    return {"url": f"https://example.com/{i}", "status": status, "title": title, "body": body}


def page_id(url: str) -> str:
    return "page-" + hashlib.sha1(url.encode()).hexdigest()[:16]


def keep(p: dict[str, object]) -> bool:
    """The store's filter."""
    return p["status"] == 200 and "buy now" not in str(p["body"]) and bool(p["title"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=1000, help="pages to crawl")
    ap.add_argument("--members", type=int, default=2, help="consumers per group")
    ap.add_argument(
        "--prefix",
        default=f"ex-{uuid.uuid4().hex[:8]}-",
        help="start of every topic name (default: fresh per run, so runs on a shared broker "
        "never meet each other's leftovers)",
    )
    args = ap.parse_args(argv)
    rng = random.Random(7)
    topic = f"{args.prefix}pages"
    pages = [page(i, rng) for i in range(args.pages)]
    recrawled = pages[: max(1, args.pages // 10)]  # crawled twice: same URL, same id

    db_path = Path(tempfile.mkdtemp(prefix="crawler-")) / "pages.db"
    db = sqlite3.connect(db_path, check_same_thread=False)
    db.execute("CREATE TABLE pages (url TEXT PRIMARY KEY, title TEXT, body TEXT)")
    db_lock = threading.Lock()
    inserts: Counter[str] = Counter()
    index: dict[str, set[str]] = defaultdict(set)
    indexed: Counter[str] = Counter()
    work: Counter[str] = Counter()  # handled per member, to show the sharing
    lock = threading.Lock()

    def store(m: mqkit.Message) -> None:
        p = m.payload
        with lock:
            work[threading.current_thread().name] += 1
        if not keep(p):
            return  # filtered out: acked, not stored
        with db_lock:
            db.execute("INSERT INTO pages VALUES (?, ?, ?)", (p["url"], p["title"], p["body"]))
            db.commit()
            inserts[p["url"]] += 1

    def index_page(m: mqkit.Message) -> None:
        p = m.payload
        with lock:
            work[threading.current_thread().name] += 1
            if p["status"] != 200:
                return
            indexed[p["url"]] += 1
            for word in set(re.findall(r"[a-z]+", str(p["body"]))):
                index[word].add(p["url"])

    with mqkit.connect() as mq:  # MQKIT_URL, else the embedded native broker
        backend = mq.scheme
        persistent = mq.capabilities.supports("persistent")
        mq.declare(topic, partitions=4, groups=["store", "index"])
        producer = mq.producer(mqkit.Policy(persistent=persistent))
        for batch_start in range(0, len(pages), 500):
            batch = pages[batch_start : batch_start + 500]
            producer.send_many(
                topic,
                [
                    mqkit.OutgoingMessage(p, key=str(p["url"]), id=page_id(str(p["url"])))
                    for p in batch
                ],
            )
        producer.send_many(
            topic,
            [
                mqkit.OutgoingMessage(p, key=str(p["url"]), id=page_id(str(p["url"])))
                for p in recrawled
            ],
        )

        policy = mqkit.Policy(dedupe="memory://", prefetch=50)
        consumers = [
            (mq.consumer(topic, group=group, policy=policy), handler, f"{group}-{n}")
            for group, handler in (("store", store), ("index", index_page))
            for n in range(args.members)
        ]
        threads = [
            threading.Thread(target=c.run, args=(h,), kwargs={"idle_timeout": 2.0}, name=name)
            for c, h, name in consumers
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        duplicates = sum(c.stats.duplicates for c, _, _ in consumers)
        for c, _, _ in consumers:
            c.close()

    expected_store = {str(p["url"]) for p in pages if keep(p)}
    expected_index = {str(p["url"]) for p in pages if p["status"] == 200}
    rows = {url for (url,) in db.execute("SELECT url FROM pages")}
    db.close()
    problems = []
    if rows != expected_store or any(n != 1 for n in inserts.values()):
        problems.append(f"stored {len(rows)} pages, expected {len(expected_store)} once each")
    if set(indexed) != expected_index or any(n != 1 for n in indexed.values()):
        problems.append(f"indexed {len(indexed)} pages, expected {len(expected_index)}")
    if any(w not in index for w in WORDS):
        problems.append("the index lacks words every page has")
    status = "OK" if not problems else "FAILED"
    shares = " ".join(f"{k}={v}" for k, v in sorted(work.items()))
    print(
        f"crawler_pipeline: {status} on {backend} crawled={len(pages)} recrawled={len(recrawled)} "
        f"stored={len(rows)} indexed={len(indexed)} words={len(index)} "
        f"duplicates_absorbed={duplicates} work[{shares}]"
    )
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
