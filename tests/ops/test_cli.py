"""``dataflow``: every command and subcommand answers ``--help`` (exit 0, its own usage
line) and bad usage exits 2 with a usage message, for the commands there are today and
any added later (the walk reads the click tree)."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from ops import main
from ops._cli import cli
from tests.pipeline_support import ROOT

pytestmark = pytest.mark.unit


def _paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for name, command in sorted(group.commands.items()):
        out.append((*prefix, name))
        if isinstance(command, click.Group):
            out.extend(_paths(command, (*prefix, name)))
    return out


COMMANDS = _paths(cli)


def test_the_tree_holds_the_commands_of_the_readme() -> None:
    assert {" ".join(p) for p in COMMANDS} >= {
        "stack", "stack up", "stack down", "stack status", "stack env", "load", "source",
        "source run", "dlq", "dlq replay", "dlq show", "worker", "demo"}


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "dataflow")
def test_help_on_every_command(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--help", "-h"):
        assert main([*path, flag]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"Usage: {' '.join(('dataflow', *path))} [OPTIONS]"), out


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_bad_usage_exits_2_with_a_usage_line(
        path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert f"Usage: {' '.join(('dataflow', *path))} [OPTIONS]" in err
    assert "No such option: --no-such-option" in err


def test_unknown_command_and_bare_groups(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bogus"]) == 2
    assert "No such command 'bogus'" in capsys.readouterr().err
    for group in ([], ["stack"], ["dlq"], ["source"]):
        assert main(group) == 2  # a group without its subcommand: its help, on stderr
        assert "Commands:" in capsys.readouterr().err


def test_help_through_the_process() -> None:
    """The old hand parser opened a file named ``--help``; the real process prints help."""
    proc = subprocess.run([sys.executable, "-m", "ops", "source", "run", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: dataflow source run [OPTIONS] FILE")
    bad = subprocess.run([sys.executable, "-m", "ops", "worker"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "Error: Missing argument 'FILE'." in bad.stderr
