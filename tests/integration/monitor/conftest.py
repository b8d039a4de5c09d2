"""Fixtures of the monitoring integration tests (the loopback sinks)."""

from tests.integration.monitor.sinks import smtp_sink, webhook_receiver

__all__ = ["smtp_sink", "webhook_receiver"]
