"""Kafka client options built once from :class:`~sernet.settings.Settings`.

Producers, the worker (Faust), the events tail and the demo all connect through these helpers,
so TLS and SASL (PLAIN, SCRAM-SHA-256/512) are configured identically everywhere.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from sernet.settings import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A client TLS context for SSL / SASL_SSL (None for plaintext)."""
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ssl_cafile)
    if settings.ssl_certfile:
        ctx.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    return ctx


def aiokafka_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection keyword arguments for ``AIOKafkaProducer`` / ``AIOKafkaConsumer`` / admin."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    ctx = ssl_context(settings)
    if ctx is not None:
        kwargs["ssl_context"] = ctx
    if settings.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = settings.sasl_password
    return kwargs


def faust_kwargs(settings: Settings) -> dict[str, Any]:
    """``faust.App`` keyword arguments: broker, credentials, group timings."""
    import faust

    kwargs: dict[str, Any] = {
        "broker": settings.broker_url,
        # tansu holds a JoinGroup for half the session timeout: Faust's defaults cost 30-90 s
        # per rebalance, 6 s / 1 s give ~3 s.
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": settings.heartbeat_s,
        "producer_linger": settings.producer_linger_ms / 1000.0,
    }
    ctx = ssl_context(settings)
    if settings.security_protocol.startswith("SASL"):
        mechanism = settings.sasl_mechanism or "PLAIN"
        if mechanism == "PLAIN":
            kwargs["broker_credentials"] = faust.SASLCredentials(
                username=settings.sasl_username, password=settings.sasl_password,
                ssl_context=ctx)
        else:
            kwargs["broker_credentials"] = faust.SASLCredentials(
                username=settings.sasl_username, password=settings.sasl_password,
                ssl_context=ctx, mechanism=mechanism)
    elif ctx is not None:
        kwargs["broker_credentials"] = faust.SSLCredentials(ctx)
    return kwargs


async def create_topics(settings: Settings, topics: dict[str, int] | None = None,
                        timeout_s: float = 30.0) -> list[str]:
    """Create topics (name -> partitions); existing ones are left alone. Returns those created.

    Default: the input and output topics with ``settings.partitions`` and the DLQ with 1.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    if topics is None:
        topics = {settings.input_topic: settings.partitions,
                  settings.output_topic: settings.partitions,
                  settings.dlq_topic: 1}
    admin = AIOKafkaAdminClient(**aiokafka_kwargs(settings), request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    created = []
    try:
        existing = set(await admin.list_topics())
        wanted = [NewTopic(name, num_partitions=n, replication_factor=1)
                  for name, n in topics.items() if name not in existing]
        if wanted:
            try:
                await admin.create_topics(wanted)
                created = [t.name for t in wanted]
            except TopicAlreadyExistsError:  # a concurrent creator won
                pass
    finally:
        await admin.close()
    return created


def create_topics_sync(settings: Settings, topics: dict[str, int] | None = None) -> list[str]:
    return asyncio.run(create_topics(settings, topics))
