"""docs/settings.md is generated from the Settings dataclass and must not drift from it."""

from __future__ import annotations

import argparse
from pathlib import Path

from unit_p2p.settings import (
    SETTING_NAMES,
    add_agent_arguments,
    env_name,
    flag_name,
    generated_block,
    settings_table_markdown,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_docs_table_matches_the_dataclass():
    assert generated_block(DOC.read_text(encoding="utf-8")) == settings_table_markdown(), (
        "docs/settings.md is stale: run `python -m unit_p2p.settings docs/settings.md`"
    )


def test_table_names_every_key_env_var_and_flag():
    table = settings_table_markdown()
    rows = table.splitlines()[2:]
    assert len(rows) == len(SETTING_NAMES)
    for name, row in zip(SETTING_NAMES, rows, strict=True):
        assert row.startswith(f"| `{name}` | `{env_name(name)}`")
        assert f"`{flag_name(name)}" in row


def test_every_flag_in_the_table_is_accepted_by_the_parser():
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    options = {opt for action in parser._actions for opt in action.option_strings}
    for name in SETTING_NAMES:
        assert flag_name(name) in options
    assert {"--no-mdns", "--no-dht", "--config", "--print-config", "--exclude",
            "--trusted-peer"} <= options


def test_the_sample_agent_yaml_loads(tmp_path):
    from unit_p2p.settings import load_settings

    settings = load_settings(DOC.parent / "agent.yaml", {}, {},
                             default_config_file=tmp_path / "absent.yaml")
    assert settings.mesh == "web-prod" and len(settings.trusted_peers) == 2
