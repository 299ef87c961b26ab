"""Identity key: created 0600, reused, refused when it cannot be trusted, rotated."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.pb import crypto_pb2
from libp2p.crypto.secp256k1 import create_new_key_pair as create_secp256k1_key_pair
from libp2p.identity_utils import load_identity as libp2p_load_identity
from libp2p.identity_utils import save_identity as libp2p_save_identity

from unit_p2p.errors import IdentityError
from unit_p2p.identity import (
    id_command,
    load_identity,
    load_or_create_identity,
    peer_id_of,
    rotate_command,
    rotate_identity,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def refusal(path: Path) -> str:
    with pytest.raises(IdentityError) as info:
        load_identity(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


def test_created_0600_in_0700_directories_and_reused(tmp_path):
    key = tmp_path / "state" / "keys" / "identity.key"
    old_umask = os.umask(0)  # the mode must not depend on the caller's umask
    try:
        first = load_or_create_identity(key)
    finally:
        os.umask(old_umask)
    assert mode(key) == 0o600
    assert mode(tmp_path / "state") == 0o700 and mode(tmp_path / "state" / "keys") == 0o700
    assert key.stat().st_size == 36
    assert os.listdir(key.parent) == ["identity.key"]  # no temporary file left behind
    peer = peer_id_of(first)
    assert peer.startswith("12D3KooW")
    for _ in range(3):
        assert peer_id_of(load_or_create_identity(key)) == peer
        assert peer_id_of(load_identity(key)) == peer
    # the format is libp2p's own: both directions
    assert peer_id_of(libp2p_load_identity(key)) == peer
    other = create_new_key_pair()
    libp2p_save_identity(other, tmp_path / "theirs.key")
    assert peer_id_of(load_identity(tmp_path / "theirs.key")) == peer_id_of(other)


def test_existing_directory_mode_is_left_alone(tmp_path):
    tmp_path.chmod(0o755)
    load_or_create_identity(tmp_path / "identity.key")
    assert mode(tmp_path) == 0o755


def test_signing_works_with_the_loaded_key(tmp_path):
    key = tmp_path / "identity.key"
    created = load_or_create_identity(key)
    loaded = load_identity(key)
    signature = loaded.private_key.sign(b"mesh|7|digest")
    assert created.public_key.verify(b"mesh|7|digest", signature)


def test_concurrent_first_starts_agree_on_one_key(tmp_path):
    key = tmp_path / "identity.key"
    barrier = threading.Barrier(8)
    peers: list[str] = []

    def start():
        barrier.wait(timeout=10)
        peers.append(peer_id_of(load_or_create_identity(key)))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(peers) == 8 and len(set(peers)) == 1
    assert peer_id_of(load_identity(key)) == peers[0]
    assert os.listdir(tmp_path) == ["identity.key"]


def test_missing_key_without_create(tmp_path):
    key = tmp_path / "identity.key"
    message = refusal(key)
    assert f"create it with `unit-p2p id --key {key} --create`" in message
    with pytest.raises(IdentityError):
        load_or_create_identity(key, create=False)
    assert not key.exists()


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o660, 0o622, 0o607, 0o644, 0o777])
def test_loose_permissions_are_refused(tmp_path, loose):
    key = tmp_path / "identity.key"
    load_or_create_identity(key)
    key.chmod(loose)
    message = refusal(key)
    assert f"has mode {loose:04o}, open to group or others: chmod 600 {key}" in message
    with pytest.raises(IdentityError):
        load_or_create_identity(key)  # never "fixed" by creating a new key
    key.chmod(0o600)
    load_identity(key)


def test_owner_only_modes_are_accepted(tmp_path):
    key = tmp_path / "identity.key"
    peer = peer_id_of(load_or_create_identity(key))
    for ok in (0o400, 0o600, 0o700):
        key.chmod(ok)
        assert peer_id_of(load_identity(key)) == peer


def test_not_a_regular_file(tmp_path):
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)
    assert "is a directory, not a key file" in refusal(directory)
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    done: list[str] = []
    # a FIFO with no writer would block a plain open() forever
    reader = threading.Thread(target=lambda: done.append(refusal(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert done and "is a FIFO, not a key file" in done[0]


def test_symlink_to_a_good_key_is_followed_and_checked(tmp_path):
    key = tmp_path / "real.key"
    peer = peer_id_of(load_or_create_identity(key))
    link = tmp_path / "identity.key"
    link.symlink_to(key)
    assert peer_id_of(load_identity(link)) == peer
    key.chmod(0o644)
    assert "chmod 600" in refusal(link)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_key_owned_by_someone_else(tmp_path):
    key = tmp_path / "identity.key"
    load_or_create_identity(key)
    os.chown(key, 12345, -1)
    assert f"is owned by uid 12345, not by uid 0 that runs unit-p2p: chown 0 {key}" in \
        refusal(key)


def _pb(key_type: int, data: bytes) -> bytes:
    return crypto_pb2.PrivateKey(key_type=key_type, data=data).SerializeToString()


def test_bad_content_is_refused_without_showing_it(tmp_path):
    good = create_new_key_pair()
    seed = good.private_key.to_bytes()
    public = good.public_key.to_bytes()
    ed = crypto_pb2.KeyType.Ed25519
    cases = {
        b"": "it is empty",
        b"not a key at all\n": "it is not a libp2p private key",
        good.private_key.serialize() + b"\n": "it is not a libp2p private key",
        _pb(ed, seed) + _pb(ed, seed): "unexpected bytes around the key",
        create_secp256k1_key_pair().private_key.serialize():
            "it holds a Secp256k1 key, not Ed25519",
        _pb(ed, seed[:31]): "an Ed25519 key has 32 or 64 bytes, this one 31",
        _pb(ed, seed + create_new_key_pair().public_key.to_bytes()):
            "its public half does not belong to its private half",
        b"\x00" * 5000: "it is larger than 4096 bytes",
    }
    for i, (content, problem) in enumerate(cases.items()):
        key = tmp_path / f"bad{i}.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, content)
        os.close(fd)
        message = refusal(key)
        assert f"not a unit-p2p key file: {problem}" in message, (problem, message)
        assert f"`unit-p2p id --key {key} --create`" in message
        for secret in (seed, seed.hex(), seed.hex().upper()):
            assert str(secret) not in message
    # go-libp2p's 64-byte layout, consistent, is accepted
    key = tmp_path / "go.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, _pb(ed, seed + public))
    os.close(fd)
    assert peer_id_of(load_identity(key)) == peer_id_of(good)


def test_id_command(tmp_path, capsys):
    key = tmp_path / "identity.key"
    assert id_command(key, create=False) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"unit-p2p id: {key}: ")
    assert id_command(key, create=True) == 0
    out, err = capsys.readouterr()
    peer = out.strip()
    assert err == "" and out == peer + "\n" and peer == peer_id_of(load_identity(key))
    assert id_command(key, create=False) == 0
    assert capsys.readouterr().out == out
    key.chmod(0o644)
    assert id_command(key, create=True) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"chmod 600 {key}" in err and err.count("\n") == 1


def test_rotation_keeps_the_old_key(tmp_path, capsys):
    key = tmp_path / "identity.key"
    first = peer_id_of(load_or_create_identity(key))
    old, new = rotate_identity(key)
    assert old == first and new != first
    assert peer_id_of(load_identity(key)) == new
    assert peer_id_of(load_identity(tmp_path / "identity.key.old")) == first
    assert mode(key) == 0o600 and mode(tmp_path / "identity.key.old") == 0o600
    assert sorted(os.listdir(tmp_path)) == ["identity.key", "identity.key.old"]
    # a second rotation would lose the first key: refused until .old is removed
    with pytest.raises(IdentityError, match=r"identity\.key\.old: exists from an earlier"):
        rotate_identity(key)
    assert peer_id_of(load_identity(key)) == new
    (tmp_path / "identity.key.old").unlink()
    assert rotate_command(key) == 0
    old_new = capsys.readouterr().out.split()
    assert old_new[0] == new and old_new[1] == peer_id_of(load_identity(key))


def test_rotation_to_a_prepared_key(tmp_path):
    key = tmp_path / "identity.key"
    prepared = tmp_path / "identity.key.new"
    first = peer_id_of(load_or_create_identity(key))
    planned = peer_id_of(load_or_create_identity(prepared))
    with pytest.raises(IdentityError, match="holds the same key"):
        rotate_identity(key, key)
    assert rotate_identity(key, prepared) == (first, planned)
    assert peer_id_of(load_identity(key)) == planned
    assert not prepared.exists()
    assert peer_id_of(load_identity(tmp_path / "identity.key.old")) == first


def test_rotation_refuses_a_bad_prepared_or_current_key(tmp_path):
    key = tmp_path / "identity.key"
    first = peer_id_of(load_or_create_identity(key))
    prepared = tmp_path / "new.key"
    load_or_create_identity(prepared)
    prepared.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        rotate_identity(key, prepared)
    assert peer_id_of(load_identity(key)) == first
    assert not (tmp_path / "identity.key.old").exists()
    with pytest.raises(IdentityError, match="key file does not exist"):
        rotate_identity(tmp_path / "missing.key")


def test_the_loaded_key_does_not_show_its_secret(tmp_path):
    keypair = load_or_create_identity(tmp_path / "identity.key")
    seed = keypair.private_key.to_bytes()
    for text in (repr(keypair), str(keypair), repr(keypair.private_key), str(keypair.private_key)):
        for secret in (seed.hex(), repr(seed), str(list(seed))):
            assert secret not in text
