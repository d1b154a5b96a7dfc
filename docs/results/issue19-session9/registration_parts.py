"""Client-side CPU and wall ms per request of what the registration does per image, on 10 AGH fields against
a moto S3 server (environment as in session 8's overhead.sh: HEP2_S3_* set, database migrated): HEAD, the full
GET, SHA-256 of the bytes, the sidecar probe (a 404), and a PUT for comparison. Best of 3 passes."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from db.migrate import upgrade
from hep2.storage import ObjectNotFoundError, storage_from_settings

FIELDS = Path("/work/shared/data/agh-fields")


def per_key_ms(keys: list[str], call: Callable[[str], object], passes: int = 3) -> tuple[float, float]:
    """(CPU, wall) ms per key of the best pass."""
    best = []
    for _ in range(passes):
        cpu, wall = time.process_time(), time.perf_counter()
        for key in keys:
            call(key)
        best.append(((time.process_time() - cpu) * 1000 / len(keys), (time.perf_counter() - wall) * 1000 / len(keys)))
    return min(best)


def main() -> None:
    upgrade()
    storage = storage_from_settings()
    keys = []
    for path in sorted(FIELDS.glob("*.png"))[:10]:
        keys.append(f"inbox/parts/{path.name}")
        storage.put(keys[-1], path.read_bytes())
    data = {key: storage.fetch(key).data for key in keys}

    def sidecar_probe(key: str) -> None:
        with contextlib.suppress(ObjectNotFoundError):
            storage.get(key + ".json")

    for name, call in (("head", storage.head), ("fetch", storage.fetch),
                       ("sha256", lambda k: hashlib.sha256(data[k]).hexdigest()), ("sidecar 404", sidecar_probe),
                       ("put", lambda k: storage.put(k + ".copy", data[k]))):
        cpu, wall = per_key_ms(keys, call)
        print(f"{name}: cpu {cpu:.2f} ms, wall {wall:.2f} ms")


if __name__ == "__main__":
    main()
