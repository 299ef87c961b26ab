"""Settings: file < environment < flags, and one clear line for every kind of bad input."""

from __future__ import annotations

import argparse
import dataclasses
import os
import pwd
import select
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from unit_p2p.errors import SettingsError
from unit_p2p.settings import (
    DEFAULT_CONFIG_FILE,
    SETTING_NAMES,
    Settings,
    add_agent_arguments,
    check_settings,
    flags_from_args,
    load_settings,
    settings_from_args,
    settings_to_yaml,
)

from .conftest import new_peer_id

OPEN = {"UNIT_P2P_TRUST": "any"}  # lets a test leave trusted_peers empty


def load(tmp_path: Path, config: Path | None = None, env=None, flags=None) -> Settings:
    return load_settings(config, OPEN if env is None else env, flags or {},
                         default_config_file=tmp_path / "absent.yaml")


def write(tmp_path: Path, text: str | bytes, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str | bytes, env=None, flags=None) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as info:
        load(tmp_path, path, env, flags)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


# --- each kind of bad file ----------------------------------------------------------------------

BAD_FILES = [
    # (file text, where (source:line: key), what)
    ("listn: []\n", ":1: listn:", "unknown key (did you mean 'listen'?)"),
    ("trust: any\ntrusted-peers: []\n", ":2: trusted-peers:", "did you mean 'trusted_peers'?"),
    ("mesh: 123\n", ":1: mesh:", 'expected a string, got integer 123 (quote it: "123")'),
    ("mesh: 2024-01-01\n", ":1: mesh:", "expected a string, got date '2024-01-01'"),
    ("listen: /ip4/127.0.0.1/tcp/1\n", ":1: listen:", "expected a list of strings, got string"),
    ("listen: [/ip4/127.0.0.1/tcp/1, 7]\n", ":1: listen[1]:", "expected a string, got integer"),
    ("mdns: 'yes'\n", ":1: mdns:", "expected true or false, got string 'yes'"),
    ("keep_configs: 2.5\n", ":1: keep_configs:", "expected an integer, got number 2.5"),
    ("keep_configs: true\n", ":1: keep_configs:", "expected an integer, got boolean"),
    ("unit_timeout: fast\n", ":1: unit_timeout:", "expected a number, got string 'fast'"),
    ("unit_timeout: .inf\n", ":1: unit_timeout:", "expected a finite number"),
    ("unit_timeout: .nan\n", ":1: unit_timeout:", "expected a finite number"),
    ("state_dir: null\n", ":1: state_dir:", "expected a path (string), got null"),
    ("state_dir: ''\n", ":1: state_dir:", "must not be empty"),
    ("api_group: [a]\n", ":1: api_group:", "expected a string or null, got list"),
    ("listen:\n  - /ip4/127.0.0.1/tcp/1\n  - /ip4/300.1.1.1/tcp/1\n", ":3: listen[1]:",
     "bad multiaddr '/ip4/300.1.1.1/tcp/1': base address '300.1.1.1' is not IPv4"),
    ("listen: [/ip4/127.0.0.1/tcp/70000]\n", ":1: listen[0]:", "bad multiaddr"),
    ("listen: [ip4/127.0.0.1/tcp/1]\n", ":1: listen[0]:", "is not a multiaddr (it must start"),
    ("listen: [/ip4/127.0.0.1/udp/1/quic-v1]\n", ":1: listen[0]:", "is not a TCP listen address"),
    ("listen: [/dns4/example.com/tcp/1]\n", ":1: listen[0]:", "is not a TCP listen address"),
    ("listen: []\n", ":1: listen:", "needs at least one address"),
    ("bootstrap: [/ip4/10.0.0.2/tcp/9461]\n", ":1: bootstrap[0]:", "/p2p/<peer id>"),
    ("bootstrap: [/ip4/10.0.0.2/tcp/0/p2p/{peer}]\n", ":1: bootstrap[0]:", "bad TCP port"),
    ("bootstrap: [/ip4/10.0.0.2/tcp/1/p2p/nope]\n", ":1: bootstrap[0]:", "bad multiaddr"),
    ("trust: allowlist\ntrusted_peers: [12D3KooWgarbage]\n", ":2: trusted_peers[0]:",
     "'12D3KooWgarbage' is not a peer ID"),
    ("trusted_peers:\n  - {peer}\n  - abc\n", ":3: trusted_peers[1]:", "'abc' is not a peer ID"),
    ("trusted_peers: ['{peer} ']\n", ":1: trusted_peers[0]:", "is not a peer ID"),
    ("unit: /var/run/control.unit.sock\n", ":1: unit:", "expected unix:/path/to/control.sock or"),
    ("unit: unix:control.sock\n", ":1: unit:", "socket path must be absolute"),
    ("unit: http://10.1.2.3:8080\n", ":1: unit:", "is not on loopback"),
    ("unit: http://127.0.0.1:8080/config\n", ":1: unit:", "with no path"),
    ("unit: http://127.0.0.1\n", ":1: unit:", "is not HOST:PORT"),
    ("api: http://127.0.0.1:80\n", ":1: api:", "expected unix:/path/to/api.sock"),
    ("api_tcp: 0.0.0.0:8080\napi_token_file: /t\n", ":1: api_tcp:", "is not on loopback"),
    ("api_tcp: 127.0.0.1:99999\napi_token_file: /t\n", ":1: api_tcp:", "bad TCP port"),
    ("api_tcp: 127.0.0.1:8080\n", ":1: api_tcp:", "requires api_token_file"),
    ("api_group: 'a b'\n", ":1: api_group:", "is not a group name"),
    ("trust: anyone\n", ":1: trust:", "'anyone' is not one of allowlist, any"),
    ("exclusions: ['']\n", ":1: exclusions[0]:", '"" points at the whole config'),
    ("exclusions: [listeners]\n", ":1: exclusions[0]:", "must start with /"),
    ("exclusions: [/a~2b]\n", ":1: exclusions[0]:", "~ must be written ~0"),
    ("keep_configs: 0\n", ":1: keep_configs:", "must be greater than 0, got 0"),
    ("max_config_bytes: -1\n", ":1: max_config_bytes:", "must be greater than 0"),
    ("announce_interval: 0\n", ":1: announce_interval:", "must be greater than 0"),
    ("unit_timeout: 10000000000\n", ":1: unit_timeout:", "must be at most 3600 seconds"),
    ("announce_interval: 0.000000001\n", ":1: announce_interval:", "must be at least 0.1 seconds"),
    ("keep_configs: 100000000\n", ":1: keep_configs:", "must be at most 10000 configs"),
    ("api: unix:/" + "p" * 120 + "\n", ":1: api:", "a socket path is at most 107 bytes"),
    ("log_level: verbose\n", ":1: log_level:", "is not one of debug, info, warning, error"),
    ("log_format: xml\n", ":1: log_format:", "'xml' is not one of text, json"),
    ("mesh: 'a/b'\n", ":1: mesh:", "a mesh name is 1-64 of"),
    ("mesh: a\nlisten: []\nmesh: b\n", ":3: mesh:", "duplicate key (also on line 1)"),
    ("- mesh\n", ":1:", "expected a mapping of settings (key: value) at the top level, got list"),
    ("1: x\n", ":1:", "keys are setting names, got integer 1"),
    ("mesh: [a\n", ":", "YAML syntax error at line 2, column 1"),
    ("mesh: a\n  listen: b\n", ":", "YAML syntax error at line 2, column 9"),
    ("mesh: !!python/object:os.system x\n", ":", "YAML syntax error at line 1"),
]


@pytest.mark.parametrize(("text", "where", "what"), BAD_FILES,
                         ids=[f"{i}-{c[2][:30]}" for i, c in enumerate(BAD_FILES)])
def test_bad_file_is_one_line_naming_file_line_key(tmp_path, peer, text, where, what):
    message = error_of(tmp_path, text.replace("{peer}", peer))
    path = str(tmp_path / "agent.yaml")
    assert message.startswith(path + where), message
    assert what in message, message


def test_trust_allowlist_without_trusted_peers_is_refused(tmp_path):
    message = error_of(tmp_path, "mesh: prod\n", env={})
    assert message.startswith(f"{tmp_path / 'agent.yaml'}: trusted_peers: is empty while trust "
                              "is allowlist")
    assert "add the peer IDs" in message and "set trust: any" in message
    # said explicitly in the file, the error points at that line
    message = error_of(tmp_path, "mesh: prod\ntrust: allowlist\n", env={})
    assert message.startswith(f"{tmp_path / 'agent.yaml'}:2: trust: allowlist needs trusted_peers")
    # and without any file, too: the defaults alone do not make a usable agent
    with pytest.raises(SettingsError, match=r"^settings: trusted_peers: is empty"):
        load(tmp_path, env={})


def test_trust_any_allows_empty_trusted_peers_and_says_so(tmp_path):
    settings = load(tmp_path, write(tmp_path, "trust: any\n"), env={})
    assert settings.trusted_peers == () and settings.accepts_any_peer
    settings = load(tmp_path, write(tmp_path, f"trusted_peers: [{new_peer_id()}]\n"), env={})
    assert not settings.accepts_any_peer


def test_not_utf8(tmp_path):
    assert "not UTF-8 text (bad byte at offset 6)" in error_of(tmp_path, b"mesh: \xff\n")


def test_control_character_is_a_yaml_error(tmp_path):
    assert "YAML syntax error" in error_of(tmp_path, "mesh: a\x00\n")


def test_oversized_file(tmp_path):
    assert "larger than" in error_of(tmp_path, "# " + "x" * (1024 * 1024) + "\n")


def test_empty_and_comment_only_files_mean_defaults(tmp_path):
    for text in ("", "# nothing yet\n", "---\n"):
        assert load(tmp_path, write(tmp_path, text)) == Settings(trust="any")


def test_a_good_file(tmp_path, peer):
    other = new_peer_id()
    path = write(tmp_path, f"""
mesh: prod-eu.1
listen:
  - /ip4/0.0.0.0/tcp/9461
  - /ip6/0:0::1/tcp/9461
  - /ip4/0.0.0.0/tcp/9461
unit: http://127.0.0.1:8443/
api: unix:/run/p2p/api.sock
api_group: unit-p2p
api_tcp: "[::1]:8080"
api_token_file: token
state_dir: state
key: /etc/unit-p2p/id.key
bootstrap:
  - /dns4/node2.example/tcp/9461/p2p/{peer}
  - /ip4/10.0.0.3/tcp/9461/p2p/{other}
mdns: no
dht: false
trusted_peers: [{peer}, {other}, {peer}]
exclusions: [/listeners, /applications/app/processes, "/a~1b/~0c"]
keep_configs: 3
max_config_bytes: 1000000
announce_interval: 2
unit_timeout: 1.5
log_level: WARNING
log_format: json
""")
    s = load_settings(path, {}, {}, default_config_file=tmp_path / "absent.yaml")
    assert s == Settings(
        mesh="prod-eu.1",
        listen=("/ip4/0.0.0.0/tcp/9461", "/ip6/::1/tcp/9461"),  # canonical, duplicates dropped
        unit="http://127.0.0.1:8443",
        api="unix:/run/p2p/api.sock",
        api_group="unit-p2p",
        api_tcp="[::1]:8080",
        api_token_file=tmp_path / "token",  # relative to the file's directory
        state_dir=tmp_path / "state",
        key=Path("/etc/unit-p2p/id.key"),
        bootstrap=(f"/dns4/node2.example/tcp/9461/p2p/{peer}",
                   f"/ip4/10.0.0.3/tcp/9461/p2p/{other}"),
        mdns=False,
        dht=False,
        trusted_peers=(peer, other),
        exclusions=("/listeners", "/applications/app/processes", "/a~1b/~0c"),
        keep_configs=3,
        max_config_bytes=1_000_000,
        announce_interval=2.0,
        unit_timeout=1.5,
        log_level="warning",
        log_format="json",
    )
    assert s.key_file == Path("/etc/unit-p2p/id.key")
    assert type(s.announce_interval) is float


def test_sha256_peer_ids_are_peer_ids_too(tmp_path):
    legacy = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
    s = load(tmp_path, write(tmp_path, f"trusted_peers: [{legacy}]\n"), env={})
    assert s.trusted_peers == (legacy,)
    # one character short of a sha2-256 multihash
    assert "is not a peer ID" in error_of(tmp_path, f"trusted_peers: [{legacy[:-1]}]\n", env={})


# --- which file --------------------------------------------------------------------------------


def test_missing_file_named_by_flag_or_env(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SettingsError) as info:
        load(tmp_path, missing)
    assert str(info.value) == f"{missing}: config file not found (named by --config)"
    with pytest.raises(SettingsError) as info:
        load(tmp_path, env={**OPEN, "UNIT_P2P_CONFIG": str(missing)})
    assert str(info.value) == f"{missing}: config file not found (named by UNIT_P2P_CONFIG)"


def test_config_named_by_env(tmp_path):
    path = write(tmp_path, "mesh: from-env-file\n")
    s = load(tmp_path, env={**OPEN, "UNIT_P2P_CONFIG": str(path)})
    assert s.mesh == "from-env-file"


def test_default_file_is_optional_but_read_when_present(tmp_path):
    default = tmp_path / "etc" / "agent.yaml"
    s = load_settings(None, OPEN, {}, default_config_file=default)
    assert s == Settings(trust="any")
    default.parent.mkdir()
    default.write_text("mesh: from-default\n")
    assert load_settings(None, OPEN, {}, default_config_file=default).mesh == "from-default"
    assert str(DEFAULT_CONFIG_FILE) == "/etc/unit-p2p/agent.yaml"


def test_dangling_symlink_at_default_path_is_reported(tmp_path):
    default = tmp_path / "agent.yaml"
    default.symlink_to(tmp_path / "gone.yaml")
    with pytest.raises(SettingsError, match=f"^{default}: config file not found$"):
        load_settings(None, OPEN, {}, default_config_file=default)


def test_directory_is_unreadable(tmp_path):
    with pytest.raises(SettingsError) as info:
        load(tmp_path, tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot read config file: it is a directory"


def _load_as(uid: int, gid: int, path: Path) -> str:
    """What load_settings says about ``path`` in a forked child running as uid:gid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            try:
                load_settings(path, OPEN, {}, default_config_file=path.parent / "absent.yaml")
                answer = "loaded"
            except SettingsError as err:
                answer = str(err)
            os.write(w, answer.encode())
        except BaseException as err:
            os.write(w, f"child failed: {err!r}".encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 30)
        assert ready, "the child did not answer within 30 s"
        chunks = []
        while chunk := os.read(r, 4096):
            chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return b"".join(chunks).decode()


def test_file_without_read_permission(tmp_path):
    """Root reads any file, so as root the reader drops to nobody in a forked child."""
    if os.geteuid() != 0:
        path = write(tmp_path, "mesh: a\n")
        path.chmod(0)
        with pytest.raises(SettingsError) as info:
            load(tmp_path, path)
        assert str(info.value) == (f"{path}: cannot read config file: permission denied "
                                   f"(running as uid {os.geteuid()})")
        return
    nobody = pwd.getpwnam("nobody")
    # pytest's tmp_path is inside a 0700 directory of root's
    directory = Path(tempfile.mkdtemp(prefix="unit-p2p-settings-"))
    try:
        directory.chmod(0o755)
        path = write(directory, "mesh: a\n")
        path.chmod(0o644)
        assert _load_as(nobody.pw_uid, nobody.pw_gid, path) == "loaded"  # the probe works
        path.chmod(0)
        assert _load_as(nobody.pw_uid, nobody.pw_gid, path) == (
            f"{path}: cannot read config file: permission denied (running as uid "
            f"{nobody.pw_uid})")
    finally:
        shutil.rmtree(directory)


# --- environment and flags ---------------------------------------------------------------------


def test_precedence_file_env_flags(tmp_path, peer):
    path = write(tmp_path, f"mesh: file\nkeep_configs: 4\nlog_level: debug\n"
                           f"trusted_peers: [{peer}]\n")
    s = load(tmp_path, path, env={"UNIT_P2P_MESH": "env", "UNIT_P2P_KEEP_CONFIGS": "5"},
             flags={"mesh": "flag"})
    assert (s.mesh, s.keep_configs, s.log_level, s.trusted_peers) == ("flag", 5, "debug", (peer,))


def test_env_values(tmp_path, peer):
    other = new_peer_id()
    env = {
        "UNIT_P2P_TRUSTED_PEERS": f" {peer} ,{other},, ",
        "UNIT_P2P_LISTEN": "/ip4/127.0.0.1/tcp/0,/ip6/::1/tcp/0",
        "UNIT_P2P_MDNS": "No",
        "UNIT_P2P_DHT": "1",
        "UNIT_P2P_ANNOUNCE_INTERVAL": "0.5",
        "UNIT_P2P_MAX_CONFIG_BYTES": "1024",
        "UNIT_P2P_STATE_DIR": "rel/state",
        "UNIT_P2P_LOG_LEVEL": "ERROR",
        "UNRELATED": "x",
        # other tools' variables with the same prefix
        "UNIT_P2P_MOLECULE_CACHE": "/var/cache/x",
        "UNIT_P2P_BASE_IMAGE": "debian:12",
    }
    s = load(tmp_path, env=env)
    assert s.trusted_peers == (peer, other)
    assert s.listen == ("/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0")
    assert (s.mdns, s.dht, s.announce_interval, s.max_config_bytes) == (False, True, 0.5, 1024)
    assert s.state_dir == Path.cwd() / "rel/state"
    assert s.log_level == "error"


@pytest.mark.parametrize(("text", "value"), [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("on", True),
    ("false", False), ("0", False), ("no", False), ("Off", False),
])
def test_env_booleans(tmp_path, text, value):
    assert load(tmp_path, env={**OPEN, "UNIT_P2P_MDNS": text}).mdns is value


def test_empty_env_value_clears_an_optional_setting_and_a_list(tmp_path, peer):
    path = write(tmp_path, "api_group: web\nexclusions: [/listeners]\ntrust: any\n")
    s = load(tmp_path, path, env={"UNIT_P2P_API_GROUP": "", "UNIT_P2P_EXCLUSIONS": ""})
    assert s.api_group is None and s.exclusions == ()


@pytest.mark.parametrize(("env", "expected"), [
    ({"UNIT_P2P_MDNS": "maybe"}, "environment: UNIT_P2P_MDNS: expected true/false/1/0/yes/no, "
                                 "got 'maybe'"),
    ({"UNIT_P2P_KEEP_CONFIGS": "ten"}, "environment: UNIT_P2P_KEEP_CONFIGS: expected an integer, "
                                       "got 'ten'"),
    ({"UNIT_P2P_UNIT_TIMEOUT": "nan"}, "environment: UNIT_P2P_UNIT_TIMEOUT: expected a finite "
                                       "number, got nan"),
    ({"UNIT_P2P_LISTEN": "/ip4/127.0.0.1/tcp/1,/ip4/1.2.3/tcp/1"},
     "environment: UNIT_P2P_LISTEN: bad multiaddr '/ip4/1.2.3/tcp/1'"),
    ({"UNIT_P2P_LISTEN": ""}, "environment: UNIT_P2P_LISTEN: needs at least one address"),
    ({"UNIT_P2P_MESHH": "x"}, "environment: UNIT_P2P_MESHH: unknown variable (did you mean "
                              "'UNIT_P2P_MESH'?)"),
    ({"UNIT_P2P_CONFIGG": "x"}, "environment: UNIT_P2P_CONFIGG: unknown variable (did you mean "
                                "'UNIT_P2P_CONFIG'?)"),
    ({"UNIT_P2P_TRUSTED_PEER": "x"}, "environment: UNIT_P2P_TRUSTED_PEER: unknown variable (did "
                                     "you mean 'UNIT_P2P_TRUSTED_PEERS'?)"),
    ({"UNIT_P2P_EXCLUDE": "/x"}, "environment: UNIT_P2P_EXCLUDE: unknown variable (did you mean "
                                 "'UNIT_P2P_EXCLUSIONS'?)"),
    ({"UNIT_P2P_LOGLEVEL": "debug"}, "environment: UNIT_P2P_LOGLEVEL: unknown variable (did you "
                                     "mean 'UNIT_P2P_LOG_LEVEL'?)"),
])
def test_env_errors_name_the_variable(tmp_path, env, expected):
    with pytest.raises(SettingsError) as info:
        load(tmp_path, env={**OPEN, **env})
    assert str(info.value).startswith(expected), str(info.value)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="unit-p2p agent")
    add_agent_arguments(parser)
    return parser.parse_args(list(argv))


def test_every_setting_has_a_flag_and_absent_flags_override_nothing(tmp_path, peer):
    args = parse()
    assert flags_from_args(args) == {}
    assert args.config is None and args.print_config is False
    for name in SETTING_NAMES:
        assert hasattr(args, name)
    path = write(tmp_path, f"mesh: file\nmdns: false\nlisten: [/ip4/127.0.0.1/tcp/1]\n"
                           f"trusted_peers: [{peer}]\n")
    assert settings_from_args(parse("--config", str(path)), env={}) == \
        load(tmp_path, path, env={})


def test_flags_override_and_replace_lists(tmp_path, peer):
    other = new_peer_id()
    path = write(tmp_path, f"mdns: false\nlisten: [/ip4/127.0.0.1/tcp/1]\n"
                           f"trusted_peers: [{peer}]\nexclusions: [/listeners]\n")
    args = parse(
        "--config", str(path), "--mesh", "m", "--mdns", "--no-dht",
        "--listen", "/ip4/127.0.0.1/tcp/2", "--listen", "/ip4/127.0.0.1/tcp/3",
        "--trusted-peer", other, "--exclude", "/settings", "--keep-configs", "7",
        "--announce-interval", "0.25", "--state-dir", "s", "--key", "/k", "--api-tcp",
        "127.0.0.1:0", "--api-token-file", "tok", "--api-group", "adm", "--unit-timeout", "3",
        "--max-config-bytes", "99", "--log-level", "debug", "--log-format", "json",
        "--bootstrap", f"/ip4/127.0.0.1/tcp/5/p2p/{peer}", "--trust", "allowlist",
        "--unit", "unix:/u.sock", "--api", "unix:/a.sock", "--on-drift", "report",
        "--max-removed-share", "0.8", "--health-url", "http://127.0.0.1:8080/healthz",
        "--health-status", "204", "--health-timeout", "2", "--health-attempts", "4",
        "--health-interval", "0.5",
    )
    assert set(flags_from_args(args)) == set(SETTING_NAMES)
    s = settings_from_args(args, env={})
    assert (s.health_url, s.health_status, s.health_attempts) == (
        "http://127.0.0.1:8080/healthz", "204", 4)
    assert (s.mesh, s.mdns, s.dht) == ("m", True, False)
    assert s.on_drift == "report" and s.max_removed_share == 0.8
    assert s.listen == ("/ip4/127.0.0.1/tcp/2", "/ip4/127.0.0.1/tcp/3")
    assert s.trusted_peers == (other,) and s.exclusions == ("/settings",)
    assert (s.keep_configs, s.announce_interval, s.unit_timeout) == (7, 0.25, 3.0)
    assert s.state_dir == Path.cwd() / "s" and s.api_token_file == Path.cwd() / "tok"


def test_flag_errors_name_the_flag(tmp_path, peer):
    with pytest.raises(SettingsError) as info:
        settings_from_args(parse("--trusted-peer", peer, "--trusted-peer", "abc"), env={})
    assert str(info.value).startswith("command line: --trusted-peer: 'abc' is not a peer ID")
    with pytest.raises(SettingsError, match=r"^command line: --keep-configs: expected an integer"):
        settings_from_args(parse("--trust", "any", "--keep-configs", "x"), env={})
    with pytest.raises(SettingsError, match=r"^command line: --exclude: .* must start with /"):
        settings_from_args(parse("--trust", "any", "--exclude", "listeners"), env={})
    with pytest.raises(SettingsError, match=r"^command line: listn: unknown key \(did you mean"):
        load(tmp_path, flags={"listn": ["x"]})


def test_a_bad_value_is_refused_even_when_a_later_source_overrides_it(tmp_path):
    path = write(tmp_path, "keep_configs: many\n")
    with pytest.raises(SettingsError, match=f"^{path}:1: keep_configs:"):
        load(tmp_path, path, flags={"keep_configs": "3"})


def test_paths_relative_to_cwd_for_env_and_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load(tmp_path, env={**OPEN, "UNIT_P2P_KEY": "k.key"}, flags={"state_dir": "st"})
    assert s.key == tmp_path / "k.key" and s.state_dir == tmp_path / "st"
    assert s.key_file == tmp_path / "k.key"
    assert load(tmp_path, flags={"state_dir": "st"}).key_file == tmp_path / "st" / "identity.key"


# --- print-config -------------------------------------------------------------------------------


def test_print_config_round_trips_every_field(tmp_path, peer):
    changed = Settings(
        mesh="m1", listen=("/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/4001"),
        unit="http://127.0.0.1:8081", unit_timeout=2.5, api="unix:/tmp/a b/api.sock",
        api_group="wheel", api_tcp="127.0.0.1:9000", api_token_file=Path("/etc/tok"),
        state_dir=Path("/var/lib/x y"), key=Path("/var/lib/x y/key"),
        bootstrap=(f"/ip4/10.0.0.1/tcp/9461/p2p/{peer}",), mdns=False, dht=False,
        trust="any", trusted_peers=(peer, new_peer_id()),
        exclusions=("/listeners", "/a~1b", "/"), keep_configs=1, max_config_bytes=12345,
        announce_interval=0.1, log_level="error", log_format="json", on_drift="report",
        max_removed_share=0.75, health_url="https://[::1]:8443/ready", health_status="3xx",
        health_timeout=0.5, health_attempts=1, health_interval=2.0,
    )
    for name in SETTING_NAMES:
        assert getattr(changed, name) != getattr(Settings(), name), name
    for settings in (changed, Settings(trust="any")):
        text = settings_to_yaml(settings)
        assert text.startswith("# unit-p2p agent: effective settings")
        assert list(yaml.safe_load(text)) == list(SETTING_NAMES)
        path = write(tmp_path, text, "printed.yaml")
        assert load_settings(path, {}, {}, default_config_file=tmp_path / "absent.yaml") == \
            settings


def test_check_settings(tmp_path, peer):
    with pytest.raises(SettingsError, match=r"^settings: trusted_peers: is empty"):
        check_settings(Settings())
    with pytest.raises(SettingsError, match=r"^settings: listen\[0\]: bad multiaddr"):
        check_settings(Settings(trust="any", listen=("/ip4/1.2.3.4.5/tcp/1",)))
    good = Settings(trusted_peers=(peer,))
    assert check_settings(good) == good


def test_field_names_and_defaults_are_the_contract():
    """Other components and the Ansible role rely on these names and defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    assert defaults == {
        "mesh": "default", "listen": ("/ip4/127.0.0.1/tcp/9461",),
        "unit": "unix:/var/run/control.unit.sock", "unit_timeout": 10.0,
        "api": "unix:/run/unit-p2p/api.sock", "api_group": None, "api_tcp": None,
        "api_token_file": None, "state_dir": Path("/var/lib/unit-p2p"), "key": None,
        "bootstrap": (), "mdns": True, "dht": True, "trust": "allowlist", "trusted_peers": (),
        "exclusions": (), "keep_configs": 10, "max_config_bytes": 8 * 1024 * 1024,
        "on_drift": "repair", "max_removed_share": 0.5, "health_url": None,
        "health_status": "2xx", "health_timeout": 5.0, "health_attempts": 3,
        "health_interval": 1.0, "announce_interval": 10.0,
        "log_level": "info",
        "log_format": "text",
    }
