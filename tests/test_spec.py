"""Study files: every shipped study loads for every preset; bad files fail with one line naming
file, key and value; --set parsing; the resolved study.toml reads back to the same trials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xtra.cli.study import app
from xtra.studies.load import STUDIES_DIR, load_study, preset_names, shipped_studies
from xtra.studies.spec import StudyError, parse_set, parse_sets

FASHION = Path("/usr/share/datasets/fashion-mnist")
CASES = [(name, preset) for name in shipped_studies() for preset in preset_names(name)]


def test_ships_the_studies_and_presets() -> None:
    expected = {"block-size", "width", "sample-budget", "predictor-depth", "predictor-width", "loss", "order",
                "multi-token", "scaling", "lr-search"}
    assert expected <= set(shipped_studies())
    assert "_presets" not in shipped_studies()
    for name in expected:
        assert {"smoke", "cpu", "paper"} <= set(preset_names(name))
        assert (STUDIES_DIR / f"{name}.toml").is_file()


@pytest.mark.parametrize(("name", "preset"), CASES)
def test_every_study_expands_for_every_preset(name: str, preset: str) -> None:
    study = load_study(name, preset=preset)
    assert study.preset == preset
    if study.search is not None:
        assert study.expand() == []
        assert study.n_trials == study.search.num_samples >= 1
        base = study.base_config()
        assert set(study.search.space) <= set(study.swept_keys)
        assert len(base.config_hash()) == 12 and base.config_hash() != base.probe_hash()
        return
    specs = study.expand()
    assert len(specs) == study.n_trials >= 2
    assert len({s.config_hash for s in specs}) == len(specs), "trials must differ"
    assert len({s.trial_id for s in specs}) == len(specs)
    for spec in specs:
        assert set(spec.params) == set(study.swept_keys)
        for key, value in spec.params.items():
            node = spec.config
            for part in key.split("."):
                node = getattr(node, part)
            assert node == (tuple(value) if isinstance(value, list) else value)
    first = specs[0].config
    if preset == "smoke":
        assert study.size == "tiny" and first.data.name == "fashion-mnist" and first.data.limit_train == 2000
        assert first.pretrain.samples <= 1024 and first.probe.epochs <= 2
    elif preset == "cpu":
        assert study.size == "cpu-s" and first.data.name == "fashion-mnist"
    elif preset == "paper":
        assert study.size == "vit-b/16" and first.data.name.startswith("imagefolder:")
        assert study.resources.gpus_per_trial == 1
        assert first.model.pred_width == 384 or "model.pred_width" in study.swept_keys


@pytest.mark.parametrize(("name", "preset"), CASES)
def test_resolved_spec_round_trips(name: str, preset: str, tmp_path: Path) -> None:
    study = load_study(name, preset=preset, sets={"pretrain.weight_decay": 0.01})
    (tmp_path / "study.toml").write_text(study.to_toml())
    again = load_study(tmp_path)  # a study directory resolves to its study.toml
    assert again.preset == preset and again.name == study.name
    assert [s.config_hash for s in again.expand()] == [s.config_hash for s in study.expand()]
    assert again.base_config().config_hash() == study.base_config().config_hash()
    assert again.search == study.search and again.resources == study.resources


def test_default_preset_is_cpu() -> None:
    study = load_study("block-size")
    assert study.preset == "cpu" and study.size == "cpu-s"
    assert sorted({s.params["model.block_size"] for s in study.expand()}) == [1, 2, 4]
    assert study.base_config().pretrain.samples == 30000


def test_paper_protocol() -> None:
    study = load_study("block-size", preset="paper")
    cfg = study.base_config()
    assert cfg.pretrain.samples == 100 * 1_281_167 and cfg.pretrain.warmup_samples == 10 * 1_281_167
    assert cfg.pretrain.lr == 1e-3 and cfg.model.pred_width == 384 and cfg.model.pred_depth == 8
    assert [s.params["model.block_size"] for s in study.expand()] == [1, 2, 4]
    # the placeholder dataset path is fine for `show`, and fails at run time with one line
    with pytest.raises(StudyError) as err:
        study.check_data()
    msg = str(err.value)
    assert msg.startswith("studies/block-size.toml: data.name='imagefolder:/path/to/imagenet': ")
    assert "\n" not in msg


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed")
def test_check_data_finds_fashion_mnist() -> None:
    for preset in ("smoke", "cpu"):
        found = load_study("block-size", preset=preset).check_data()
        assert list(found) == ["fashion-mnist"], (preset, found)
        assert Path(found["fashion-mnist"]).resolve() == FASHION.resolve(), found


def test_zip_group_moves_keys_together() -> None:
    study = load_study("width", preset="cpu")
    pairs = [(s.config.model.width, s.config.model.num_heads) for s in study.expand()]
    assert pairs == [(64, 2), (96, 3), (128, 4), (192, 6)]
    assert study.swept_keys == ["model.width", "model.num_heads"]
    assert all(s.config.model.width // s.config.model.num_heads == 32 for s in study.expand())
    crossed = load_study("scaling", preset="smoke")
    assert crossed.n_trials == 9 and len(crossed.swept_keys) == 4


# ---------------------------------------------------------------------------------------------
# Bad study files: one line, naming the file, the key and the value


def _write(tmp_path: Path, text: str, name: str = "mine.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(*args, **kwargs) -> str:
    with pytest.raises(StudyError) as err:
        load_study(*args, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def test_bad_block_size_names_file_key_and_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "studies").mkdir()
    _write(tmp_path / "studies", 'size = "cpu-s"\n[axes]\n"model.block_size" = [1, 3]\n', "block-size.toml")
    monkeypatch.chdir(tmp_path)
    msg = _error("studies/block-size.toml")
    assert msg == ("studies/block-size.toml: axes.model.block_size=3: model.block_size=3 does not divide the "
                   "8x8 patch grid (allowed: 1, 2, 4)")


@pytest.mark.parametrize(("text", "expected"), [
    ('size = "cpu-s"\ncolour = 1\n', "unknown key 'colour' (allowed: name,"),
    ('[base]\n"model.blok_size" = 2\n', "base.model.blok_size=2: unknown config key 'model.blok_size' (did you "
                                        "mean 'model.block_size'? valid keys: data.augment"),
    ('[base]\nmodel.block_size = "2"\n', 'base.model.block_size="2": model.block_size=\'2\' has the wrong type'),
    ('[axes]\n"model.widht" = [1, 2]\n', "axes.model.widht: unknown config key 'model.widht'"),
    ('[axes]\n"model.loss" = ["l2", "l3"]\n', "axes.model.loss=\"l3\": model.loss='l3' is not allowed"),
    ('[axes]\n"model.block_size" = 2\n', "axes.model.block_size=2: an axis must be a non-empty list"),
    ('[resources]\ncpus = 2\n', "resources.cpus: unknown key (allowed: cpus_per_trial"),
    ('[resources]\ncpus_per_trial = "two"\n', 'resources.cpus_per_trial="two": must be a number > 0'),
    ('size = "huge"\n', 'size="huge": unknown size (allowed: tiny,'),
    ('seeds = 0\n', "seeds=0: must be >= 1"),
    ('[base]\nseed = 3\n', "base.seed=3: set seeds with"),
    ('[axes]\nw = [{ "model.width" = 64, "model.num_heads" = 3 }]\n',
     'axes.w[0]={ "model.width" = 64, "model.num_heads" = 3 }: model.width=64 is not divisible by model.num_heads=3'),
    ('[axes]\nw = [{ "model.width" = 64 }, { "model.num_heads" = 2 }]\n', "every value of a zip group must set"),
    ('[base]\n"pretrain.samples" = 100\n', "base.pretrain.samples=100: pretrain.warmup_samples=6000 must be in"),
    ('[search]\nkind = "grid"\n', 'search.kind="grid": unknown search'),
    ('[search]\nmetric = "acc"\n[search.space]\n"pretrain.lr" = { type = "loguniform", low = 1e-4, high = 1e-3 }\n',
     'search.metric="acc": unknown metric'),
    ('[search]\n[search.space]\n"pretrain.lr" = { type = "gauss", low = 1e-4, high = 1e-3 }\n',
     'search.space.pretrain.lr.type="gauss": unknown type'),
    ('[search]\n[search.space]\n"pretrain.lr" = { type = "loguniform", low = 0, high = 1e-3 }\n',
     "search.space.pretrain.lr.low=0: loguniform needs low > 0"),
    ('[search]\n[search.space]\n"pretrain.warmup_samples" = { type = "int", low = 0, high = 99999 }\n',
     "search.space.pretrain.warmup_samples=99999: pretrain.warmup_samples=99999 must be in"),
    ('[search]\n[search.space]\n"pretrain.lr" = { type = "uniform", low = 1e-3, high = 2e-3 }\n'
     '[axes]\n"model.loss" = ["l1", "l2"]\n', "a search study cannot also have axes"),
    ('[axes]\n"model.block_size" = [1, 1]\n', "makes the same config as"),
    ('[base\n', "invalid TOML"),
])
def test_bad_study_files(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    msg = _error(path)
    assert msg.startswith(f"{path}: ") or msg.startswith("mine.toml: "), msg
    assert expected in msg, msg


def test_unknown_preset_and_study(tmp_path: Path) -> None:
    assert _error("block-size", preset="huge") == (
        "studies/block-size.toml: preset 'huge' is not defined (allowed: smoke, cpu, paper)")
    assert _error("no-such-study").startswith("unknown study 'no-such-study' (shipped: block-size,")
    assert _error(str(tmp_path / "missing.toml")).endswith("missing.toml: no such study file")
    assert "not a study directory" in _error(tmp_path)


def test_preset_errors_name_the_preset(tmp_path: Path) -> None:
    path = _write(tmp_path, '[presets.smoke]\n"pretrain.samples" = "many"\n')
    assert "presets.smoke.pretrain.samples=\"many\": pretrain.samples='many' has the wrong type" in _error(
        path, preset="smoke")
    path = _write(tmp_path, '[presets.smoke.axes]\n"model.block_size" = [3]\n')
    assert _error(path, preset="smoke").endswith(
        "presets.smoke.axes.model.block_size=3: model.block_size=3 does not divide the 4x4 patch grid (allowed: 1, 2)")


# ---------------------------------------------------------------------------------------------
# --set


def test_parse_set_takes_toml_literals() -> None:
    assert parse_set("model.block_size=2") == ("model.block_size", 2)
    assert parse_set("probe.lrs=[1e-3,3e-3]") == ("probe.lrs", [1e-3, 3e-3])
    assert parse_set("pretrain.lr=3e-4") == ("pretrain.lr", 3e-4)
    assert parse_set("data.augment=false") == ("data.augment", False)
    assert parse_set("model.loss=l1") == ("model.loss", "l1")  # bare string
    assert parse_set('model.loss="l1"') == ("model.loss", "l1")  # quoted string
    assert parse_set("data.name=imagefolder:/data/imagenet") == ("data.name", "imagefolder:/data/imagenet")
    assert parse_set(" seeds = 3 ") == ("seeds", 3)
    assert parse_sets(["a=1", "b=[1, 2]"]) == {"a": 1, "b": [1, 2]}
    with pytest.raises(StudyError, match="expected KEY=VALUE"):
        parse_set("model.block_size")


def test_set_overrides_keys_axes_size_and_seeds() -> None:
    study = load_study("block-size", preset="smoke", sets=["pretrain.samples=256", "probe.lrs=[1e-3]",
                                                           "data.name=fashion-mnist"])
    assert all(s.config.pretrain.samples == 256 and s.config.probe.lrs == (1e-3,) for s in study.expand())
    assert study.sets == ("pretrain.samples=256", "probe.lrs=[0.001]", 'data.name="fashion-mnist"')
    # a swept key: a list replaces the axis, a scalar fixes it to one value
    assert [s.params["model.block_size"] for s in load_study("block-size", preset="paper",
                                                             sets={"model.block_size": [2, 4]}).expand()] == [2, 4]
    assert load_study("block-size", preset="smoke", sets={"model.block_size": 2}).n_trials == 1
    # a new axis, the size, seeds, resources and search settings
    study = load_study("loss", preset="smoke", sets={"axes.model.order": ["raster", "random"], "seeds": [3, 4]})
    assert study.name == "loss" and study.n_trials == 2 * 2 * 2 and {s.seed for s in study.expand()} == {3, 4}
    assert load_study("loss", preset="smoke", seeds=3).seeds == (0, 1, 2)
    assert load_study("loss", sets={"size": "cpu-m"}).size == "cpu-m"
    assert load_study("loss", sets={"resources.max_concurrent": 3}).resources.max_concurrent == 3
    assert load_study("lr-search", preset="smoke", sets={"search.num_samples": 5}).search.num_samples == 5
    # the zip group's keys are only replaced as a group
    assert "swept by the zip group 'width'" in _error("width", sets={"model.width": 48})
    study = load_study("width", preset="smoke", sets={"axes.width": [{"model.width": 8, "model.num_heads": 1}]})
    assert [(s.config.model.width, s.config.model.num_heads) for s in study.expand()] == [(8, 1)]


def test_set_errors_name_the_flag() -> None:
    assert _error("block-size", preset="smoke", sets=["model.block_size=3"]) == (
        "studies/block-size.toml: --set model.block_size=3: model.block_size=3 does not divide the 4x4 patch grid "
        "(allowed: 1, 2)")
    assert "--set pretrain.samples=\"abc\"" in _error("block-size", sets=["pretrain.samples=abc"])
    assert "--set model.nope=1: unknown config key 'model.nope'" in _error("block-size", sets=["model.nope=1"])
    assert "--seeds=0: must be >= 1" in _error("block-size", seeds=0)


# ---------------------------------------------------------------------------------------------
# CLI (no Ray): list, show, bad input is one red line with exit code 2


def test_cli_list_and_show() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0, res.output
    assert "block-size" in res.output and "lr-search" in res.output and "smoke 2" in res.output
    res = runner.invoke(app, ["show", "block-size", "--preset", "paper"])
    assert res.exit_code == 0, res.output
    assert "block_size=4,seed=0" in res.output and "40% MFU" in res.output and "128,116,700" in res.output
    assert "loader workers per GPU" in res.output and "--set data.workers=" in res.output
    res = runner.invoke(app, ["show", "width", "-p", "smoke", "--set", "pretrain.samples=256", "--seeds", "2"])
    assert res.exit_code == 0, res.output
    assert "width=32,seed=1" in res.output and "256" in res.output
    res = runner.invoke(app, ["show", "lr-search", "-p", "smoke"])
    assert res.exit_code == 0 and "Optuna" in res.output


def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["show", "block-size", "--set", "model.block_size=3"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--set model.block_size=3" in lines[0] and "8x8 patch grid" in lines[0]
    res = runner.invoke(app, ["show", "block-size", "--preset", "nope"])
    assert res.exit_code == 2 and "preset 'nope' is not defined" in res.output
    res = runner.invoke(app, ["show", "block-size", "--set", "oops"])
    assert res.exit_code == 2 and "expected KEY=VALUE" in res.output
    res = runner.invoke(app, ["status", str(tmp_path)])
    assert res.exit_code == 2 and "not a study directory" in res.output


def test_study_toml_round_trips_any_text(tmp_path: Path) -> None:
    """study.toml is written by tomli-w: a description with CR LF, quotes, backslashes and unicode
    reads back unchanged (the hand-written writer produced a file tomllib rejected)."""
    text = 'line one\r\nline "two" \\ tab\there, ünïcode'
    _write(tmp_path, f'description = {json.dumps(text)}\nsize = "cpu-s"\n[axes]\n"model.block_size" = [1, 2]\n',
           "mine.toml")
    study = load_study(tmp_path / "mine.toml")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "study.toml").write_text(study.to_toml())
    again = load_study(tmp_path / "dir")
    assert again.description == text
    assert [t.config_hash for t in again.expand()] == [t.config_hash for t in study.expand()]
