"""The command line: every subcommand explains itself, and the light packages stay light."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from moe_prefetch.cli import COMMAND_MODULES, build_parser, main


def _subcommands() -> list[str]:
    parser = build_parser()
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


def test_every_command_module_registers_a_subcommand() -> None:
    assert len(_subcommands()) >= len(COMMAND_MODULES)


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in _subcommands():
        assert name in out


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert len(capsys.readouterr().out.splitlines()) > 3


def test_parser_builds_without_importing_torch() -> None:
    code = (
        "import sys; import moe_prefetch.cli as c; c.build_parser(); import sim, reports, traces; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_unknown_subcommand_exits_with_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["no-such-command"])
    assert exit_info.value.code == 2


def test_simulate_offers_every_predictor_device_the_simulator_knows() -> None:
    from sim.config import PREDICTOR_DEVICES

    (sub,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    (option,) = (a for a in sub.choices["simulate"]._actions if a.dest == "predictor_device")
    assert tuple(option.choices) == PREDICTOR_DEVICES and option.default == PREDICTOR_DEVICES[0]
