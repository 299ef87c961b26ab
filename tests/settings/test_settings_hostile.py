"""Settings files built to hurt: expansion bombs and values too long to echo."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from unit_p2p.errors import SettingsError
from unit_p2p.settings import MAX_EXPANDED_VALUES, load_settings

LAUGHS = ", ".join(f"&{c} [" + ", ".join([f"*{p}"] * 9) + "]"
                   for p, c in zip("abcdefg", "bcdefgh", strict=True))
# 300 bytes that expand to 9**8 (43 million) strings if anything walks them
BOMB = f'listen: [[&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"], {LAUGHS}]]\n'


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_a_yaml_alias_bomb_is_refused_at_once_in_one_line(tmp_path):
    f = tmp_path / "agent.yaml"
    f.write_text(BOMB)
    assert len(BOMB) < 400
    # in a child with 2 GiB of address space: without the cap it dies of MemoryError (after
    # writing gigabytes of traceback) instead of hanging the test run
    r = subprocess.run([sys.executable, "-m", "unit_p2p", "agent", "--config", str(f),
                        "--print-config"], capture_output=True, text=True, timeout=120,
                       preexec_fn=_limit_memory)
    assert r.returncode == 2
    assert f"more than {MAX_EXPANDED_VALUES} values" in r.stderr
    assert len(r.stderr) < 500 and "Traceback" not in r.stderr


def test_a_few_aliases_are_fine(tmp_path):
    f = tmp_path / "agent.yaml"
    f.write_text("listen: &l ['/ip4/127.0.0.1/tcp/9461']\ntrust: any\n")
    assert load_settings(f, {}, {}).listen == ("/ip4/127.0.0.1/tcp/9461",)


@pytest.mark.parametrize("content", [
    "mesh: " + "m" * 900_000 + "\n",
    "exclusions: ['" + "x" * 900_000 + "']\n",
    "listen: [" + ", ".join(["[1]"] * 5000) + "]\n",
    "unit: unix:" + "u" * 900_000 + "\n",
])
def test_errors_do_not_echo_long_values(tmp_path, content):
    f = tmp_path / "agent.yaml"
    f.write_text(content)
    with pytest.raises(SettingsError) as err:
        load_settings(f, {}, {})
    assert len(str(err.value)) < 600


def test_long_environment_values_are_not_echoed(tmp_path):
    with pytest.raises(SettingsError) as err:
        load_settings(None, {"UNIT_P2P_TRUST": "a" * 900_000}, {},
                      default_config_file=tmp_path / "absent.yaml")
    assert len(str(err.value)) < 600
