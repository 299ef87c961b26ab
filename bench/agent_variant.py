"""The stock agent with its liveness timing changed, for what-if runs only.

    BENCH_LIVENESS="interval,timeout,misses" python -m bench.agent_variant agent ...

The agent's code is untouched: this sets the defaults of ``LivenessParams`` (which the mesh
builds with no arguments) before running the normal CLI. Results of such runs are labelled as a
variant; the shipped defaults are what ``bench.convergence`` measures without
``--liveness``.
"""

from __future__ import annotations

import os
import sys

from unit_p2p.cli import main
from unit_p2p.mesh import liveness


def patch(spec: str) -> None:
    interval, timeout, misses = spec.split(",")
    liveness.LivenessParams.__init__.__defaults__ = (float(interval), float(timeout), int(misses))
    assert liveness.LivenessParams().timeout == float(timeout)


if __name__ == "__main__":
    patch(os.environ["BENCH_LIVENESS"])
    sys.exit(main())
