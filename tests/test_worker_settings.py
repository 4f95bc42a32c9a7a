"""The shared settings object and the worker CLI surface."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sernet.settings import FIELDS, Settings, SettingsError


def test_env_and_overrides():
    s = Settings.from_env({"BROKER_URL": "kafka://a:1;kafka://b:2", "SERNET_HOP_S": "0.5",
                           "SERNET_BATCH_SIZE": "8", "SERNET_SECURITY_PROTOCOL": "sasl_ssl",
                           "SERNET_SASL_MECHANISM": "scram-sha-512", "SERNET_SASL_USERNAME": "u",
                           "SERNET_SASL_PASSWORD": "hunter2"}, batch_size=16)
    assert s.bootstrap_servers == "a:1,b:2" and s.hop_s == 0.5 and s.batch_size == 16
    assert s.security_protocol == "SASL_SSL" and s.sasl_mechanism == "SCRAM-SHA-512"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.safe_dict())
    assert Settings.from_env(s.env()) == s


@pytest.mark.parametrize("env", [{"SERNET_PARTITIONS": "0"}, {"SERNET_HEARTBEAT_S": "9"},
                                 {"SERNET_SECURITY_PROTOCOL": "SASL_PLAINTEXT"},
                                 {"SERNET_WINDOW_S": "1", "SERNET_HOP_S": "2"},
                                 {"SERNET_FETCH_MIN_BYTES": "0"}, {"SERNET_MODEL_BATCH": "0"},
                                 {"SERNET_PRODUCER_LINGER_MS": "-1"},
                                 {"SERNET_STREAM_YIELD_EVERY": "0"},
                                 {"SERNET_STREAM_FAST_PATH": "2"}])
def test_invalid_settings_name_the_variable(env):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert any(name in str(err.value) for name in env) or "SERNET_" in str(err.value)


def test_every_worker_flag_shows_its_env_var():
    from worker.cli import WORKER_OPTIONS, worker

    out = CliRunner().invoke(worker, ["--help"], terminal_width=200).output
    for name in WORKER_OPTIONS:
        assert FIELDS[name].env in out, name


def test_worker_limits_glibc_to_one_malloc_arena(monkeypatch):
    """`sernet worker` shares one malloc arena between its threads (glibc), unless the
    operator set MALLOC_ARENA_MAX themselves."""
    import platform

    from worker.cli import one_malloc_arena

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert one_malloc_arena() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert one_malloc_arena() is (platform.libc_ver()[0] == "glibc")


def test_producer_linger_reaches_faust():
    from sernet.kafka import faust_kwargs

    assert faust_kwargs(Settings())["producer_linger"] == 0.0
    assert faust_kwargs(Settings.from_env({"SERNET_PRODUCER_LINGER_MS": "10"}))["producer_linger"] == 0.01


def test_metrics_labelled_children_are_cached_and_counted():
    from worker.metrics import Metrics

    m = Metrics()
    a = m.labelled(m.chunks, "accepted")
    assert m.labelled(m.chunks, "accepted") is a and m.labelled(m.chunks, "duplicate") is not a
    a.inc()
    m.labelled(m.chunks, "accepted").inc(2)
    assert m.chunks.labels("accepted")._value.get() == 3
    assert b'sernet_chunks_total{outcome="accepted"} 3.0' in m.render()
    lag = m.labelled(m.consumer_lag, "3")
    lag.set(7)
    m.unlabel(m.consumer_lag, "3")
    assert b'partition="3"' not in m.render()
    m.unlabel(m.consumer_lag, "3")  # gone already: no error
    m.labelled(m.consumer_lag, "3").set(2)  # reassigned: a live series again, not the dropped one
    assert b'sernet_consumer_lag_messages{partition="3"} 2.0' in m.render()
