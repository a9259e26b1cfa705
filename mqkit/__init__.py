"""mqkit: one producer/consumer interface over Kafka, RabbitMQ, ActiveMQ, RocketMQ
and a native broker, with the reliability recipes built in as policies."""

from mqkit.capabilities import Capabilities, Support
from mqkit.client import Client, connect
from mqkit.consumer import Consumer, RunStats
from mqkit.delivery import Delivery, Reject
from mqkit.errors import (
    Closed,
    ConfigError,
    ConnectionLost,
    DeliveryStateError,
    MessageTooLarge,
    MissingDriver,
    MQError,
    PayloadError,
    PublishError,
    UnknownBackend,
    Unsupported,
)
from mqkit.message import Message, Receipt
from mqkit.policy import Policy
from mqkit.producer import OutgoingMessage, Producer
from mqkit.settings import Settings

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # ``mqkit.aio`` without importing asyncio machinery for sync users.
    if name == "aio":
        import importlib

        return importlib.import_module("mqkit.aio")
    raise AttributeError(f"module 'mqkit' has no attribute {name!r}")

__all__ = [
    "Capabilities",
    "Client",
    "Closed",
    "ConfigError",
    "ConnectionLost",
    "Consumer",
    "Delivery",
    "DeliveryStateError",
    "MQError",
    "Message",
    "MessageTooLarge",
    "MissingDriver",
    "OutgoingMessage",
    "PayloadError",
    "Policy",
    "Producer",
    "PublishError",
    "Receipt",
    "Reject",
    "RunStats",
    "Settings",
    "Support",
    "UnknownBackend",
    "Unsupported",
    "__version__",
    "connect",
]
