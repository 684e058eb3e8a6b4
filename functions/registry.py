"""How handlers and tasks are declared: a registry of named functions, the context they get,
and what they may return. The emulator's workers run what is registered here."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

import msgspec

from storage.errors import DropwireError
from storage.records import Effects, InvocationRecord


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


class PermanentTaskError(TaskFailed):
    """Raised by a task that can never succeed with these arguments: no retry, straight to
    the dead letters."""

    retryable = False


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


def load_registry(spec: str) -> TaskRegistry:
    """'package.module:attribute' -> the TaskRegistry it names."""
    module_name, _, attribute = spec.partition(":")
    try:
        registry = getattr(importlib.import_module(module_name), attribute or "registry")
    except (ImportError, AttributeError) as exc:
        raise DropwireError(f"cannot load the task registry {spec!r}: {exc}") from None
    if not isinstance(registry, TaskRegistry):
        raise DropwireError(f"{spec!r} is a {type(registry).__name__}, not a TaskRegistry")
    return registry
