"""The emulator's state directory, laid out like Unit's: ``conf.json``, ``certs/<name>`` and
``scripts/<name>`` (JS modules).

Every file is replaced atomically (write to a temporary file in the same directory, fsync,
rename, fsync the directory), so a crash never leaves a half-written configuration behind and a
restarted emulator comes back with the last configuration it acknowledged with 200.
All methods block; callers on the event loop run them in a worker thread.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, unquote

from unit_p2p.errors import EmulatorError
from unit_p2p.fsutil import atomic_write

__all__ = ["EmulatorError", "StateDir"]


class StateDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.conf_file = self.path / "conf.json"
        self.certs_dir = self.path / "certs"
        self.scripts_dir = self.path / "scripts"

    def prepare(self) -> None:
        try:
            self.certs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.scripts_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise EmulatorError(f"state dir {self.path}: {exc.strerror or exc}") from exc

    def read_config(self) -> bytes | None:
        try:
            return self.conf_file.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EmulatorError(f"{self.conf_file}: {exc.strerror or exc}") from exc

    def write_config(self, data: bytes) -> None:
        atomic_write(self.conf_file, data)

    def read_certificates(self) -> dict[str, bytes]:
        return self._read_all(self.certs_dir)

    def read_scripts(self) -> dict[str, bytes]:
        return self._read_all(self.scripts_dir)

    def _read_all(self, directory: Path) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        try:
            entries = sorted(directory.iterdir())
        except FileNotFoundError:
            return out
        for entry in entries:
            if not entry.name.startswith("c-"):
                continue
            try:
                out[unquote(entry.name[2:])] = entry.read_bytes()
            except OSError as exc:
                raise EmulatorError(f"{entry}: {exc.strerror or exc}") from exc
        return out

    @staticmethod
    def _entry(directory: Path, name: str) -> Path:
        # Certificate and module names are arbitrary strings ("." and ".." included); the
        # prefix and the quoting keep each one a single, safe file name.
        return directory / ("c-" + quote(name, safe=""))

    def write_certificate(self, name: str, pem: bytes) -> None:
        atomic_write(self._entry(self.certs_dir, name), pem)

    def delete_certificate(self, name: str) -> None:
        self._entry(self.certs_dir, name).unlink(missing_ok=True)

    def write_script(self, name: str, text: bytes) -> None:
        atomic_write(self._entry(self.scripts_dir, name), text)

    def delete_script(self, name: str) -> None:
        self._entry(self.scripts_dir, name).unlink(missing_ok=True)
