"""The agent's identity: one Ed25519 libp2p key in a file only its owner can read.

File format: the libp2p protobuf-serialized private key (``crypto.pb.PrivateKey``: ``Type =
Ed25519``, ``Data`` = the 32-byte seed), 36 bytes, exactly what py-libp2p's own
``save_identity`` writes. The 64-byte ``Data`` (seed followed by the public key) that go-libp2p
writes is accepted on load too, after checking that the two halves belong together.

The key file is created with ``O_CREAT | O_EXCL`` and mode 0600 under a temporary name, synced, and
then hard-linked to its final name, so a reader never sees a half-written key and two processes
starting at once end up with the same key. A key file is refused unless it is a regular file owned
by the current user with no group/other permission bits, and its content is exactly one Ed25519
key. Key material is never logged, printed or put in an error message.

These functions block on the file system; the agent calls them before its trio loop starts, or
through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import sys
from pathlib import Path

from google.protobuf.message import Error as ProtobufError
from libp2p.crypto.ed25519 import Ed25519PrivateKey, create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.pb import crypto_pb2
from libp2p.peer.id import ID

from unit_p2p.errors import IdentityError

# A key file is 36 bytes (68 in the go-libp2p layout); reading more would only hide a wrong file.
_MAX_KEY_FILE_BYTES = 4096
_SEED_BYTES = 32
_FILE_TYPES = {
    stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
}


def peer_id_of(keypair: KeyPair) -> str:
    """The peer ID (base58, ``12D3KooW...``) that ``keypair`` proves."""
    return ID.from_pubkey(keypair.public_key).to_base58()


def load_identity(path: Path) -> KeyPair:
    """The key in ``path``; ``IdentityError`` when it is missing or cannot be trusted."""
    return load_or_create_identity(path, create=False)


def load_or_create_identity(path: Path, create: bool = True) -> KeyPair:
    """The key in ``path``, created there first (mode 0600) when missing and ``create``."""
    path = Path(path)
    try:
        return _parse(path, _read_private_file(path))
    except FileNotFoundError:
        if not create:
            raise IdentityError(
                f"{path}: key file does not exist: create it with "
                f"`unit-p2p id --key {path} --create` (the agent creates it on first start)"
            ) from None
    return _create(path)


def rotate_identity(path: Path, new_key: Path | None = None) -> tuple[str, str]:
    """Replaces the key in ``path`` with a new one, keeping the old one as ``<path>.old``.

    The new key is ``new_key`` when given (prepared earlier with ``unit-p2p id --create`` so its
    peer ID could be trusted everywhere before the swap; the file is moved), else a fresh one.
    Returns (old peer ID, new peer ID). A running agent keeps its old identity until restarted.
    At every instant ``path`` holds one complete key, old or new.
    """
    path = Path(path)
    old = load_identity(path)
    if path.is_symlink():
        raise IdentityError(f"{path}: is a symlink: rotate the file it points to")
    old_path = path.with_name(path.name + ".old")
    if os.path.lexists(old_path):
        raise IdentityError(
            f"{old_path}: exists from an earlier rotation: once its peer ID is off every "
            "trusted_peers list, remove it and rotate again"
        )
    if new_key is not None:
        new_key = Path(new_key)
        new = load_identity(new_key)
        if peer_id_of(new) == peer_id_of(old):
            raise IdentityError(f"{new_key}: holds the same key as {path}")
        if os.stat(new_key).st_dev != os.stat(path.parent).st_dev:
            raise IdentityError(f"{new_key}: must be on the same file system as {path} (put it "
                                "in the same directory)")
        source, temporary = new_key, False
    else:
        new = create_new_key_pair()
        try:
            source, temporary = _write_temp(path, new.private_key.serialize()), True
        except OSError as err:
            raise IdentityError(f"{path}: cannot write the new key: {err.strerror}") from None
    try:
        # a hard link keeps the old key's inode, and with it its owner and 0600 mode
        os.link(path, old_path)
        os.replace(source, path)
    except OSError as err:
        raise IdentityError(f"{path}: cannot rotate the key: {err.strerror}") from None
    finally:
        if temporary:
            _unlink_quietly(source)
    _sync_dir(path.parent)
    return peer_id_of(old), peer_id_of(new)


def id_command(key: Path, create: bool) -> int:
    """``unit-p2p id``: prints the peer ID of ``key`` (creating it if asked); 0, or 2 on error."""
    try:
        keypair = load_or_create_identity(Path(key), create=create)
    except IdentityError as err:
        print(f"unit-p2p id: {err}", file=sys.stderr)
        return 2
    print(peer_id_of(keypair))
    return 0


def rotate_command(key: Path, new_key: Path | None = None) -> int:
    """``unit-p2p id --key FILE --rotate [--new-key NEW]``: prints "OLD NEW" peer IDs; 0, or 2."""
    try:
        old, new = rotate_identity(Path(key), new_key)
    except IdentityError as err:
        print(f"unit-p2p id: {err}", file=sys.stderr)
        return 2
    print(f"{old} {new}")
    return 0


# --- reading ------------------------------------------------------------------------------------


def _read_private_file(path: Path) -> bytes:
    """The bytes of ``path`` after checking, on the opened file itself, that only we can use it.

    Raises FileNotFoundError when it does not exist.
    """
    try:
        # O_NONBLOCK: a FIFO planted at the key's path must not hang the agent at open
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise
    except PermissionError:
        raise IdentityError(
            f"{path}: cannot read the key file: permission denied (running as uid "
            f"{os.geteuid()}): run unit-p2p as the key's owner"
        ) from None
    except OSError as err:
        raise IdentityError(f"{path}: cannot open the key file: {err.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = _FILE_TYPES.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise IdentityError(f"{path}: is {what}, not a key file: point --key at a key file")
        if st.st_uid != os.geteuid():
            raise IdentityError(
                f"{path}: is owned by uid {st.st_uid}, not by uid {os.geteuid()} that runs "
                f"unit-p2p: chown {os.geteuid()} {path}"
            )
        if st.st_mode & 0o077:
            raise IdentityError(
                f"{path}: has mode {stat.S_IMODE(st.st_mode):04o}, open to group or others: "
                f"chmod 600 {path} (and rotate the key if others could read it)"
            )
        chunks = []
        size = 0
        while size <= _MAX_KEY_FILE_BYTES:
            chunk = os.read(fd, _MAX_KEY_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError as err:
        raise IdentityError(f"{path}: cannot read the key file: {err.strerror}") from None
    finally:
        os.close(fd)


def _parse(path: Path, data: bytes) -> KeyPair:
    def bad(problem: str) -> IdentityError:
        return IdentityError(
            f"{path}: not a unit-p2p key file: {problem}: move it away and create a new key "
            f"with `unit-p2p id --key {path} --create` (new peer ID)"
        )

    if not data:
        raise bad("it is empty")
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise bad(f"it is larger than {_MAX_KEY_FILE_BYTES} bytes")
    try:
        message = crypto_pb2.PrivateKey.FromString(data)
    except ProtobufError:
        raise bad("it is not a libp2p private key (protobuf)") from None
    if message.SerializeToString() != data:
        raise bad("unexpected bytes around the key")
    if message.key_type != KeyType.Ed25519.value:
        raise bad(f"it holds a {crypto_pb2.KeyType.Name(message.key_type)} key, not "
                  "Ed25519")
    if len(message.data) not in (_SEED_BYTES, 2 * _SEED_BYTES):
        raise bad(f"an Ed25519 key has {_SEED_BYTES} or {2 * _SEED_BYTES} bytes, this "
                  f"one {len(message.data)}")
    try:
        private = Ed25519PrivateKey.from_bytes(message.data[:_SEED_BYTES])
    except Exception:
        raise bad("the key bytes are not a valid Ed25519 seed") from None
    public = private.get_public_key()
    if len(message.data) == 2 * _SEED_BYTES and message.data[_SEED_BYTES:] != public.to_bytes():
        raise bad("its public half does not belong to its private half")
    return KeyPair(private, public)


# --- writing ------------------------------------------------------------------------------------


def _create(path: Path) -> KeyPair:
    keypair = create_new_key_pair()
    try:
        _make_private_dirs(path.parent)
        tmp = _write_temp(path, keypair.private_key.serialize())
    except OSError as err:
        raise IdentityError(f"{path}: cannot create the key file: {err.strerror}") from None
    try:
        # link, unlike rename, fails when the name exists: never replace a key created meanwhile
        os.link(tmp, path)
    except FileExistsError:
        if path.is_symlink() and not path.exists():
            raise IdentityError(
                f"{path}: is a symbolic link to {os.readlink(path)}, which does not exist: point "
                "it at a key file, or remove the link to have a new key created") from None
        return load_identity(path)
    except OSError as err:
        raise IdentityError(f"{path}: cannot create the key file: {err.strerror}") from None
    finally:
        _unlink_quietly(tmp)
    _sync_dir(path.parent)
    return keypair


def _make_private_dirs(directory: Path) -> None:
    """Creates the missing directories of ``directory``, each mode 0700 (umask aside)."""
    missing = []
    while not os.path.isdir(directory):
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # made by a concurrent start, or a file (the write below then fails)
        os.chmod(d, 0o700)


def _write_temp(path: Path, data: bytes) -> Path:
    """``data`` in a new, synced, 0600 file next to ``path``; returns its name."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    return tmp


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _sync_dir(directory: Path) -> None:
    """Makes a new name in ``directory`` survive a power cut."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        if err.errno != errno.EINVAL:  # a file system that cannot sync directories
            raise IdentityError(f"{directory}: cannot sync the directory: {err.strerror}") \
                from None
