"""Layered settings (openlora.config) and their command lines (`openlora-node start`, `config show`).

Precedence under test: flags > OPENLORA_* environment > --config TOML file > defaults, for a
top-level setting and a ``[chain]`` one; every error names the setting as its source spells it.
No node is started: `start` fails on bad settings before it loads anything.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from openlora.cli import node_app
from openlora.config import (
    ChainSettings,
    NodeSettings,
    SettingsError,
    effective_toml,
    env_name,
    flag_name,
    load_settings,
    setting_paths,
)

# (setting, TOML text for the file layer, values given by file, env, flag)
LAYERS = [
    ("max_loras", "max_loras = {}\n", 2, 3, 4),
    ("chain.settle_every_calls", "[chain]\nsettle_every_calls = {}\n", 5, 6, 7),
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No OPENLORA_* variable of the test run (conftest sets OPENLORA_MODEL_CACHE) leaks into a test."""
    for name in list(os.environ):
        if name.startswith("OPENLORA_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _get(settings: NodeSettings, path: str):
    value = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


def test_defaults_when_nothing_is_given():
    loaded = load_settings()
    assert loaded.settings == NodeSettings()
    assert loaded.origins == {} and loaded.config_file is None
    s = loaded.settings
    # what `openlora-node start` without flags has always run with
    assert (s.host, s.port, s.data_dir, s.dtype, s.max_loras, s.p2p, s.chain.embedded) == (
        "127.0.0.1", 50051, Path(".data"), "bfloat16", 8, True, True,
    )  # fmt: skip


@pytest.mark.parametrize("path, toml, file_value, env_value, flag_value", LAYERS)
@pytest.mark.parametrize(
    "layers",
    [(), ("file",), ("env",), ("flag",), ("file", "env"), ("file", "flag"), ("env", "flag"), ("file", "env", "flag")],
)
def test_precedence_flag_over_env_over_file_over_default(monkeypatch, tmp_path, layers, path, toml, file_value, env_value, flag_value):
    config = None
    if "file" in layers:
        config = tmp_path / "node.toml"
        config.write_text(toml.format(file_value))
    if "env" in layers:
        monkeypatch.setenv(env_name(path), str(env_value))
    flags = {path: flag_value} if "flag" in layers else {}

    loaded = load_settings(flags, config)

    expected = {"flag": flag_value, "env": env_value, "file": file_value}
    top = next((layer for layer in ("flag", "env", "file") if layer in layers), None)
    default = _get(NodeSettings(), path)
    assert _get(loaded.settings, path) == (expected[top] if top else default)
    origin = {"flag": f"flag {flag_name(path)}", "env": f"env {env_name(path)}", "file": f"file {config}"}
    assert loaded.origins.get(path) == (origin[top] if top else None)


def test_chain_table_merges_key_by_key_across_layers(monkeypatch, tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('[chain]\nrpc_url = "http://127.0.0.1:8545"\ncontracts = "deployment.json"\nport = 1\n')
    monkeypatch.setenv("OPENLORA_CHAIN__PORT", "2")
    chain = load_settings({"chain.node_fee_per_1k": 3}, config).settings.chain
    assert (chain.rpc_url, chain.contracts, chain.port, chain.node_fee_per_1k) == (
        "http://127.0.0.1:8545", Path("deployment.json"), 2, 3,
    )  # fmt: skip


def test_bootstrap_variable_takes_a_comma_separated_list(monkeypatch):
    monkeypatch.setenv("OPENLORA_BOOTSTRAP", "/ip4/127.0.0.1/tcp/1/p2p/QmA, /ip4/127.0.0.1/tcp/2/p2p/QmB")
    assert load_settings().settings.bootstrap == ["/ip4/127.0.0.1/tcp/1/p2p/QmA", "/ip4/127.0.0.1/tcp/2/p2p/QmB"]


@pytest.mark.parametrize(
    "toml, expected",
    [
        ("max_lora = 4\n", "max_lora in {}: unknown setting (known: host, port,"),
        ("[chain]\nrpc = 'http://x'\n", "[chain] rpc in {}: unknown setting (known: rpc_url, port,"),
    ],
)
def test_unknown_file_key_is_named_with_the_known_ones(tmp_path, toml, expected):
    config = tmp_path / "node.toml"
    config.write_text(toml)
    with pytest.raises(SettingsError) as e:
        load_settings(config_file=config)
    assert str(e.value).startswith(expected.format(config))


@pytest.mark.parametrize("source", ["flag", "env", "file"])
@pytest.mark.parametrize(
    "path, toml, bad, message",
    [
        ("port", "port = {!r}\n", "http", "Input should be a valid integer"),
        ("log_format", "log_format = {!r}\n", "xml", "Input should be 'text' or 'json'"),
        ("chain.rpc_url", "[chain]\nrpc_url = {!r}\n", "ftp://x", "chain RPC URL must start with http://"),
    ],
)
def test_invalid_value_error_names_the_setting_as_its_source_spells_it(monkeypatch, tmp_path, source, path, toml, bad, message):
    config = tmp_path / "node.toml"
    config.write_text(toml.format(bad) if source == "file" else "")
    if source == "env":
        monkeypatch.setenv(env_name(path), bad)
    with pytest.raises(SettingsError) as e:
        load_settings({path: bad} if source == "flag" else {}, config)
    section, _, key = path.rpartition(".")
    where = {
        "flag": flag_name(path),
        "env": f"{env_name(path)} (environment)",
        "file": f"{'[' + section + '] ' if section else ''}{key} in {config}",
    }[source]
    assert str(e.value).startswith(f"{where}: {message}")
    assert repr(bad) in str(e.value)


def test_rpc_url_without_contracts_names_where_the_url_came_from(monkeypatch):
    monkeypatch.setenv("OPENLORA_CHAIN__RPC_URL", "http://127.0.0.1:8545")
    with pytest.raises(SettingsError, match=r"^OPENLORA_CHAIN__RPC_URL \(environment\): a chain RPC URL needs"):
        load_settings()


@pytest.mark.parametrize(
    "content, expected",
    [(None, "no such file"), ("port = = 1\n", "not valid TOML"), (b"\xff\xfe", "not valid TOML")],
)
def test_unreadable_config_file(tmp_path, content, expected):
    config = tmp_path / "node.toml"
    if isinstance(content, bytes):
        config.write_bytes(content)
    elif content is not None:
        config.write_text(content)
    with pytest.raises(SettingsError, match=f"^--config {config}: {expected}"):
        load_settings(config_file=config)


def test_table_variable_that_is_not_json_says_how_to_set_it(monkeypatch):
    monkeypatch.setenv("OPENLORA_CHAIN", "port=1")
    with pytest.raises(SettingsError, match=r'field "chain".*OPENLORA_CHAIN__PORT=8545'):
        load_settings()


def test_effective_toml_loads_back_to_the_same_settings(monkeypatch, tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('port = 6000\nbootstrap = ["/ip4/127.0.0.1/tcp/1/p2p/QmA"]\n[chain]\nport = 8000\n')
    monkeypatch.setenv("OPENLORA_MAX_LORAS", "3")
    monkeypatch.setenv("OPENLORA_CHAIN__CREDIT_LIMIT_WEI", str(2**70))  # wider than a TOML integer
    loaded = load_settings({"p2p": False, "chain.settle_every_seconds": 2.5, "data_dir": Path("d")}, config)

    text = effective_toml(loaded)
    lines = text.splitlines()
    assert f"port = 6000  # file {config}" in lines
    assert "max_loras = 3  # env OPENLORA_MAX_LORAS" in lines
    assert "p2p = false  # flag --no-p2p" in lines
    assert "settle_every_seconds = 2.5  # flag --settle-every-seconds" in lines
    assert "max_batch = 16  # default" in lines
    assert any(line.startswith("# http_port is unset (default)") for line in lines)

    for name in list(os.environ):
        if name.startswith("OPENLORA_"):
            monkeypatch.delenv(name)
    shown = tmp_path / "shown.toml"
    shown.write_text(text)
    assert load_settings(config_file=shown).settings == loaded.settings


def test_every_setting_has_a_start_flag_whose_shown_default_is_the_real_one():
    start = next(c for c in typer.main.get_command(node_app).commands.values() if c.name == "start")
    options = {opt: p for p in start.params for opt in (*p.opts, *p.secondary_opts)}
    defaults = NodeSettings()
    for path in setting_paths():
        param = options[flag_name(path)]
        assert param.default is None, f"{flag_name(path)} must default to 'not given' so env and file apply"
        default = _get(defaults, path)
        if isinstance(default, bool):
            assert param.show_default == (flag_name(path) if default else "--no-" + flag_name(path)[2:]), path
        elif default not in (None, []):
            assert param.show_default == str(default), path
    assert set(ChainSettings.model_fields) == {p.split(".")[1] for p in setting_paths() if p.startswith("chain.")}


# ----- the command lines -----

runner = CliRunner()


def test_config_show_honours_config_env_and_flags_and_loads_back(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text("max_batch = 4\n[chain]\nsettle_every_calls = 9\n")
    env = {"OPENLORA_PORT": "6001", "OPENLORA_CHAIN__PORT": "8001"}
    out = runner.invoke(node_app, ["config", "show", "--config", str(config), "--max-loras", "2"], env=env)
    assert out.exit_code == 0, out.output
    shown = tomllib.loads(out.stdout)
    assert (shown["port"], shown["max_batch"], shown["max_loras"]) == (6001, 4, 2)
    assert (shown["chain"]["port"], shown["chain"]["settle_every_calls"]) == (8001, 9)
    assert "port = 6001  # env OPENLORA_PORT" in out.stdout.splitlines()

    path = tmp_path / "shown.toml"
    path.write_text(out.stdout)
    again = runner.invoke(node_app, ["config", "show", "--config", str(path)])
    assert tomllib.loads(again.stdout) == shown


def test_config_file_from_openlora_config_variable(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text("max_waiting = 7\n")
    out = runner.invoke(node_app, ["config", "show"], env={"OPENLORA_CONFIG": str(config)})
    assert out.exit_code == 0, out.output
    assert tomllib.loads(out.stdout)["max_waiting"] == 7


@pytest.mark.parametrize("command", [["start"], ["config", "show"]])
@pytest.mark.parametrize(
    "args, env, toml, expected",
    [
        ([], {"OPENLORA_PORT": "abc"}, None, "OPENLORA_PORT (environment): Input should be a valid integer"),
        (["--config", "{config}"], {}, "max_lora = 4\n", "max_lora in {config}: unknown setting"),
        (["--log-format", "xml"], {}, None, "--log-format: Input should be 'text' or 'json'"),
        (["--chain", "mainnet"], {}, None, "--chain: only 'embedded' is built in"),
    ],
)
def test_bad_settings_exit_2_naming_the_source(tmp_path, command, args, env, toml, expected):
    config = tmp_path / "node.toml"
    if toml is not None:
        config.write_text(toml)
    out = runner.invoke(node_app, [*command, *(a.format(config=config) for a in args)], env=env)
    assert out.exit_code == 2, out.output
    assert out.stderr.startswith("error: " + expected.format(config=config))
    assert out.stdout == ""


def test_a_misspelt_variable_is_reported_with_the_nearest_setting(monkeypatch):
    monkeypatch.setenv("OPENLORA_NODE_FEE_PER_1K", "7")  # the setting lives in [chain]
    monkeypatch.setenv("OPENLORA_KEY_PASSPHRASE", "x")  # read by `publish`, not a setting: no warning
    loaded = load_settings()
    assert loaded.settings.chain.node_fee_per_1k == 0
    assert loaded.warnings == (
        "ignoring OPENLORA_NODE_FEE_PER_1K: no such setting; did you mean OPENLORA_CHAIN__NODE_FEE_PER_1K? "
        "(`openlora-node config show` lists them)",
    )
    assert "# warning: ignoring OPENLORA_NODE_FEE_PER_1K" in effective_toml(loaded)


def test_every_setting_variable_is_known(monkeypatch):
    for path in setting_paths():
        monkeypatch.setenv(env_name(path), "")  # empty values are ignored by the settings (env_ignore_empty)
    assert load_settings().warnings == ()
