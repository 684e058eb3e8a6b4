"""Every README/docs command stays true: the code blocks of the README and of the docs pages
(docs/*.md, in mkdocs.yml's nav order, after the README), as a user runs them: every shell
command is run as written (in that order, against one real emulator started by the README's own `dropwire emulate`), or
is listed below with why it cannot run inside the suite and what is checked instead (the
Makefile target and its recipe, the command's --help and every option it uses, the settings it
sets). A block the README gains without an entry here fails the first test.

What the test changes in a command: the gateway's default address (`:8700`, `http.port`) is
replaced by the free port this test's emulator was given (DROPWIRE_HTTP__PORT, as a user on a
busy machine would set it), and `dropwire` is the venv's (`source .venv/bin/activate`)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from dropwire.functions.evaluation.core.samples import sample_config, sample_dataset
from tests.conftest import REPO, SUBPROCESS_PYTHONPATH, wait_for
from tests.platform.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

README = REPO / "README.md"


def sources() -> list[Path]:
    """The README, then the docs pages in the site's order (mkdocs.yml's nav; a page left out
    of the nav comes last)."""
    def pages(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, dict):
            return [page for value in nav.values() for page in pages(value)]
        return [page for item in nav for page in pages(item)] if isinstance(nav, list) else []

    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    ordered = [REPO / "docs" / page for page in pages(config["nav"])]
    return [README, *ordered, *sorted(set((REPO / "docs").rglob("*.md")) - set(ordered))]
DEFAULT_PORT = ":8700"


@dataclass(frozen=True)
class Block:
    language: str
    text: str

    def commands(self) -> list[str]:
        """The block's commands as written, each whole: continuation lines and quoted newlines
        kept, comment lines dropped."""
        found, pending = [], ""
        for line in self.text.splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # an open quote: the command goes on
                continue
            if pending.rstrip().endswith("\\"):
                continue
            if words:
                found.append(pending)
            pending = ""
        assert not pending, f"unfinished command in the README: {pending!r}"
        return found


def blocks_of(path: Path) -> list[Block]:
    pattern = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)
    return [Block(language, textwrap.dedent(text)) for _, language, text in pattern.findall(path.read_text())]


def readme_blocks() -> list[Block]:
    return [block for path in sources() for block in blocks_of(path)]


def shell_commands() -> list[str]:
    """Each file's shell commands in order; a command a file repeats from an earlier file (the
    README's two commands, again on the getting-started page) is the same command, run once."""
    found: list[str] = []
    for path in sources():
        own = [c for block in blocks_of(path) if block.language == "bash" for c in block.commands()]
        earlier = {key(c) for c in found}
        found += [c for c in own if key(c) not in earlier]
    return found


def key(command: str) -> str:
    """A command's words, as the shell reads them: how the tables below name it."""
    return " ".join(shlex.split(command.replace("\\\n", " "), comments=True))  # a continuation is a space


def other_blocks() -> dict[str, Block]:
    """Python and TOML blocks by their first line."""
    return {block.text.splitlines()[0]: block for block in readme_blocks() if block.language != "bash"}


class Session:
    """One emulator (and its workers) started by the README's commands, in a working directory
    of the user's own (config.yaml, dataset.csv), and how to run a command as written there."""

    def __init__(self, tmp_path: Path) -> None:
        self.cwd = tmp_path / "work"
        self.cwd.mkdir()
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWIRE_")}
        self.env.update(DROPWIRE_DATA_DIR=str(tmp_path / "data"), DROPWIRE_HTTP__PORT=str(self.port),
                        PYTHONPATH=SUBPROCESS_PYTHONPATH, COLUMNS="80",
                        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        self.background: list[tuple[str, subprocess.Popen, Path]] = []
        self.starting: list[tuple[str, subprocess.Popen, Path, str]] = []
        self.defaults: dict | None = None
        (self.cwd / "config.yaml").write_text(yaml.safe_dump(sample_config("invoices")))
        (self.cwd / "dataset.csv").write_text(sample_dataset(300, error_rate=0.05, seed=1).write_csv())

    def as_run(self, command: str) -> str:
        return command.replace(DEFAULT_PORT, f":{self.port}")

    def run(self, command: str, *, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        ran = subprocess.run(["bash", "-c", self.as_run(command)], cwd=cwd or self.cwd, env={**self.env, **(env or {})},
                             capture_output=True, text=True, timeout=180)
        assert ran.returncode == 0, f"{command}\nexit {ran.returncode}\n{ran.stdout}\n{ran.stderr}"
        return ran

    def start(self, command: str, ready: str) -> None:
        """Start a long-running command; it is waited for (with those started beside it) before
        the next command that is not one. A process it needs (the emulator, for a worker) is up."""
        log = self.cwd.parent / f"background-{len(self.background)}.log"
        process = subprocess.Popen(["bash", "-c", self.as_run(command)], cwd=self.cwd, env=self.env, stdout=log.open("w"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.background.append((command, process, log))
        self.starting.append((command, process, log, ready))
        if "dropwire emulate" in command:  # the workers dial its control socket
            self.ready()

    def ready(self) -> None:
        for command, process, log, said in self.starting:
            wait_for(lambda said=said, log=log, process=process: said in log.read_text() or process.poll() is not None,
                     timeout=180, what=lambda command=command, said=said, log=log:
                     f"{command!r} to say {said!r}: {log.read_text()[-2000:]}")
            assert process.poll() is None, f"{command!r} exited {process.returncode}: {log.read_text()[-2000:]}"
        self.starting.clear()

    def settings(self, env: dict[str, str]) -> dict:
        """`dropwire settings` under `env` (the defaults asked once)."""
        if env or self.defaults is None:
            shown = json.loads(self.run("dropwire settings", env=env).stdout)
            if env:
                return shown
            self.defaults = shown
        return self.defaults

    def stop(self) -> None:
        for command, process, log in reversed(self.background):  # workers first, then the emulator
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
            try:
                code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                raise
            assert code == 0, f"{command!r} stopped with {code}: {log.read_text()[-2000:]}"


# ------------------------------------------------------------------ checks of what cannot run here


def dropwire_help(session: Session, command: str) -> None:
    """The dropwire command exists and knows every option the README gives it; the settings it
    sets are settings (their values parse where they are not placeholders)."""
    words = shlex.split(command.replace("\\\n", " "), comments=True)
    assignments = {}
    while "=" in words[0] and not words[0].startswith("-"):
        name, value = words.pop(0).split("=", 1)
        assignments[name] = value
    assert words[0] == "dropwire", command
    path = []
    for word in words[1:]:
        if word.startswith("-"):
            break
        path.append(word)
    shown = session.run(shlex.join(["dropwire", *path, "--help"])).stdout
    for option in (word for word in words if word.startswith("--")):
        assert option in shown, f"{command}: {option} is not an option of dropwire {' '.join(path)}:\n{shown}"
    assert_settings(session, assignments)


def assert_settings(session: Session, assignments: dict[str, str]) -> None:
    """Each name is a setting; with no placeholder among them (the README's upper-case words),
    the values are read by the settings as given, too."""
    placeholders = any(re.search(r"\b[A-Z][A-Z_]{3,}\b", value) for value in assignments.values())
    shown = session.settings({} if placeholders else assignments)
    for name, value in assignments.items():
        where = shown
        for part in name.removeprefix("DROPWIRE_").lower().split("__"):
            assert isinstance(where, dict) and part in where, f"{name} is not a setting (no {part!r} in {sorted(where)})"
            where = where[part]
        if not placeholders:
            assert holds(where, json.loads(value) if value.startswith(("[", "{")) else type(where)(value)), (name, where)


def holds(shown: object, given: object) -> bool:
    """`shown` says what `given` says (and may add defaults for what it leaves out)."""
    if isinstance(given, dict):
        return isinstance(shown, dict) and all(k in shown and holds(shown[k], v) for k, v in given.items())
    if isinstance(given, list):
        return isinstance(shown, list) and len(shown) == len(given) and all(map(holds, shown, given))
    return shown == given


def make_recipe(target: str, *variables: str, shows: str) -> Callable[[Session], None]:
    """The Makefile target exists and its recipe is what the README says (make -n: printed, not run)."""

    def check(session: Session) -> None:
        printed = session.run(shlex.join(["make", "-n", "-B", target, *variables]), cwd=REPO).stdout
        assert shows in printed, printed

    return check


def help_shows(*options: str) -> Callable[[Session, str], None]:
    """A tool outside dropwire: installed (in the venv), and it has the options used."""

    def check(session: Session, command: str) -> None:
        words = shlex.split(command)
        sub = [w for w in words[1:] if not w.startswith("-")][:1]
        shown = session.run(shlex.join([words[0], *sub, "--help"])).stdout
        for option in options:
            assert option in shown, (command, option)

    return check


# ------------------------------------------------------------------ what runs, in the README's order


def answer_of(out: str) -> dict:
    """A curl's answer body, which must not be the one error shape."""
    answer = json.loads(out)
    assert "error" not in answer, out
    return answer


def check_use_case(session: Session, out: str) -> None:
    assert answer_of(out)["state"] == "AWAITING_CONFIG", out


def check_config(session: Session, out: str) -> None:
    assert answer_of(out)["state"] == "CONFIG_VALIDATED", out


def check_model(session: Session, out: str) -> None:
    answer = answer_of(out)
    assert answer["id"] == "gpt-4.1-2025-04-14" and answer["state"] == "REGISTERED", out


def check_dataset(session: Session, out: str) -> None:
    answer = answer_of(out)
    assert [h["status"] for h in answer["handlers"]] == ["succeeded"], out


def check_model_view(session: Session, out: str) -> None:
    """Run again (as the README says) until the model is evaluated: the example's files are right."""
    command = next(c for c in shell_commands() if RUN.get(key(c)) is check_model_view)

    def evaluated() -> bool:
        state = answer_of(session.run(command).stdout)["state"]
        assert state not in ("EVALUATION_FAILED", "AWAITING_DATA_FIX"), state
        return state == "EVALUATION_COMPLETED"

    wait_for(evaluated, timeout=240, interval=1, what="the README's model to be evaluated")


def check_workflow_metrics(session: Session, out: str) -> None:
    assert "kind, state, entries, entities, total_seconds, avg_seconds, max_seconds" in out and "no rows" in out, out


RUN: dict[str, Callable[[Session, str], None]] = {
    'curl -X POST localhost:8700/api/use-cases?wait=30 -H content-type: application/json -d '
    '{"name": "Invoices", "team_email": "ml@example.com"}': check_use_case,
    "curl -F file=@config.yaml localhost:8700/api/use-cases/invoices/upload-config?wait=30": check_config,
    'curl -X POST localhost:8700/api/use-cases/invoices/models?wait=30 -H content-type: application/json -d '
    '{"name": "gpt-4.1", "version": "2025-04-14"}': check_model,
    "curl -F file=@dataset.csv localhost:8700/api/use-cases/invoices/models/gpt-4.1-2025-04-14/upload-dataset?wait=30":
        check_dataset,
    "curl localhost:8700/api/use-cases/invoices/models/gpt-4.1-2025-04-14": check_model_view,
    "dropwire db query SELECT * FROM workflow_metrics WHERE kind = 'batch'": check_workflow_metrics,
}

# Long-running processes the README starts: run in the background until the end, each ready
# when its log says so.
BACKGROUND = {
    "DROPWIRE_QUEUE__WORKERS=0 dropwire emulate": "dropwire is up",
    "DROPWIRE_QUEUE__WORKERS=2 dropwire worker --name w1": "worker w1 up",
    "DROPWIRE_QUEUE__WORKERS=2 dropwire worker --name w2": "worker w2 up",
}

NOT_RUN: dict[str, tuple[str, Callable[[Session, str], None]]] = {
    "make demo": ("the demo is its own test (tests/test_cli.py, marked slow: a minute or more with the runtime's "
                  "model build)", lambda s, c: make_recipe("demo", shows="/bin/dropwire demo")(s)),
    "make test": ("the suite itself", lambda s, c: make_recipe("test", shows="-m pytest")(s)),
    "make setup TORCH_PIP_ARGS=torch==2.13.0 --index-url <your CUDA wheel index>":
        ("installs from a CUDA wheel index (network, a GPU machine)",
         lambda s, c: make_recipe("setup", "TORCH_PIP_ARGS=torch==2.13.0 --index-url <your CUDA wheel index>",
                                  shows="pip install --quiet torch==2.13.0 --index-url <your CUDA wheel index>")(s)),
    'DROPWIRE_RUNTIME__TEXTGEN__MODELS=[{"name": "qwen", "path": "/models/Qwen2.5-0.5B-Instruct"},\n'
    '                                    {"name": "e5", "path": "/models/e5-small", "task": "embed"}] dropwire runtime serve':
        ("a long-running server of model directories this machine does not have", dropwire_help),
    'DROPWIRE_QUOTA__SERVICES={"batch-upstream": {"requests_per_minute": 60}} dropwire emulate':
        ("a second emulator on the data dir the first one holds; the one started above is the same command",
         dropwire_help),
    "DROPWIRE_RUNTIME__TEXTGEN__RATE_LIMIT_REQUESTS=60 dropwire runtime serve":
        ("a long-running server (tests/batches/test_batch_quota.py runs the runtime with a rate limit)", dropwire_help),
    "mkdocs serve": ("a long-running server (tests/test_docs.py builds the same site)", help_shows()),
    "mkdocs build": ("tests/test_docs.py builds the site (--strict, into a temporary folder)", help_shows()),
    "ray start --head --port 6379": ("a Ray cluster of several machines", help_shows("--head", "--port")),
    "ray start --address HEAD:6379": ("a Ray cluster of several machines", help_shows("--address")),
    "DROPWIRE_EVENTS__BUCKET_S3=team-data DROPWIRE_EVENTS__SQS_QUEUE_URL=QUEUE_URL DROPWIRE_MLFLOW_TRACKING_URI="
    "MLFLOW_SERVER_URL DROPWIRE_QUEUE__WORKERS=64 DROPWIRE_CONTROL_TCP_HOST=HEAD_PRIVATE_ADDRESS "
    "DROPWIRE_CONTROL_TCP_PORT=7470 DROPWIRE_CONTROL_AUTHKEY=SHARED_KEY dropwire emulate --executor ray "
    "--ray-address HEAD:6379":
        ("a Ray cluster, S3 and an MLflow server (tests/platform/test_ray.py runs a local cluster)", dropwire_help),
    "DROPWIRE_CONTROL_ADDRESS=HEAD:7470 DROPWIRE_CONTROL_AUTHKEY=SHARED_KEY dropwire worker":
        ("a control plane on another machine (tests/storage/test_processes.py runs workers over TCP)", dropwire_help),
    "dropwire runtime serve-ray --ray-address HEAD:6379 --replicas 2 --gpus 1":
        ("a Ray cluster with GPUs", dropwire_help),
}

# Python and TOML blocks, by their first line: run, or why not and what is checked instead.
OTHER: dict[str, tuple[str, Callable[[Session, Block], None]]] = {
    "from dropwire.functions.platform.registry import FunctionRegistry, OnUpload, OnSchedule, OnHttp, Output":
        ("run as written: the functions register", lambda s, b: s.run(shlex.join([sys.executable, "-c", b.text]))),
    "from openai import OpenAI":
        ("not run: needs `dropwire runtime serve` on 127.0.0.1:8765 (tests/runtime/ runs the official client against it); "
         "its import is checked", lambda s, b: s.run(shlex.join([sys.executable, "-c", b.text.splitlines()[0]]))),
    "import openai":
        ("not run: needs a requests.jsonl and the runtime's model (tests/batches/test_batch_api.py makes the same calls); "
         "its import is checked", lambda s, b: s.run(shlex.join([sys.executable, "-c", "import openai"]))),
    "[quota]": ("loaded as a settings file", lambda s, b: check_quota_toml(s, b)),
    "from dropwire.functions.training_analysis.client import TrainingAnalysisClient":
        ("not run: a sketch with placeholders (`MLFlowLogger(...)`, `run_id`); its imports are checked",
         lambda s, b: s.run(shlex.join([sys.executable, "-c", "\n".join(b.text.splitlines()[:2])]))),
}


def check_quota_toml(session: Session, block: Block) -> None:
    settings_file = session.cwd / "quota.toml"
    settings_file.write_text(block.text)
    shown = json.loads(session.run(f"dropwire --settings {settings_file} settings").stdout)["quota"]
    assert shown["wait_in_place_seconds"] == 2.0 and shown["services"]["batch-upstream"]["requests_per_minute"] == 500
    assert shown["services"]["batch-upstream"]["prices"]["gpt-4o-mini"] == [0.15, 0.60], shown


def test_every_command_of_the_readme_is_run_here_or_listed_with_its_reason():
    commands = [key(command) for command in shell_commands()]
    assert len(commands) == len(set(commands)), "a command appears twice; give the second its own entry"
    assert sorted(commands) == sorted([*RUN, *BACKGROUND, *NOT_RUN]), (
        f"in the README, not here: {sorted(set(commands) - {*RUN, *BACKGROUND, *NOT_RUN})}; "
        f"here, no longer in the README: {sorted({*RUN, *BACKGROUND, *NOT_RUN} - set(commands))}")
    assert sorted(other_blocks()) == sorted(OTHER), sorted(set(other_blocks()) ^ set(OTHER))


def test_the_readme_commands_run_as_written(tmp_path):
    session = Session(tmp_path)
    try:
        for command in shell_commands():
            if key(command) in BACKGROUND:
                session.start(command, BACKGROUND[key(command)])
                continue
            session.ready()
            if key(command) in RUN:
                RUN[key(command)](session, session.run(command).stdout)
            else:
                NOT_RUN[key(command)][1](session, command)
        for first_line, block in other_blocks().items():
            OTHER[first_line][1](session, block)
        # The whole queries the prose gives run too (on what the commands above left).
        queries = [c for c in inline_commands() if c.startswith('dropwire db query "SELECT') and "…" not in c]
        assert queries
        for query in queries:
            assert session.run(query).stdout.splitlines()[-1] in ("no rows", "1 row(s)"), query
        # The README's HTTP API answers on the port the settings gave it, nowhere else.
        assert httpx.get(f"http://127.0.0.1:{session.port}/health", timeout=10).json() == {"status": "ok"}
    finally:
        session.stop()


# ------------------------------------------------------------------ commands named in the prose

INLINE = re.compile(r"`(dropwire [^`]+)`")


def inline_commands() -> list[str]:
    """Each `dropwire ...` the README's prose names, alternatives (`a \\| b`) spelled out:
    `dropwire db current \\| upgrade` names `dropwire db current` and `dropwire db upgrade`."""
    found = []
    for span in (span for path in sources() for span in INLINE.findall(path.read_text())):
        alternatives = re.split(r" \\?\| ", " ".join(span.split()))
        group = alternatives[0].split()[:2]
        found += [alternatives[0], *(" ".join([*group, alternative]) for alternative in alternatives[1:])]
    return found


def test_every_dropwire_command_the_readme_names_exists_with_the_options_it_gives():
    from typer.main import get_command

    from dropwire.local_emulator.cli import app

    root = get_command(app)
    for command in inline_commands():
        words = command.split()[1:]
        where = root  # a group has `commands` (typer carries its own click)
        while words and hasattr(where, "commands") and words[0] in where.commands:
            where = where.commands[words.pop(0)]
        if words[:1] == ["--help"]:  # every group and command answers it
            continue
        assert not hasattr(where, "commands"), f"`{command}`: {where.name} needs one of {sorted(where.commands)}"
        known = {opt for param in where.params for opt in param.opts}
        for option in (word.strip("[]") for word in words if word.strip("[]").startswith("--")):
            assert option in known or (option.endswith("…") and any(k.startswith(option[:-1]) for k in known)), (
                f"`{command}`: {option} is not an option of it; it has {sorted(known)}")
