"""The bearer token of the API's loopback TCP listener, read the same way by agent and client."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from unit_p2p.errors import SettingsError

MIN_TOKEN = 16
# a token is one line of a few dozen characters; a bigger file is the wrong file
MAX_TOKEN_FILE = 4096


def read_token(path: Path, *, private: bool, key: str = "api_token_file") -> str:
    """The token in ``path`` (surrounding white space removed), or ``SettingsError``.

    ``private``: the file must not be open to others (mode 0600 or 0640): whoever can read the
    token can use the TCP listener, which would bypass the unix socket's mode 0660 and group.
    """
    source = str(path)
    try:
        # non-blocking: a FIFO in its place must not hang the agent
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise SettingsError(f"cannot read the token file: {exc.strerror or exc}",
                            source=source, key=key) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SettingsError("the token file is not a regular file", source=source, key=key)
        if private and st.st_mode & 0o007:
            raise SettingsError(
                f"has mode {stat.S_IMODE(st.st_mode):04o}, open to other users, who could use "
                f"the API with it: chmod 600 {source}", source=source, key=key)
        raw = os.read(fd, MAX_TOKEN_FILE + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_TOKEN_FILE:
        raise SettingsError(f"the token file is larger than {MAX_TOKEN_FILE} bytes",
                            source=source, key=key)
    token = raw.strip()
    if len(token) < MIN_TOKEN:
        raise SettingsError(f"the token must be at least {MIN_TOKEN} characters",
                            source=source, key=key)
    if not all(0x21 <= b <= 0x7E for b in token):
        raise SettingsError("the token must be one word of printable ASCII characters",
                            source=source, key=key)
    return token.decode("ascii")

