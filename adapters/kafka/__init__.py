"""Apache Kafka (4.x, KRaft or not) through kafka-python 3.0: ``kafka://host:9092``.

Features
    Topic = Kafka topic with N partitions (``declare`` creates it through the admin
    API; an existing topic with another partition count is a ConfigError).  Group =
    consumer group ``<topic>:<group>`` (``group_id_format``); a group declared with
    ``declare(groups=[...])`` or created by its first consumer gets committed offsets
    at the current end of every partition, so it sees exactly what is published
    after it exists.  ``confirm`` = ``acks=all`` with the idempotent producer; a
    batch is sent pipelined and ``publish`` returns when every record's future has
    resolved (each record gets its own outcome).  Manual ack = per-message tracking;
    the group commits the low watermark (never past an unacked message) with the
    acks above it and the attempt counts in the commit metadata.  ``nack(delay)``
    re-delivers from a local timer heap with attempt + 1.  Per-key order = key ->
    partition (murmur2), one owner per partition; on a rebalance a partition is
    given up only after its deliveries are settled.  ``delay`` is emulated: the
    record carries its due time and the consumer holds it.
Connection string
    ``kafka://host:port[,host:port...]`` (port 9092 by default), options as query
    parameters; ``kafka://user:password@host:9093?security_protocol=SASL_SSL&
    sasl_mechanism=SCRAM-SHA-512&ssl_cafile=/etc/ca.pem`` for SASL/TLS (credentials
    without ``security_protocol`` mean SASL_PLAINTEXT with PLAIN).
Options
    Security (passed to kafka-python): ``security_protocol``, ``sasl_mechanism``,
    ``sasl_plain_username``, ``sasl_plain_password``, ``ssl_cafile``,
    ``ssl_certfile``, ``ssl_keyfile``, ``ssl_password``, ``ssl_crlfile``,
    ``ssl_check_hostname``.
    Producer: ``linger_ms`` (0; more batches records across threads and calls but
    adds that much latency to a confirmed send), ``batch_size`` (262144 bytes per
    partition batch: a cap, not a buffer; kafka-python's 16384 fills so fast that
    confirmed batches of 1 KiB records ran at half speed), ``compression_type``,
    ``delivery_timeout_ms`` (30000: a send that is not confirmed by then fails),
    ``max_block_ms`` (10000: waiting for metadata or buffer space), ``acks`` (only
    ``all``), ``retries`` (>= 1), ``max_in_flight_requests_per_connection`` (1..5)
    -- values that would silently turn idempotence off are refused with a
    ConfigError naming the option.
    Consumer: ``group_id_format`` ({topic}:{group}), ``session_timeout_ms`` (10000),
    ``heartbeat_interval_ms`` (1000: how fast members notice a rebalance),
    ``max_poll_interval_ms`` (60000: a poller thread polls however slow the handler
    is), ``fetch_max_wait_ms`` (500),
    ``max_partition_fetch_bytes``, ``commit_interval_ms`` (0: commit as soon as the
    previous commit returned), ``rebalance_drain_ms`` (10000: how long a revoked
    partition waits for its deliveries to be settled), ``max_held`` (10000 nacked
    or delayed records held locally before fetching pauses).
    Topics: ``replication_factor``, ``min_insync_replicas`` (both default to the
    broker's settings), ``flush_messages`` (topic ``flush.messages``: 1 = fsync
    every message).  Every client: ``request_timeout_ms`` (15000),
    ``reconnect_backoff_max_ms`` (1000; kafka-python's own default of 30 s leaves a
    client deaf for up to half a minute after the broker is back).
Limits
    Durability on one node: a confirmed record is in the broker's page cache; it
    survives ``kill -9`` of the broker but not a power loss unless
    ``flush_messages=1`` -- in production use 3 brokers, ``replication_factor=3``
    and ``min_insync_replicas=2``.  Acks are committed asynchronously (one commit
    in flight): a consumer that crashes gets its last acks redelivered (use
    ``dedupe``).  Attempt counts after a crash miss the deliveries since the last
    commit.  A delayed record holds its partition's commit point and sits in the
    consumer's memory until due (a restart fetches it again).  Group offsets of a
    group that never consumes expire after the broker's ``offsets.retention.minutes``;
    such a group then starts from the earliest retained record.
    Threads: one producer per client (kafka-python's producer is thread-safe); each
    subscription owns a ``KafkaConsumer`` used only by its poller thread.
    kafka-python 3.0.12's idempotent producer may stall for good after a batch
    expired during a broker outage: a publish whose records time out replaces
    the producer (those records fail, the caller is told; later sends work).
"""

from __future__ import annotations

from .adapter import KAFKA_CAPABILITIES, KafkaAdapter
from .options import KafkaOptions

__all__ = ["KAFKA_CAPABILITIES", "KafkaAdapter", "KafkaOptions"]
