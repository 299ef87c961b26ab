"""Fuzz every wire decoder with 100k generated inputs (the CI test runs a few thousand).

    python -m bench.fuzz_wire [--examples 100000]

Prints inputs run, accepted, rejected by reason, and crashes (any exception other than the
decoder's own error type: must be 0).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

from hypothesis import HealthCheck, given, settings

from tests.sync.wire_strategies import DIGEST, any_input, check_accepted
from unit_p2p.errors import SyncError, WireError
from unit_p2p.sync import wire
from unit_p2p.sync.revision import Document


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=100_000)
    args = parser.parse_args()
    counts: collections.Counter[str] = collections.Counter()
    crashes: list[tuple[bytes, BaseException]] = []

    @settings(max_examples=args.examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(any_input)
    def run(data: bytes) -> None:
        counts["inputs"] += 1
        for name, decode, expected in (
            ("decode", wire.decode, WireError),
            ("decode_served", lambda d: wire.decode_served(d, DIGEST, 1 << 20), WireError),
            ("document", lambda d: Document.from_bytes(d, DIGEST), SyncError),
        ):
            try:
                result = decode(data)
            except expected as exc:
                counts[f"{name}:rejected:{exc.reason}"] += 1
                continue
            except Exception as exc:  # a crash: the whole point is that there are none
                crashes.append((data, exc))
                continue
            counts[f"{name}:accepted"] += 1
            if name == "decode":
                check_accepted(result)

    started = time.monotonic()
    run()
    elapsed = time.monotonic() - started
    print("| decoder outcome | count |\n|---|---|")
    for key, value in sorted(counts.items()):
        print(f"| {key} | {value} |")
    print(f"\n{counts['inputs']} inputs in {elapsed:.1f} s, crashes: {len(crashes)}")
    for data, exc in crashes[:5]:
        print(f"  {type(exc).__name__}: {exc} on {data[:80]!r}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
