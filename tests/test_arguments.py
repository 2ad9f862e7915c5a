"""tversky_keras.arguments: every command line parses its numbers with the checked types,
which refuse NaN, inf and out-of-range values naming the option."""

import argparse
import re

import pytest

from reproduce import sim2real, table1
from tversky_keras import cli


def float_options(parser):
    """(parser name, option) of every option whose value is converted by ``float``."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(f"{parser.prog} {name}", o) for _, o in float_options(sub)]
        elif action.type is float:
            found.append((parser.prog, action.option_strings[0]))
    return found


def test_no_command_line_option_takes_nan_or_inf():
    parsers = [cli.build_parser(), table1.build_parser(), sim2real.build_parser()]
    assert [o for p in parsers for o in float_options(p)] == []


@pytest.mark.parametrize("argv, option", [
    (["train", "--data", "d", "--out", "o", "--alpha", "nan"], "--alpha"),
    (["train", "--data", "d", "--out", "o", "--lr", "inf"], "--lr"),
    (["predict", "--model", "m", "--out", "o", "--threshold", "nan"], "--threshold"),
    (["synth", "--out", "o", "--spacing", "-inf"], "--spacing"),
])
def test_nan_and_inf_are_refused_naming_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert f"argument {option}: " in capsys.readouterr().err


def test_a_negative_phantom_seed_is_refused_naming_the_option(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["synth", "--out", "o", "--seed", "-1"])
    assert "argument --seed: -1 is negative" in capsys.readouterr().err


@pytest.mark.parametrize("value, problem", [("-1", "is negative"),
                                            ("4294967296", "above 2\\*\\*32 - 1"),
                                            ("1.5", "not an integer")])
def test_a_seed_out_of_range_is_refused_by_the_parser(tmp_path, capsys, value, problem):
    from reproduce import sim2real
    from tversky_keras.cli import main

    for run in (lambda: main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                              "--seed", value]),
                lambda: sim2real.main(["--data", str(tmp_path), "--results", str(tmp_path / "r"),
                                       "--seed", value])):
        with pytest.raises(SystemExit) as stopped:
            run()
        assert stopped.value.code == 2
        assert re.search(f"argument --seed: .*{problem}", capsys.readouterr().err)
    assert not (tmp_path / "run").exists() and not (tmp_path / "r").exists()



@pytest.mark.parametrize("argv", [
    ["predict", "--model", "m.keras", "--input", "x", "--out", "{file}"],
    ["train", "--data", "d", "--out", "{file}"],
    ["preprocess", "--data", "d", "--out", "{file}"],
])
def test_an_output_folder_that_is_a_file_is_refused_in_one_line(tmp_path, capsys, argv):
    file = tmp_path / "taken"
    file.write_text("a user's file")
    with pytest.raises(SystemExit) as stopped:
        cli.main([a.format(file=file) for a in argv])
    assert stopped.value.code == 2
    assert f"--out: {file}: a file has that name; give a folder" in capsys.readouterr().err
    assert file.read_text() == "a user's file"


@pytest.mark.parametrize("parser, option", [(table1.build_parser, "--results"),
                                            (table1.build_parser, "--figures"),
                                            (sim2real.build_parser, "--results")])
def test_the_reproductions_output_folders_refuse_a_file_too(tmp_path, capsys, parser, option):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(SystemExit):
        parser().parse_args(["--data", "d", option, str(tmp_path / "taken")])
    assert "a file has that name; give a folder" in capsys.readouterr().err
