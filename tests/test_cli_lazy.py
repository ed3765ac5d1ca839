"""The command line imports only the chosen command's modules; its static command table matches them."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from modelsieve.api.cli import COMMAND_MODULES, COMMANDS, build_parser, main, requested_command


def top_level_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each top-level command's one-line help, as `modelsieve --help` lists it."""
    [commands] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return {choice.dest: choice.help for choice in commands._choices_actions}


def test_the_command_table_names_every_module_and_the_help_it_registers() -> None:
    assert list(COMMANDS) == list(COMMAND_MODULES), "one COMMANDS entry per module, in COMMAND_MODULES order"
    for module_name in COMMAND_MODULES:
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"modelsieve.api.cli.{module_name}").register(subparsers)
        assert list(subparsers.choices) == [COMMANDS[module_name][0]], module_name
    expected = dict(COMMANDS.values())
    assert top_level_help(build_parser()) == expected
    assert top_level_help(build_parser(["hash"])) == expected


def imported_after(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running `code`."""
    script = f"import sys\n{code}\nprint('\\n'.join(sys.modules))"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    return set(run.stdout.split())


def test_choosing_a_command_imports_only_its_modules() -> None:
    modules = imported_after("from modelsieve.api.cli import build_parser; build_parser(['hash'])")
    assert {f"modelsieve.api.cli.{name}" for name in COMMAND_MODULES} & modules == {"modelsieve.api.cli.hash"}
    assert not {"aiohttp", "modelsieve.api.http.app", "modelsieve.hashlists.store"} & modules
    keys = imported_after("from modelsieve.api.cli import build_parser; build_parser(['keys'])")
    assert {f"modelsieve.api.cli.{name}" for name in COMMAND_MODULES} & keys == {"modelsieve.api.cli.keys", "modelsieve.api.cli.api_keys"}
    assert "aiohttp" not in keys, "keys api needs the key table, not the server"


def test_the_public_suffix_list_is_loaded_only_for_domain_work() -> None:
    """tldextract brings requests (~0.1 s of start-up) into every store command that imported the
    hashlists model; it is needed only where a registrable domain is computed."""
    listing = imported_after("from modelsieve.api.cli import build_parser; build_parser(['list'])")
    assert "modelsieve.hashlists.urls" in listing and not {"tldextract", "requests"} & listing
    domain = imported_after("from modelsieve.hashlists.urls import registrable_domain; registrable_domain('a.example.co.uk')")
    assert "tldextract" in domain


def test_top_level_help_imports_no_command_and_lists_them_all(capsys: pytest.CaptureFixture[str]) -> None:
    modules = imported_after("from modelsieve.api.cli import build_parser; build_parser(()).format_help()")
    assert not {f"modelsieve.api.cli.{name}" for name in COMMAND_MODULES} & modules
    assert "numpy" not in modules and "importlib.metadata" not in modules
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    listed = capsys.readouterr().out
    assert all(f"    {name}" in listed and summary in listed for name, summary in COMMANDS.values())


@pytest.mark.parametrize("command", sorted({name for name, _ in COMMANDS.values()}))
def test_every_command_still_has_its_full_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: modelsieve {command} ") and "--help" in text


def test_version_and_unknown_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("modelsieve 0.")
    with pytest.raises(SystemExit) as exited:
        main(["hsah", "x"])
    assert exited.value.code == 2 and "invalid choice: 'hsah'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "command"),
    [([], None), (["--help"], None), (["--version", "hash"], "hash"), (["hash", "--json", "x"], "hash"), (["--", "list"], "list"), (["--"], None)],
)
def test_the_command_word_is_the_first_non_option(argv: list[str], command: str | None) -> None:
    assert requested_command(argv) == command
