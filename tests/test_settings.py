"""Settings: defaults, then file, then environment; clear errors; derived paths."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dropwire.local_emulator.settings import SettingsError, describe_settings, load_settings


def test_defaults_derive_paths_from_the_data_dir():
    settings = load_settings(environ={"DROPWIRE_DATA_DIR": "/srv/dw"})
    assert str(settings.database_path) == "/srv/dw/dropwire.duckdb"
    assert str(settings.control_socket_path) == "/srv/dw/control.sock"


def test_the_control_plane_is_reached_over_tcp_where_so_set():
    assert load_settings(environ={}).control_tcp is None  # the Unix socket only
    local = load_settings(environ={"DROPWIRE_DATA_DIR": "/srv/dw", "DROPWIRE_CONTROL_TCP_PORT": "7470"})
    assert local.control_tcp == ("127.0.0.1", 7470)  # loopback unless told otherwise
    assert str(local.control_dial) == "/srv/dw/control.sock" and local.control_for_remote_tasks() == "127.0.0.1:7470"
    remote = load_settings(environ={"DROPWIRE_CONTROL_ADDRESS": "10.0.0.5:7470", "DROPWIRE_CONTROL_TCP_HOST": "0.0.0.0",
                                    "DROPWIRE_CONTROL_TCP_PORT": "7470", "DROPWIRE_EXECUTOR__KIND": "ray"})
    assert remote.control_dial == ("10.0.0.5", 7470) and remote.control_for_remote_tasks() == "10.0.0.5:7470"


def test_environment_overrides_the_file_which_overrides_defaults(tmp_path):
    file = tmp_path / "dropwire.toml"
    file.write_text('data_dir = "/from/file"\n[queue]\nworkers = 3\nmax_attempts = 9\n')
    settings = load_settings(file, environ={"DROPWIRE_QUEUE__WORKERS": "2"})
    assert (settings.data_dir, settings.queue.workers, settings.queue.max_attempts) == ("/from/file", 2, 9)


@pytest.mark.parametrize("environ, message", [
    ({"DROPWIRE_QUEUE__WORKERS": "many"}, r"Expected `int`, got `str` - at `\$.queue.workers`"),
    ({"DROPWIRE_QUEUE__LEASE_SECONDS": "1", "DROPWIRE_QUEUE__HEARTBEAT_SECONDS": "5"}, "heartbeat_seconds must be shorter"),
    ({"DROPWIRE_NO_SUCH_THING": "1"}, "Object contains unknown field `no_such_thing`"),
    ({"DROPWIRE_EVENTS__BUCKET_S3": "s3://team-data", "DROPWIRE_EVENTS__SQS_QUEUE_URL": "http://q"},
     "events.bucket_s3 is an S3 bucket name"),
    ({"DROPWIRE_EVENTS__BUCKET_S3": "team-data"}, "events.bucket_s3 needs events.sqs_queue_url"),
    ({"DROPWIRE_EVENTS__RECONCILE_SECONDS": "-1"}, r"events.reconcile_seconds must be 0 \(off\) or positive, got -1"),
    ({"DROPWIRE_CONTROL_TCP_PORT": "70000"}, "control_tcp_port is a TCP port"),
    ({"DROPWIRE_CONTROL_ADDRESS": "head-node"}, r"control_address is host:port \(a host name or IPv4 address\), got 'head-node'"),
    ({"DROPWIRE_CONTROL_ADDRESS": "head-node:0"}, "control_address is host:port"),
    ({"DROPWIRE_CONTROL_ADDRESS": "[fd00::5]:7470"}, "a host name or IPv4 address"),
    ({"DROPWIRE_EXECUTOR__KIND": "ray", "DROPWIRE_CONTROL_TCP_HOST": "0.0.0.0", "DROPWIRE_CONTROL_TCP_PORT": "7470"},
     "set control_address to the host:port that Ray nodes dial"),
])
def test_bad_values_name_the_setting(environ, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(environ=environ)


def test_a_missing_or_broken_file_is_named(tmp_path):
    with pytest.raises(SettingsError, match=r"settings file .*nope\.toml does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("data_dir = \n")
    with pytest.raises(SettingsError, match=r"broken\.toml is not valid TOML"):
        load_settings(broken, environ={})


@given(st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s))
def test_secrets_are_always_masked(secret):
    described = describe_settings(load_settings(environ={"DROPWIRE_CONTROL_AUTHKEY": secret}))
    assert described["control_authkey"] == "****"


def test_list_settings_read_json_arrays_by_field_type():
    settings = load_settings(environ={"DROPWIRE_HTTP__API_TOKENS": '["a", "b"]', "DROPWIRE_CONTROL_AUTHKEY": "[not a list"})
    assert settings.http.api_tokens == ["a", "b"] and settings.control_authkey == "[not a list"
    with pytest.raises(SettingsError, match=r"DROPWIRE_EVENTS__S3_BUCKETS must be a JSON array"):
        load_settings(environ={"DROPWIRE_EVENTS__S3_BUCKETS": "one,two"})
