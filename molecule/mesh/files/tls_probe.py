#!/usr/bin/env python3
"""A real TLS client for the mesh scenario, run inside a container with the container's own
python3 (its ssl module is OpenSSL): connects, verifies the chain against the scenario's CA and
the server name, sends one HTTP request and prints what it saw as JSON.

    tls_probe.py HOST PORT SERVER_NAME CA_FILE PATH

Output: {"fingerprint": "sha256:<hex of the served leaf's DER>", "status": <HTTP status>,
"protocol": "TLSv1.3", "subject": [...]}; a failed connection or verification exits 1 with the
reason on stderr.
"""

import hashlib
import json
import socket
import ssl
import sys


def main(host, port, server_name, ca_file, path):
    context = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
        subject = tls.getpeercert().get("subject")
        request = f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n"
        tls.sendall(request.encode())
        answer = b""
        while b"\r\n" not in answer:
            chunk = tls.recv(4096)
            if not chunk:
                break
            answer += chunk
        protocol = tls.version()
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    print(json.dumps({
        "fingerprint": "sha256:" + hashlib.sha256(der).hexdigest(),
        "status": int(status_line.split()[1]) if status_line.startswith("HTTP/") else None,
        "status_line": status_line,
        "protocol": protocol,
        "subject": subject,
    }))


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit("usage: tls_probe.py HOST PORT SERVER_NAME CA_FILE PATH")
    try:
        main(*sys.argv[1:])
    except (OSError, ssl.SSLError) as exc:
        sys.exit(f"tls_probe: {sys.argv[1]}:{sys.argv[2]}: {exc}")
