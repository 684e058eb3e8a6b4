"""Admits object events (new versions, duplicates, re-orders) from several threads until
killed; a test kills it with SIGKILL mid-write and checks that every receipt has its task and
every object task its receipt: the two commit in one transaction."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from dropwire.storage.records import ObjectReceipt, TaskSpec
from dropwire.storage.store import Store


def offer(function: str, key: str, version: int) -> tuple[ObjectReceipt, TaskSpec]:
    return (ObjectReceipt(function=function, bucket="local", key=key, version=f"v{version}", sequencer=f"{version:08X}",
                          event_name="ObjectCreated:Put"),
            TaskSpec(name=f"fn:{function}", args={"key": key, "version": version}))


def main(path: str) -> None:
    store = Store.open(Path(path))
    printing = threading.Lock()  # print() writes the text and the newline apart: threads would interleave them

    def admitter(n: int) -> None:
        i = 0
        while True:
            key = f"incoming/{n}-{i // 3}.csv"
            # A batch with two functions, a duplicate and a stale re-order of the same key.
            store.receipts.admit([offer("a", key, i % 3 + 1), offer("b", key, i % 3 + 1), offer("a", key, i % 3 + 1),
                         offer("a", key, max(i % 3, 1))])
            i += 1
            if i % 50 == 0:
                with printing:
                    print(f"admitted {i}", flush=True)

    for n in range(3):
        threading.Thread(target=admitter, args=(n,), daemon=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1])
