"""Writes transitions and tasks from several threads until killed; a test kills it with
SIGKILL mid-write and checks that the file opens and is consistent."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from dropwire.functions.evaluation.states import MACHINES
from dropwire.storage.records import TaskSpec
from dropwire.storage.store import Store
from tests.storage.helpers import CYCLE


def main(path: str) -> None:
    store = Store.open(Path(path), [*MACHINES, CYCLE])

    def writer(n: int) -> None:
        i = 0
        while True:
            entity = f"w{n}-{i}"
            store.states.create("cycle", entity, triggered_by="writer")
            for _ in range(3):
                store.states.transition("cycle", entity, trigger="next", triggered_by="writer", tasks=[TaskSpec(name="t", args=i)])
            claimed = store.queue.claim(f"writer-{n}", limit=3)
            for task in claimed:
                store.queue.complete(task.id, task.token)
            i += 1
            if i == 5:
                print("writing", flush=True)

    for n in range(4):
        threading.Thread(target=writer, args=(n,), daemon=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1])
