"""One settings Struct for the whole product, loaded from an optional TOML file and
``DROPWIRE_*`` environment variables (environment wins).

Top-level fields read ``DROPWIRE_<FIELD>``; a section's fields read
``DROPWIRE_<SECTION>__<FIELD>`` (e.g. ``DROPWIRE_RUNTIME__PORT=9000``). The file is named by
``DROPWIRE_SETTINGS_FILE`` or ``--settings``. Every path, URL and port in the product comes
from here; paths left empty derive from ``data_dir``.
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from dropwire.functions.catalog import DOMAINS
from dropwire.functions.kit.errors import DropwireError
from dropwire.functions.kit.redact import mask_url
from dropwire.functions.platform.domain import settings_sections
from dropwire.runtime.settings import RuntimeSettings
from dropwire.storage.settings import DatabaseSettings, QueueSettings

ENV_PREFIX = "DROPWIRE_"
SETTINGS_FILE_ENV = "DROPWIRE_SETTINGS_FILE"
# Field names whose values `dropwire settings` masks.
SECRET_MARKERS = ("token", "secret", "password", "authkey")


class EventSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # The bucket the functions know (the product's catalog uses "local"): by default a local
    # folder (bucket_dir, default <data_dir>/bucket); with bucket_s3 set, that S3 bucket
    # instead, its notifications arriving through sqs_queue_url.
    bucket: str = "local"
    bucket_dir: str = ""
    bucket_s3: str = ""
    # On Linux a dropped file is emitted when closed after writing or renamed into place.
    # Elsewhere, and for files a scan finds (catch-up at start, a new directory's first
    # files), it counts as complete once its size and mtime hold still this long.
    settle_seconds: float = 0.02
    # How often the folder is compared with the receipts (a walk and one query) and what no
    # receipt covers is admitted: the net under the watcher, for what the kernel never
    # reported (a network filesystem's remote writes). Also at start and after an overflow.
    # 0 turns the periodic one off.
    reconcile_seconds: float = 300.0
    # S3 (or an S3-compatible endpoint): the buckets to serve, and the SQS queue their
    # notifications go to. Credentials come from the usual AWS variables.
    s3_endpoint_url: str = ""
    s3_buckets: list[str] = []
    sqs_queue_url: str = ""
    aws_region: str = "us-east-1"
    sqs_wait_seconds: int = 1
    # Handler hops from an outside upload after which an object's events are refused.
    hop_limit: int = 16

    def __post_init__(self) -> None:
        if self.bucket_s3 and ("/" in self.bucket_s3 or self.bucket_s3.startswith("s3:")):
            raise ValueError(f"events.bucket_s3 is an S3 bucket name (like 'team-data'), got {self.bucket_s3!r}")
        if self.reconcile_seconds < 0:
            raise ValueError(f"events.reconcile_seconds must be 0 (off) or positive, got {self.reconcile_seconds}")
        if self.bucket_s3 and not self.sqs_queue_url:
            raise ValueError("events.bucket_s3 needs events.sqs_queue_url: the bucket's notifications arrive there")

    @property
    def bucket_names(self) -> dict[str, str]:
        """S3 bucket name -> the name functions know it by (events from S3 carry the former)."""
        return {self.bucket_s3: self.bucket} if self.bucket_s3 else {}


class HttpSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8700
    # When set, every endpoint but /health needs "Authorization: Bearer <one of these>".
    api_tokens: list[str] = []
    # The docs page (/schema/swagger), its assets and the OpenAPI document open without a
    # token, so a browser (which sends none) can show them; they hold no data, only the routes
    # of this version. false: they need the token as every route does.
    open_docs: bool = True
    max_upload_bytes: int = 256 * 1024 * 1024


class NotificationSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Delivery of notifications. Every notification is written as an .eml file under
    outbox_dir whatever else is configured; e-mail goes out only with smtp_host set, a webhook
    only with webhook_url set."""

    outbox_dir: str = ""
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    smtp_timeout_seconds: float = 10.0
    from_address: str = "dropwire@localhost"
    # Sent to when a notification names no recipients.
    recipients: list[str] = []
    webhook_url: str = ""
    # Signs every webhook body (X-Dropwire-Signature: sha256=<hex HMAC-SHA256>); required with webhook_url.
    webhook_secret: str = ""
    webhook_timeout_seconds: float = 10.0
    # How often the notifier looks for due notifications (new ones and retries).
    poll_seconds: float = 1.0
    # Retries: between half and all of base·2^(n−1), capped; failed after max_attempts.
    retry_base_seconds: float = 30.0
    retry_max_seconds: float = 3600.0
    max_attempts: int = 10
    # A larger attachment is left out of the e-mail, with a line in the body saying so.
    max_attachment_bytes: int = 10 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.webhook_url and not self.webhook_secret:
            raise ValueError("notify.webhook_url needs notify.webhook_secret (every webhook is signed)")
        if self.max_attempts < 1 or self.poll_seconds <= 0:
            raise ValueError("notify.max_attempts must be at least 1 and notify.poll_seconds positive")


class ExecutorSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Where claimed invocations run: "local" (a handler process per worker thread) or "ray"
    (each one a Ray task on the cluster at ray_address; the control plane keeps the state)."""

    kind: str = "local"
    # A Ray cluster's address, e.g. "ray://head:10001" or "head:6379"; "auto" finds a local one.
    ray_address: str = "auto"
    # Longest wait for the cluster to answer at start.
    ray_connect_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.kind not in ("local", "ray"):
            raise ValueError(f"executor.kind is 'local' or 'ray', got {self.kind!r}")


class PlatformSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The platform's own settings; `Settings` adds one section per domain of the catalog."""

    data_dir: str = ".dropwire"
    db_path: str = ""
    # Where the control plane listens for remote workers and tools (a Unix socket path).
    control_socket: str = ""
    # With a port (0: none) the control plane also listens on TCP, with the same key, for workers
    # and Ray tasks on other machines; loopback unless the host is set to an interface address.
    control_tcp_host: str = "127.0.0.1"
    control_tcp_port: int = 0
    # Where this process dials the control plane when it runs elsewhere ("host:port", over TCP),
    # and what Ray tasks dial when the control plane listens on a wildcard address; empty: the
    # Unix socket (and, for Ray tasks, control_tcp_host:control_tcp_port when a port is set).
    control_address: str = ""
    # Shared key for the control socket; empty: a random key kept in <data_dir>/control.key (0600).
    control_authkey: str = ""
    # Empty: a SQLite store under data_dir (MLflow 3 keeps its registry in a database).
    mlflow_tracking_uri: str = ""
    # MODULE:ATTRIBUTE of the FunctionRegistry the platform serves.
    functions: str = "dropwire.functions.catalog:functions"
    queue: QueueSettings = msgspec.field(default_factory=QueueSettings)
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    executor: ExecutorSettings = msgspec.field(default_factory=ExecutorSettings)
    events: EventSettings = msgspec.field(default_factory=EventSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    runtime: RuntimeSettings = msgspec.field(default_factory=RuntimeSettings)
    notify: NotificationSettings = msgspec.field(default_factory=NotificationSettings)

    def __post_init__(self) -> None:
        if not self.data_dir:
            raise ValueError("data_dir must not be empty")
        if not 0 <= self.control_tcp_port <= 65535:
            raise ValueError(f"control_tcp_port is a TCP port (1-65535, 0: no TCP listener), got {self.control_tcp_port}")
        if self.control_address:
            tcp_address(self.control_address, "control_address")
        elif self.executor.kind == "ray" and self.control_tcp_port and self.control_tcp_host in WILDCARD_HOSTS:
            raise ValueError(f"control_tcp_host {self.control_tcp_host!r} listens on every interface: set "
                             "control_address to the host:port that Ray nodes dial")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def database_path(self) -> Path:
        return Path(self.db_path).expanduser() if self.db_path else self.data_path / "dropwire.duckdb"

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{(self.data_path / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifact_location(self) -> str | None:
        """Artifacts beside the local store; a remote tracking server decides its own."""
        return None if self.mlflow_tracking_uri else (self.data_path / "mlartifacts").resolve().as_uri()

    @property
    def default_model_path(self) -> Path:
        return self.data_path / "models" / "default-forecaster.pt"

    @property
    def default_text_model_path(self) -> Path:
        """The embedded test language model (a Hugging Face directory), built at first start."""
        return self.data_path / "models" / "default-textgen"

    @property
    def bucket_path(self) -> Path:
        return Path(self.events.bucket_dir).expanduser() if self.events.bucket_dir else self.data_path / "bucket"

    def object_roots(self) -> dict[str, str]:
        """Bucket name -> URL root, for the object store."""
        roots = {bucket: f"s3://{bucket}" for bucket in self.events.s3_buckets}
        roots[self.events.bucket] = (f"s3://{self.events.bucket_s3}" if self.events.bucket_s3
                                     else self.bucket_path.resolve().as_uri())
        return roots

    def storage_options(self) -> dict[str, dict]:
        """fsspec options per protocol."""
        client = {"region_name": self.events.aws_region}
        if self.events.s3_endpoint_url:
            client["endpoint_url"] = self.events.s3_endpoint_url
        return {"s3": {"client_kwargs": client}}

    def existing_control_key(self) -> str | None:
        """The control socket's key if there is one; None where no control plane has made it
        (so none runs here). Reading it creates nothing."""
        if self.control_authkey:
            return self.control_authkey
        try:
            return (self.data_path / "control.key").read_text().strip()
        except FileNotFoundError:
            return None

    def control_key(self) -> str:
        """The control socket's key: the configured one, else this data dir's own random key."""
        key = self.existing_control_key()
        if key is not None:
            return key
        path = self.data_path / "control.key"
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32)
        try:
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
                out.write(key)
        except FileExistsError:  # another process made it first
            return path.read_text().strip()
        return key

    @property
    def runtime_url(self) -> str:
        return f"http://{self.runtime.host}:{self.runtime.port}"

    @property
    def inference_base_url(self) -> str:
        """The OpenAI-compatible root that batch lines and direct /v1 requests go to."""
        return self.batches.base_url or f"{self.runtime_url}/v1"  # type: ignore[attr-defined]

    def domain_config(self) -> dict[str, Any]:
        """The settings sections the product's domains read (HandlerContext.config, ApiPorts.config)."""
        return {section.name: msgspec.to_builtins(getattr(self, section.name)) for section in SECTIONS}

    @property
    def outbox_path(self) -> Path:
        return Path(self.notify.outbox_dir).expanduser() if self.notify.outbox_dir else self.data_path / "outbox"

    @property
    def control_socket_path(self) -> Path:
        return (
            Path(self.control_socket).expanduser()
            if self.control_socket
            else self.data_path / "control.sock"
        )

    @property
    def control_tcp(self) -> tuple[str, int] | None:
        """Where the control plane listens on TCP, if it does."""
        return (self.control_tcp_host, self.control_tcp_port) if self.control_tcp_port else None

    @property
    def control_dial(self) -> Path | tuple[str, int]:
        """How this process reaches the control plane: control_address over TCP, else the socket."""
        return tcp_address(self.control_address, "control_address") if self.control_address else self.control_socket_path

    def control_for_remote_tasks(self) -> str:
        """The "host:port" Ray tasks on other nodes dial; empty when the control plane has no
        TCP listener (they then use the Unix socket, so only on this machine)."""
        if self.control_address or not self.control_tcp_port:
            return self.control_address
        return f"{self.control_tcp_host}:{self.control_tcp_port}"


WILDCARD_HOSTS = ("", "0.0.0.0")


SECTIONS = settings_sections(DOMAINS)

# The settings: the platform's, then `[<section>]` of each domain (functions/platform/domain.py),
# decoded as the section's type, every field defaulted.
Settings = msgspec.defstruct(
    "Settings",
    [(section.name, section.type, msgspec.field(default_factory=section.type)) for section in SECTIONS],
    bases=(PlatformSettings,), module=__name__, kw_only=True, frozen=True, forbid_unknown_fields=True,
)


def tcp_address(address: str, name: str) -> tuple[str, int]:
    """("host", port) from "host:port" (a name or an IPv4 address: the RPC speaks IPv4), or a
    clear error naming the setting."""
    host, _, port = address.rpartition(":")
    if not host or ":" in host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{name} is host:port (a host name or IPv4 address), got {address!r}")
    return host, int(port)


class SettingsError(DropwireError):
    """A settings file or variable that cannot be used."""


def _nest_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == SETTINGS_FILE_ENV:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise SettingsError(f"environment variable {name} conflicts with another DROPWIRE_ variable")
        target[parts[-1]] = value
    return out


def _lists_from_json(raw: dict[str, Any], struct: type, prefix: str = ENV_PREFIX) -> dict[str, Any]:
    """List fields come from the environment as JSON arrays: DROPWIRE_HTTP__API_TOKENS='["a", "b"]'
    (and dict fields as JSON objects: DROPWIRE_CURATION__SCHEMAS='{"name": {...}}').
    Decided by the field's declared type, so a secret that merely starts with '[' stays a string."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)  # struct is a msgspec.Struct class
    fields = {f.name: f.type for f in info.fields}
    out = dict(raw)
    for name, value in raw.items():
        kind = fields.get(name)
        variable = f"{prefix}{name.upper()}"
        if isinstance(kind, msgspec.inspect.StructType) and isinstance(value, dict):
            out[name] = _lists_from_json(value, kind.cls, f"{variable}__")
        elif isinstance(kind, msgspec.inspect.ListType) and isinstance(value, str):
            try:
                out[name] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise SettingsError(f"{variable} must be a JSON array like '[\"a\", \"b\"]': {exc}") from None
        elif isinstance(kind, msgspec.inspect.DictType) and isinstance(value, str):
            try:
                out[name] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise SettingsError(f"{variable} must be a JSON object like '{{\"a\": 1}}': {exc}") from None
    return out


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    settings_file: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Defaults, then the file, then the environment."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    path = settings_file or environ.get(SETTINGS_FILE_ENV)
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SettingsError(f"settings file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"settings file {path} is not valid TOML: {exc}") from None
    raw = _merge(raw, _lists_from_json(_nest_environment(environ), Settings))
    try:
        # strict=False lets "8080" from the environment become an int.
        return msgspec.convert(raw, Settings, strict=False)
    except (msgspec.ValidationError, ValueError) as exc:
        source = f"settings file {path} or DROPWIRE_* variables" if path else "DROPWIRE_* variables"
        raise SettingsError(f"invalid settings in {source}: {exc}") from None


def describe_settings(settings: Settings) -> dict[str, Any]:
    """The effective values as a nested dict, secrets masked, derived paths filled in."""

    def mask(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {
                key: ("****" if value and any(m in key for m in SECRET_MARKERS) and not isinstance(value, (dict, bool, int, float)) else mask(value))
                for key, value in obj.items()
            }
        if isinstance(obj, list):
            return [mask(value) for value in obj]
        return mask_url(obj) if isinstance(obj, str) else obj  # credentials inside any URL

    described = msgspec.to_builtins(settings)
    described["db_path"] = str(settings.database_path)
    described["control_socket"] = str(settings.control_socket_path)
    described["events"]["bucket_dir"] = str(settings.bucket_path)
    described["notify"]["outbox_dir"] = str(settings.outbox_path)
    described["mlflow_tracking_uri"] = settings.mlflow_uri
    return mask(described)
