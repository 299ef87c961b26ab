"""One agent process under a stream of bad API requests: does it stay up, and does it grow?

    python -m bench.api_abuse [--rounds 4] [--per-round 250]

Starts one real agent (unix socket and token-guarded loopback TCP listener) with its emulated
Unit, then sends rounds of bad requests, cycling through: a POST whose body is shorter than its
Content-Length then a hang-up (FIN, and RST), duplicate keys, NaN, 1,000-deep nesting, bytes that
are not HTTP, an oversize Content-Length, an unknown route, TCP without the token, and (in a
concurrent batch per round) heads that never finish (answered 408 after the head timeout).
After each round it prints the agent's RSS, open descriptors and CPU seconds from /proc, and
checks that `status` still answers. Also prints the import cost of the API server module next to
hypercorn's (when hypercorn is installed), measured in fresh interpreters.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from unit_p2p.fleet import Fleet, free_ports

TOKEN = "bench-token-0123456789abcdef"
PARTIAL = (b"POST /v1/publish HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
           b"Content-Length: 1000\r\n%s\r\n{")


def proc_stats(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"rss_mib": rss_kb / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "cpu_s": (int(fields[11]) + int(fields[12])) / ticks}


async def connect(address: str) -> trio.SocketStream:
    if address.startswith("unix:"):
        return await trio.open_unix_socket(address[len("unix:"):])
    host, _, port = address.rpartition(":")
    return await trio.open_tcp_stream(host, int(port))


async def send_and_read(address: str, data: bytes, *, hang_up: bool = False,
                        reset: bool = False) -> int | None:
    stream = await connect(address)
    try:
        await stream.send_all(data)
        if reset:
            import socket
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01" + b"\x00" * 7)
        if hang_up or reset:
            return None
        answer = b""
        while len(answer) < 64 and (chunk := await stream.receive_some(4096)):
            answer += chunk
        return int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else None
    except (trio.BrokenResourceError, OSError):
        return None
    finally:
        await stream.aclose()


async def slow_head(address: str, statuses: dict) -> None:
    code = await send_and_read(address, b"GET /v1/status HTTP/1.1\r\nHo")
    statuses[code] = statuses.get(code, 0) + 1


def bad_requests(unix: str, tcp: str):
    auth = b"Authorization: Bearer %s\r\n" % TOKEN.encode()

    def post(body: bytes, extra: bytes = b"") -> bytes:
        return (b"POST /v1/publish HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n%s\r\n%s"
                % (len(body), extra, body))

    return [
        (unix, PARTIAL % b"", {"hang_up": True}),
        (tcp, PARTIAL % auth, {"hang_up": True}),
        (unix, PARTIAL % b"", {"reset": True}),
        (unix, post(b'{"dry_run": true, "dry_run": false}'), {}),
        (unix, post(b'{"timeout": NaN}'), {}),
        (unix, post(b'{"config": ' + b"[" * 1000 + b"]" * 1000 + b"}"), {}),
        (unix, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n", {}),
        (unix, b"POST /v1/publish HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999999\r\n\r\n", {}),
        (unix, b"GET /v1/nothing HTTP/1.1\r\nHost: a\r\n\r\n", {}),
        (tcp, post(b"{}"), {}),
    ]


async def run(rounds: int, per_round: int) -> None:
    with tempfile.TemporaryDirectory(prefix="api-abuse-") as tmp:
        base = Path(tmp)
        token_file = base / "token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        tcp = f"127.0.0.1:{free_ports(1)[0]}"
        async with trio.open_nursery() as nursery:
            fleet = Fleet(base, nursery, 1)
            agent = fleet[0]
            agent.extra_args = ["--api-tcp", tcp, "--api-token-file", str(token_file),
                                "--log-level", "warning", "--no-mdns"]
            try:
                with trio.fail_after(60):
                    await fleet.start()
                pid = agent.proc.pid
                for _ in range(100):  # warm-up: every code path of a good request once
                    await agent.call("status")
                print(f"load {os.getloadavg()[0]:.2f}; agent pid {pid}")
                print("requests  rss_mib  fds  cpu_s  statuses")
                print(f"{0:>8}  {proc_stats(pid)['rss_mib']:7.1f}  {proc_stats(pid)['fds']:3}  "
                      f"{proc_stats(pid)['cpu_s']:5.2f}  (after 100 good requests)")
                menu = bad_requests(agent.api, tcp)
                sent = 0
                for _ in range(rounds):
                    statuses: dict[int | None, int] = {}
                    slow = min(50, per_round // 5)
                    async with trio.open_nursery() as batch:  # heads that never finish: 408

                        for _ in range(slow):
                            batch.start_soon(slow_head, agent.api, statuses)
                        for i in range(per_round - slow):
                            address, data, how = menu[(sent + i) % len(menu)]
                            code = await send_and_read(address, data, **how)
                            statuses[code] = statuses.get(code, 0) + 1
                    sent += per_round
                    assert agent.proc.poll() is None, agent.log_tail()
                    await agent.call("status")
                    s = proc_stats(pid)
                    shown = " ".join(f"{k}:{v}" for k, v in sorted(statuses.items(), key=str))
                    print(f"{sent:>8}  {s['rss_mib']:7.1f}  {s['fds']:3}  {s['cpu_s']:5.2f}  "
                          f"{shown}")
            finally:
                fleet.stop()
                nursery.cancel_scope.cancel()


IMPORT_PROBE = """
import sys, importlib
before = set(sys.modules)
for name in sys.argv[1:]:
    importlib.import_module(name)
rss = next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]
print(int(rss) / 1024, len(set(sys.modules) - before))
"""


def import_cost() -> None:
    def probe(*modules: str) -> tuple[float, int] | None:
        r = subprocess.run([sys.executable, "-c", IMPORT_PROBE, *modules], capture_output=True,
                           text=True)
        if r.returncode:
            return None
        rss, count = r.stdout.split()
        return float(rss), int(count)

    base = probe("trio", "unit_p2p.errors", "unit_p2p.metrics", "unit_p2p.jsonstrict")
    rows = [("unit_p2p.api.server (h11)", probe("trio", "unit_p2p.errors", "unit_p2p.metrics",
                                                "unit_p2p.jsonstrict", "unit_p2p.api.server")),
            ("hypercorn.trio + hypercorn.config", probe("trio", "unit_p2p.errors",
                                                         "unit_p2p.metrics", "unit_p2p.jsonstrict",
                                                         "hypercorn.config", "hypercorn.trio"))]
    print(f"\nimport cost in a fresh interpreter, over trio + unit_p2p.metrics "
          f"({base[0]:.1f} MiB):")
    for name, got in rows:
        if got is None:
            print(f"  {name}: not installed")
            continue
        print(f"  {name}: +{got[0] - base[0]:.1f} MiB RSS, +{got[1] - base[1]} modules")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=250)
    args = parser.parse_args()
    trio.run(run, args.rounds, args.per_round)
    import_cost()


if __name__ == "__main__":
    main()
