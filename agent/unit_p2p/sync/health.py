"""The health gate: after this host applied a revision, does its Unit still serve?

An HTTP GET to a local URL served through Unit (``health_url``), expecting a status class
(``health_status``, e.g. ``2xx``), each try bounded by ``health_timeout``; passed when
``health_attempts`` tries in a row, ``health_interval`` apart, all pass (a gate that must hold for
a while, not a single lucky answer: a crashing application answers the first request too). The
result is what this host reports for the revision (``applied``, or ``failed`` with the reason),
which a staged rollout's driver (sync/rollout.py) counts before it opens the next wave.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass

import requests
import trio
from urllib3.exceptions import InsecureRequestWarning

from unit_p2p.settings import Settings

log = logging.getLogger("unit_p2p.sync.health")

# A loopback HTTPS listener of Unit serves a certificate for the site's names, not for
# 127.0.0.1: the gate checks that Unit serves (verify=False), not who it is. Said once here
# rather than in a warning per try (the tries run in worker threads, where catch_warnings is not
# safe).
warnings.filterwarnings("ignore", category=InsecureRequestWarning)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    #: why it failed (None when it passed): the first failing try, and how many tries ran
    reason: str | None = None


class HealthGate:
    """``check()`` runs the configured gate; without ``health_url`` every check passes."""

    def __init__(self, settings: Settings):
        self.url = settings.health_url
        self.expected = settings.health_status
        self.timeout = settings.health_timeout
        self.attempts = settings.health_attempts
        self.interval = settings.health_interval

    @property
    def configured(self) -> bool:
        return self.url is not None

    def describe(self) -> dict | None:
        if self.url is None:
            return None
        return {"url": self.url, "status": self.expected, "timeout": self.timeout,
                "attempts": self.attempts, "interval": self.interval}

    async def check(self) -> GateResult:
        if self.url is None:
            return GateResult(True)
        with requests.Session() as session:
            # the URL is this host's own loopback listener: no proxy from the environment
            session.trust_env = False
            for attempt in range(1, self.attempts + 1):
                if attempt > 1:
                    await trio.sleep(self.interval)
                problem = await self._try(session)
                if problem is not None:
                    reason = (f"health_gate: GET {self.url} {problem}, expected "
                              f"{self.expected} (try {attempt} of {self.attempts})")
                    log.warning("%s", reason)
                    return GateResult(False, reason[:480])
        return GateResult(True)

    async def _try(self, session: requests.Session) -> str | None:
        """None when the answer's status is in the expected class, else what happened."""
        get = functools.partial(_get, session, self.url, self.timeout)
        try:
            # requests' timeout bounds each phase, not the whole exchange: this one does
            with trio.fail_after(self.timeout + 1):
                status = await trio.to_thread.run_sync(get, abandon_on_cancel=True)
        except (requests.RequestException, trio.TooSlowError, OSError) as exc:
            return f"failed ({type(exc).__name__}: {str(exc)[:160] or 'no answer'})"
        if not status_matches(status, self.expected):
            return f"answered {status}"
        return None


def _get(session: requests.Session, url: str, timeout: float) -> int:
    answer = session.get(url, timeout=timeout, verify=False, allow_redirects=False, stream=True)
    answer.close()
    return answer.status_code


def status_matches(status: int, expected: str) -> bool:
    """``expected`` is a class (``2xx``) or an exact status (``204``)."""
    if expected.endswith("xx"):
        return str(status)[0] == expected[0]
    return str(status) == expected
