"""How handlers and tasks are declared: a registry of named functions, the context they get,
and what they may return. The emulator's workers run what is registered here."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from dropwire.functions.kit.errors import DropwireError
from dropwire.storage.records import Effects, InvocationRecord, WaitFor

T = TypeVar("T")


class Completion(msgspec.Struct, kw_only=True, frozen=True):
    """What a task function may return: a result to store, effects (transitions, follow-up
    tasks) that commit in the same transaction as the task's completion, and the record of
    the handler invocation it ran, if any."""

    result: Any = None
    effects: Effects = Effects()
    invocation: InvocationRecord | None = None


class TaskFailed(DropwireError):
    """A failed attempt, with the invocation record to log beside it."""

    retryable = True

    def __init__(self, message: str, *, traceback: str | None = None, invocation: InvocationRecord | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback
        self.invocation = invocation


class ExecutorLost(DropwireError):
    """Where the task was running is gone (e.g. the whole Ray cluster): the worker stops
    heartbeating it, so its lease lapses and the queue hands it out again; nothing is lost.
    `started` False: found before the task was handed over, so it goes back at once."""

    code = "executor_lost"

    def __init__(self, message: str, *, started: bool = True) -> None:
        super().__init__(message)
        self.started = started


class PermanentTaskError(TaskFailed):
    """Raised by a task that can never succeed with these arguments: no retry, straight to
    the dead letters."""

    retryable = False


class Refused(TaskFailed):
    """The handler refuses what the user asked, and says why: a retry in the wrong state, an
    upload not taken in this state, a file that breaks the layout. The user's to fix, so it is
    final and never a dead letter: the task ends `refused`, its invocation records the message."""

    code = "refused"
    retryable = False


class NotYet(TaskFailed):
    """The handler's prerequisite is not there yet (e.g. a config whose use case has not
    landed): not a failure. The task waits and runs again once a change of the entity it waits
    for commits (or its re-check with backoff comes), for at most queue.wait_max_seconds; then
    it is refused with this same message. `version` is the entity's version the handler saw
    (0: it does not exist), so a change that committed while the handler ran is not missed."""

    code = "not_yet"
    retryable = False

    def __init__(self, message: str, *, kind: str, entity_id: str, version: int = 0,
                 invocation: InvocationRecord | None = None) -> None:
        super().__init__(message, invocation=invocation)
        self.waits_for = WaitFor(kind=kind, entity_id=entity_id, seen_version=version)


@dataclass(frozen=True)
class TaskContext:
    task_id: int
    name: str
    attempt: int
    max_attempts: int
    worker: str
    logger: logging.Logger


@dataclass(frozen=True)
class RegisteredTask:
    name: str
    fn: Callable[[Any, TaskContext], Completion | None]
    args_type: Any


class TaskRegistry:
    def __init__(self) -> None:
        self._tasks: dict[str, RegisteredTask] = {}

    def task(self, name: str, *, args_type: Any = Any) -> Callable:
        """Register `fn(args, context)`; `args_type` is what the msgspec-encoded arguments decode to."""

        def register(fn: Callable) -> Callable:
            if name in self._tasks:
                raise DropwireError(f"task {name!r} is registered twice")
            self._tasks[name] = RegisteredTask(name, fn, args_type)
            return fn

        return register

    def names(self) -> frozenset[str]:
        return frozenset(self._tasks)

    def get(self, name: str) -> RegisteredTask:
        return self._tasks[name]


def load_named(spec: str, kind: type[T], default_attribute: str) -> T:
    """'package.module:attribute' -> the object it names, which must be a `kind`."""
    module_name, _, attribute = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attribute or default_attribute)
    except (ImportError, AttributeError) as exc:
        raise DropwireError(f"cannot load the {kind.__name__} {spec!r}: {exc}") from None
    if not isinstance(found, kind):
        raise DropwireError(f"{spec!r} is a {type(found).__name__}, not a {kind.__name__}")
    return found


def load_registry(spec: str) -> TaskRegistry:
    return load_named(spec, TaskRegistry, "registry")
