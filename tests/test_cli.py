"""The command line as a whole: options come from the config dataclasses, errors are one line."""

import dataclasses
import subprocess
import sys

import pytest

from shardtune.cli import COMMANDS, build_parser, main
from shardtune.errors import UserError
from shardtune.options import Config, check_value, flag, option


def all_parsers():
    """(argv prefix, parser) of every command and every bench stage."""
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them here
    for name, p in commands.items():
        if name == "bench":
            for stage, q in p._subparsers._group_actions[0].choices.items():
                yield ["bench", stage], q
        else:
            yield [name], p


def test_help_is_instant_and_loads_no_heavy_library():
    code = ("import sys, time; t = time.perf_counter(); from shardtune.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(round(time.perf_counter() - t, 3), [m for m in ('numpy', 'pyarrow', 'polars', 'torch') "
            "if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, heavy = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert heavy == "[]" and float(seconds) < 0.5
    assert all(name in result.stdout for name in COMMANDS)


def test_every_option_of_every_command_comes_from_its_config():
    seen = 0
    for argv, parser in all_parsers():
        cls = parser.get_default("_config_class")
        assert cls is not None and issubclass(cls, Config), argv  # every command has a config, bench included
        text = parser.format_help()
        assert "--config FILE" in text and f"[{cls.SECTION}]" in text
        for f in dataclasses.fields(cls):
            assert flag(f.name) in text and f.metadata["help"].split()[0] in text, (argv, f.name)
            seen += 1
    assert seen > 60


@pytest.mark.parametrize("value, problem", [
    (True, "a whole number"), (2.5, "a whole number"), ("8", "a whole number"), (0, "a whole number at least 1"),
])
def test_an_int_option_refuses_booleans_floats_text_and_out_of_range(value, problem):
    with pytest.raises(UserError, match=f"--batch-size must be {problem}"):
        check_value("batch_size", int, {"min": 1}, value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_float_option_must_be_finite(value):
    with pytest.raises(UserError, match="--lr must be a finite number"):
        check_value("lr", float, {"above": 0}, value)


def test_choices_and_exclusive_bounds():
    assert check_value("x", float, {"above": 0, "max": 1}, 1) == 1.0  # an int is a float
    with pytest.raises(UserError, match="above 0"):
        check_value("x", float, {"above": 0}, 0.0)
    with pytest.raises(UserError, match="below 1"):
        check_value("x", float, {"below": 1}, 1.0)
    with pytest.raises(UserError, match="one of linear, cosine"):
        check_value("schedule", str, {"choices": ("linear", "cosine")}, "step")


def test_a_config_checks_its_fields_and_its_own_rules():
    @dataclasses.dataclass
    class Demo(Config):
        SECTION = "demo"
        low: int = option(1, "lower bound", min=0)
        high: int = option(2, "upper bound", min=0)

        def validate(self):
            if self.low > self.high:
                raise UserError("--low must not exceed --high")

    assert Demo().check() == Demo()
    with pytest.raises(UserError, match="--low must not exceed --high"):
        Demo(low=3).check()
    with pytest.raises(UserError, match="unknown key 'lowest'"):
        Demo.from_dict({"lowest": 1}, "[demo]")


def toml(tmp_path, text: bytes):
    path = tmp_path / "shardtune.toml"
    path.write_bytes(text)
    return str(path)


@pytest.mark.parametrize("argv, text, message", [
    (["eval", "--base", "tiny", "--tuned", "x", "--data", "y"], b"[eval]\nsamples = true\n", "samples in [eval] of"),
    (["generate", "m", "q"], b"[generate]\ntop_p = 1.5\n", "top_p in [generate] of"),
    (["train", "t", "--out", "o"], b"[train]\nlr = nan\n", "lr in [train] of"),
    (["synth", "out.json"], b"[synth]\nlines = -1\n", "lines in [synth] of"),
    (["bench", "etl"], b"[bench.etl]\nlines = 0\n", "lines in [bench.etl] of"),
    (["demo"], b"[demo]\nstep = 3\n", "unknown key 'step'"),
    (["etl", "x.json", "--out", "o"], b"\xff\xfe[etl]\n", "not UTF-8"),
    (["tokenize", "p", "--out", "o"], b"[tokenize\n", "cannot read config file"),
    (["etl", "x.json", "--out", "o"], b"etl = 3\n", "must be a table"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, argv, text, message):
    assert main([*argv, "--config", toml(tmp_path, text)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_rule_across_options_names_the_keys_the_file_set(tmp_path, capsys):
    # --quantize nf4 needs --lora-r: set in the file, the error says where the user wrote it
    path = toml(tmp_path, b"[train]\nquantize = \"nf4\"\n")
    assert main(["train", "t", "--out", "o", "--config", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "add --lora-r" in err[0] and f"(--quantize is quantize in [train] of {path})" in err[0], err
    assert main(["train", "t", "--out", "o", "--config", path, "--quantize", "nf4"]) == 2
    assert "[train] of" not in capsys.readouterr().err  # the flag, not the file, set it this time


@pytest.mark.parametrize("argv, message", [
    (["train", "t", "--out", "o", "--lr", "inf"], "--lr must be a finite number above 0"),
    (["train", "t", "--out", "o", "--clip-grad", "-1"], "--clip-grad must be a finite number above 0"),
    (["train", "t", "--out", "o", "--max-steps", "-1"], "--max-steps must be a whole number at least 0"),
    (["train", "t", "--out", "o", "--weight-decay", "nan"], "--weight-decay must be a finite number"),
    (["generate", "m", "q", "--top-k", "-3"], "--top-k must be a whole number at least 0"),
    (["generate", "m", "q", "--temperature", "-1"], "--temperature must be a finite number at least 0"),
    (["generate", "m", "q", "--batch-size", "0"], "--batch-size must be a whole number at least 1"),
    (["eval", "--base", "a", "--tuned", "b", "--data", "c", "--batch-size", "0"], "--batch-size must be"),
    (["bench", "memory", "--batch-size", "0"], "--batch-size must be a whole number at least 1"),
])
def test_out_of_range_flags_are_refused_before_any_work(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_usage_mistakes_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "tokens", "--out", "run", "--batch-size", "true"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid int value: 'true'" in err[0] and "--help" in err[0]


def test_flags_override_the_toml_table_which_overrides_the_defaults(tmp_path):
    from shardtune.options import config_from_args

    path = toml(tmp_path, b"[train]\nbatch_size = 4\nlr = 0.001\n[etl]\nshard_rows = 9\n")
    args = build_parser().parse_args(["train", "t", "--out", "o", "--config", path, "--lr", "0.5"])
    config = config_from_args(args)
    assert (config.batch_size, config.lr, config.epochs) == (4, 0.5, 3)


def test_a_commands_arguments_may_follow_its_options():
    from shardtune.cli import build_parser, parse

    args = parse(build_parser(), ["generate", "run/final", "--temperature", "0", "Girls Ballet Tutu"])
    assert (args.model, args.question, args.temperature) == ("run/final", "Girls Ballet Tutu", 0.0)
    with pytest.raises(SystemExit) as stop:  # one argument too many is still refused, by the command's parser
        parse(build_parser(), ["generate", "run/final", "--temperature", "0", "a", "b"])
    assert stop.value.code == 2
