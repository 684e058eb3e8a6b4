"""Drops files into a folder bucket the ways people do, in random order and timing, for the
folder source's stress test: `mkdir -p` trees made at once, files written in place, written
slowly in pieces, written under a hidden name and renamed, written elsewhere and moved in,
and whole folders built elsewhere and renamed in. Every file is one JSON document, so a
handler that reads one half-way fails. Writes the manifest (key -> size) when done.

    python -m tests.platform.folder_writer BUCKET_DIR OUTSIDE_DIR PREFIX SEED FOLDERS FILES MANIFEST
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path


def document(key: str, rng: random.Random) -> bytes:
    return json.dumps({"key": key, "padding": "x" * rng.randint(0, 4000)}).encode()


def main(bucket: Path, outside: Path, prefix: str, seed: int, folders: int, files: int, manifest: Path) -> None:
    rng = random.Random(seed)
    # Folders: nested trees under a few new parents, some to be built elsewhere and renamed in.
    leaves = [f"{prefix}/g{i % 7}/t{i:03d}" + "".join(f"/d{j}" for j in range(rng.randint(0, 3))) for i in range(folders)]
    moved_in = set(rng.sample(range(folders), max(1, folders // 10)))
    placed = {i: [] for i in range(folders)}
    for n in range(files):
        placed[rng.randrange(folders)].append(n)
    sizes: dict[str, int] = {}
    lock = threading.Lock()

    def write(path: Path, data: bytes, how: str) -> None:
        if how == "direct":
            path.write_bytes(data)
        elif how == "rename":
            hidden = path.parent / f".{path.name}.writing"
            hidden.write_bytes(data)
            os.rename(hidden, path)
        elif how == "elsewhere":
            staged = outside / f"{path.name}.{rng.random()}"
            staged.write_bytes(data)
            os.rename(staged, path)
        else:  # slow: five pieces with pauses, the document whole only at the end
            with open(path, "wb") as out:
                step = max(1, len(data) // 5)
                for start in range(0, len(data), step):
                    out.write(data[start:start + step])
                    out.flush()
                    time.sleep(rng.uniform(0, 0.05))

    def fill(i: int, base: Path) -> None:
        for n in placed[i]:
            key = f"{leaves[i]}/f{n:04d}.json"
            data = document(key, rng)
            how = "direct" if i in moved_in else rng.choice(["direct", "rename", "elsewhere", "slow", "slow"])
            write(base / f"f{n:04d}.json", data, how)
            with lock:
                sizes[key] = len(data)
            time.sleep(rng.uniform(0, 0.003))

    def one_folder(i: int) -> None:
        if i in moved_in:  # built elsewhere, then renamed in whole
            staging = outside / f"build{i}"
            staging.mkdir(parents=True)
            fill(i, staging)
            target = bucket / leaves[i]
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, target)
        else:
            fill(i, bucket / leaves[i])

    order = list(range(folders))
    rng.shuffle(order)
    # mkdir -p of whole groups of trees at once, as a person makes a layout.
    for start in range(0, folders, 10):
        group = [bucket / leaves[i] for i in order[start:start + 10] if i not in moved_in]
        if group:
            subprocess.run(["mkdir", "-p", *map(str, group)], check=True)
        time.sleep(rng.uniform(0, 0.01))
    threads = [threading.Thread(target=lambda chunk=order[k::4]: [one_folder(i) for i in chunk]) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    manifest.write_text(json.dumps(sizes))


if __name__ == "__main__":
    bucket_dir, outside_dir, key_prefix, seed_text, folder_count, file_count, manifest_path = sys.argv[1:]
    main(Path(bucket_dir), Path(outside_dir), key_prefix, int(seed_text), int(folder_count), int(file_count),
         Path(manifest_path))
