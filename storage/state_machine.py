"""A small declarative state machine engine: a machine is a table of allowed transitions
(from, to, trigger, optional guard). The store validates every transition against it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from dropwire.functions.kit.errors import DropwireError, IllegalTransition


@dataclass(frozen=True)
class GuardContext:
    entity_id: str
    state: str
    previous_state: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Transition:
    source: str
    dest: str
    trigger: str
    guard: Callable[[GuardContext], bool] | None = None
    #: What the guard demands, for error messages ("only back to the state it was suspended from").
    guard_description: str = ""


class UnknownState(IllegalTransition):
    code = "unknown_state"


@dataclass(frozen=True)
class StateMachine:
    kind: str
    states: type[StrEnum]
    initial: str
    transitions: tuple[Transition, ...]
    _by_source: dict[str, tuple[Transition, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = {s.value for s in self.states}
        if self.initial not in names:
            raise DropwireError(f"machine {self.kind}: initial state {self.initial} is not one of its states")
        by_source: dict[str, list[Transition]] = {}
        for t in self.transitions:
            for end in (t.source, t.dest):
                if end not in names:
                    raise DropwireError(f"machine {self.kind}: transition {t.source} -> {t.dest} names unknown state {end}")
            by_source.setdefault(t.source, []).append(t)
        object.__setattr__(self, "_by_source", {k: tuple(v) for k, v in by_source.items()})

    @property
    def state_names(self) -> frozenset[str]:
        return frozenset(s.value for s in self.states)

    def allowed(self, state: str) -> tuple[Transition, ...]:
        return self._by_source.get(state, ())

    def is_terminal(self, state: str) -> bool:
        return not self.allowed(state)

    def resolve(
        self,
        context: GuardContext,
        *,
        trigger: str | None = None,
        to_state: str | None = None,
    ) -> Transition:
        """The one transition that `trigger` (or a move to `to_state`) takes from the current
        state, or an IllegalTransition that names the entity, its state and what is allowed."""
        if to_state is not None and to_state not in self.state_names:
            raise UnknownState(
                f"{self.kind} {context.entity_id}: there is no state {to_state!r}; "
                f"states are {sorted(self.state_names)}",
                kind=self.kind, entity_id=context.entity_id, state=context.state, requested=to_state,
            )
        candidates = [
            t for t in self.allowed(context.state)
            if (trigger is None or t.trigger == trigger) and (to_state is None or t.dest == to_state)
        ]
        passing = [t for t in candidates if t.guard is None or t.guard(context)]
        if len(passing) == 1:
            return passing[0]
        asked = f"trigger {trigger!r}" if trigger else f"a move to {to_state}"
        allowed = ", ".join(f"{t.trigger} -> {t.dest}" for t in self.allowed(context.state)) or "none (terminal state)"
        if not candidates:
            why = "is not allowed"
        elif not passing:
            why = "is blocked by its guard (" + "; ".join(t.guard_description or "guard refused" for t in candidates) + ")"
        else:
            why = "is ambiguous: name the target state too"
        raise IllegalTransition(
            f"{self.kind} {context.entity_id} is in state {context.state}: {asked} {why}. Allowed next: {allowed}",
            kind=self.kind,
            entity_id=context.entity_id,
            state=context.state,
            allowed=[f"{t.trigger} -> {t.dest}" for t in self.allowed(context.state)],
        )


def machine_registry(machines: Iterable[StateMachine]) -> dict[str, StateMachine]:
    registry: dict[str, StateMachine] = {}
    for machine in machines:
        if machine.kind in registry:
            raise DropwireError(f"two machines share the kind {machine.kind!r}")
        registry[machine.kind] = machine
    return registry
