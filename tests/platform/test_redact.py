"""Credentials inside URLs never reach what dropwire prints: `dropwire settings`, log lines,
stored delivery errors. Hypothesis over generated URLs: the secret never appears, while the
scheme, host, port, path and harmless query values stay readable."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dropwire.functions.evaluation.states import MACHINES
from dropwire.functions.kit.redact import MaskUrls, mask_url, mask_urls
from dropwire.local_emulator.notifier import Notifier
from dropwire.local_emulator.settings import NotificationSettings, describe_settings, load_settings
from dropwire.storage.records import Effects, NotificationRequest
from dropwire.storage.store import Store

SAFE = "abcdefghijklmnopqrstuvwxyz0123456789"
words = st.text(SAFE, min_size=1, max_size=10)
# What a URL carries as a secret: any text, percent-encoded as a URL builder writes it.
secrets = st.text(min_size=6, max_size=30).filter(lambda s: "\x00" not in s)
credential_names = st.sampled_from(["token", "access_token", "api_key", "apikey", "key", "secret", "client_secret",
                                    "password", "pwd", "sig", "signature", "X-Amz-Signature", "X-Amz-Credential",
                                    "X-Amz-Security-Token", "auth", "session_id", "Token", "PASSWORD"])


@st.composite
def urls(draw) -> tuple[str, str, list[str]]:
    """(a URL, its secret as written in it, the parts that must stay readable)."""
    secret = quote(draw(secrets), safe="")
    scheme = draw(st.sampled_from(["https", "http", "s3", "postgresql", "mysql+pymysql", "databricks"]))
    host = ".".join(draw(st.lists(words, min_size=1, max_size=3))) + draw(st.sampled_from(["", ":5000", ":8443"]))
    path = "".join("/" + w for w in draw(st.lists(words, max_size=3)))
    readable = [f"{scheme}://", host, path]
    where = draw(st.sampled_from(["password", "userinfo", "query", "fragment"]))
    user = draw(words)
    userinfo = {"password": f"{user}:{secret}@", "userinfo": f"{secret}@"}.get(where, "")
    if where == "password":
        readable.append(f"{user}:")
    plain = draw(st.lists(st.tuples(st.sampled_from(["page", "region", "format", "limit"]), words), max_size=2))
    pairs = [f"{name}={value}" for name, value in plain]
    readable += pairs
    if where == "query":
        pairs.insert(draw(st.integers(0, len(pairs))), f"{draw(credential_names)}={secret}")
    query = "?" + "&".join(pairs) if pairs else ""
    fragment = f"#{draw(credential_names)}={secret}" if where == "fragment" else ""
    url = f"{scheme}://{userinfo}{host}{path}{query}{fragment}"
    assume(all(secret not in part for part in readable) and "whsec" not in url)
    return url, secret, readable


@given(urls())
def test_the_secret_never_appears_and_the_rest_stays_readable(case):
    url, secret, readable = case
    for shown in (mask_url(url), mask_urls(f"cannot reach '{url}': connection refused")):
        assert secret not in shown
        assert all(part in shown for part in readable), (url, shown)


@given(urls())
def test_dropwire_settings_shows_no_secret_of_any_url(case):
    url, secret, _ = case
    # A secret that the settings print anyway (say `contro`, in control_socket) says nothing.
    assume(secret not in json.dumps(describe_settings(load_settings(environ={}))))
    settings = load_settings(environ={"DROPWIRE_MLFLOW_TRACKING_URI": url, "DROPWIRE_EVENTS__S3_ENDPOINT_URL": url,
                                      "DROPWIRE_NOTIFY__WEBHOOK_URL": url, "DROPWIRE_NOTIFY__WEBHOOK_SECRET": "whsec"})
    shown = json.dumps(describe_settings(settings))
    assert secret not in shown and "whsec" not in shown
    assert describe_settings(settings)["mlflow_tracking_uri"] == mask_url(url)


@given(urls())
def test_log_lines_and_their_tracebacks_show_no_secret(case):
    url, secret, _ = case
    record = logging.LogRecord("dropwire.test", logging.ERROR, __file__, 1, "cannot reach %s (%d tries)", (url, 3), None)
    try:
        raise ConnectionError(f"for url '{url}'")
    except ConnectionError:
        import sys

        record.exc_info = sys.exc_info()
    assert MaskUrls().filter(record)
    formatted = logging.Formatter().format(record)
    assert secret not in formatted and "(3 tries)" in formatted and "ConnectionError" in formatted


def test_the_real_cli_masks_urls_in_settings(run_cli, dropwire_env):
    env = {**dropwire_env, "DROPWIRE_MLFLOW_TRACKING_URI": "postgresql://mlflow:hunter2@db.internal:5432/mlflow",
           "DROPWIRE_EVENTS__S3_ENDPOINT_URL": "https://minio:s3cr3t-key@minio.internal:9000",
           "DROPWIRE_NOTIFY__WEBHOOK_URL": "https://hooks.example.com/dropwire?token=tok-123&team=ml",
           "DROPWIRE_NOTIFY__WEBHOOK_SECRET": "whsec"}
    result = run_cli("settings", env=env)
    assert result.returncode == 0, result.stderr
    assert not any(s in result.stdout for s in ("hunter2", "s3cr3t-key", "tok-123", "whsec"))
    shown = json.loads(result.stdout)
    assert shown["mlflow_tracking_uri"] == "postgresql://mlflow:****@db.internal:5432/mlflow"
    assert shown["events"]["s3_endpoint_url"] == "https://minio:****@minio.internal:9000"
    assert shown["notify"]["webhook_url"] == "https://hooks.example.com/dropwire?token=****&team=ml"


class _Refuses(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow  # a real process or server: not in the fast tier
def test_a_failed_webhook_is_stored_and_logged_without_its_token(tmp_path, caplog):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook?token=tok-123"
    with Store.open(tmp_path / "db.duckdb", MACHINES) as store:
        store.states.apply(Effects(notifications=[NotificationRequest(kind="qc_passed", subject="QC passed", body="ok")]))
        notifier = Notifier(store.outbox, NotificationSettings(webhook_url=url, webhook_secret="whsec"), tmp_path / "outbox")
        try:
            with caplog.at_level(logging.WARNING, logger="dropwire.notifier"):
                notifier.deliver_due()
        finally:
            server.shutdown()
            server.server_close()
        (row,) = store.outbox.notifications()
    assert "404" in row.last_error and f"127.0.0.1:{server.server_port}/hook?token=****" in row.last_error
    assert "tok-123" not in row.last_error and "tok-123" not in caplog.text
