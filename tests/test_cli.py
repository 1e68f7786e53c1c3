"""CLI level: `xtra` through Typer's CliRunner, real data, bad input as one line before any work."""

import json

from typer.testing import CliRunner

from xtra.cli.main import app
from xtra.studies.spec import parse_sets

runner = CliRunner()


def _command_paths(group=None, prefix=()):
    """Every command and group of the Typer app, as argument lists (["study", "run"], ...)."""
    import typer.main

    group = group or typer.main.get_command(app)
    for name, cmd in sorted(group.commands.items()):
        yield [*prefix, name]
        if hasattr(cmd, "commands"):
            yield from _command_paths(cmd, (*prefix, name))


def test_every_command_has_help_that_fits_80_columns():
    paths = [[], *_command_paths()]
    assert ["study", "run"] in paths and ["report", "build"] in paths and ["data", "get"] in paths
    for args in paths:
        for flag in ("--help", "-h"):
            result = runner.invoke(app, [*args, flag], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
            assert result.exit_code == 0, (args, result.output)
            assert "Usage: " in result.output, args
            wide = [line for line in result.output.splitlines() if len(line) > 80]
            assert wide == [], (args, wide[:2])


def test_pretrain_then_resume(tmp_path):
    out = tmp_path / "run"
    args = ["pretrain", "--size", "tiny", "--block-size", "2", "--samples", "512", "--out", str(out),
            "--set", "data.limit_train=2000", "--set", "pretrain.batch_size=64"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "checkpoint" in result.output and (out / "checkpoint.pt").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["samples_seen"] == 512
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output


def test_bad_input_is_one_line_before_any_work(tmp_path):
    cases = [
        (["--block-size", "3"], "block_size=3 does not divide the 8x8 patch grid"),
        (["--size", "huge"], "--size 'huge' is not known"),
        (["--set", "model.blocksize=2"], "unknown config key 'model.blocksize'"),
        (["--set", "pretrain.lr"], "expected KEY=VALUE"),
        (["--data", "imagefolder:/nonexistent/x"], "/nonexistent/x"),
    ]
    for extra, message in cases:
        out = tmp_path / "bad"
        result = runner.invoke(app, ["pretrain", "--size", "cpu-s", "--out", str(out), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
        assert not out.exists()


def test_set_values_are_toml_literals():
    assert parse_sets(["a=2", "b=[1e-3, 3e-3]", "c=true", "d=fashion-mnist", "e='x y'"]) == {
        "a": 2, "b": [1e-3, 3e-3], "c": True, "d": "fashion-mnist", "e": "x y"}


def test_info_lists_backends():
    import torch

    from xtra.attention import resolve_backend

    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0
    lines = {ln.strip("│ ").split("│")[0].strip(): ln for ln in result.output.splitlines() if "│" in ln}
    picked = resolve_backend("auto", torch.device("cpu"))
    assert picked in lines["auto picks"]  # what `auto` really resolves to here, not a fixed word
    assert "ok" in lines["attention sdpa"] and "needs CUDA" in lines["attention xformers"]
    assert "no backward" in lines["attention flex"]


def test_bench_markdown_gives_each_probe_measurement_its_own_table():
    """The committed probe figures (docs/bench-cpu-2core-probe.json) render as one table per
    measurement, the protocol's cost per kind and for both."""
    from pathlib import Path

    from xtra.benchmarks import to_markdown
    from xtra.cli.bench import _probe_tables

    results = json.loads((Path(__file__).parents[1] / "docs" / "bench-cpu-2core-probe.json").read_text())
    tables = _probe_tables(results["probe"])
    assert list(tables) == ["probe", "probe_convergence", "probe_protocol", "probe_checkpoints", "probe_sample_curve"]
    assert [row["kind"] for row in tables["probe_protocol"]] == ["linear", "attentive", "both"]
    both = tables["probe_protocol"][-1]
    assert both["cost_ratio"] == both["official_s"] / both["ours_s"]
    markdown = to_markdown({"environment": results["environment"], **tables})
    assert "## probe_protocol" in markdown and "| kind | official_s | official_top1 |" in markdown
