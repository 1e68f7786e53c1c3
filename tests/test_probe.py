"""Probes: real learning on Fashion-MNIST, N lrs at once == each lr alone, honest selection, caches
agree, clear errors before compute, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
import typer
from typer.testing import CliRunner

from xtra.benchmarks.probe import bench_probe, protocol_cost
from xtra.checkpoint import CheckpointError, load_checkpoint
from xtra.cli.probe import probe_cmd
from xtra.config import DataConfig, PretrainConfig, ProbeConfig, model_config
from xtra.data import Split, load_dataset
from xtra.pretrain import pretrain
from xtra.probe import (
    MEMORY_CACHE_BYTES,
    Source,
    cache_mode,
    evaluate,
    head_inputs_all,
    load_encoder,
    make_head,
    probe,
    probe_lr_at,
    probe_run,
    random_encoder,
    run_configs,
    train_heads,
    train_probe,
)

DATA = DataConfig(name="fashion-mnist", limit_train=4000)
# The default lrs (1e-4..3e-3) suit large encoders and long probes; the tiny encoder in a few epochs
# needs larger ones.
FAST = ProbeConfig(kinds=("linear",), lrs=(1e-2, 3e-2, 1e-1), epochs=4, warmup_epochs=1, batch_size=128)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Everything here is tiny ops, where a second intra-op thread only adds waiting (badly so on a
    shared machine); results are compared within one thread setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A briefly pretrained `tiny` XTRA on real Fashion-MNIST (shared by the module)."""
    path = tmp_path_factory.mktemp("run")
    pretrain(model_config("tiny"), DATA, PretrainConfig(samples=2048, batch_size=128, warmup_samples=256,
                                                         checkpoint_every=2048), run_dir=path)
    return path


@pytest.fixture(scope="module")
def encoder(run_dir):
    state = load_checkpoint(run_dir)
    model_cfg, _, _ = run_configs(state, run_dir)
    return load_encoder(state, model_cfg, run_dir).eval()


@pytest.fixture(scope="module")
def small(encoder):
    """A small slice of the run's dataset: 1024 train, 512 val, 1024 test images."""
    ds = load_dataset(DATA, 32, 1)
    cut = lambda split, n: Split(split.images[:n], split.labels[:n])  # noqa: E731
    return dataclasses.replace(ds, train=cut(ds.train, 1024), val=cut(ds.val, 512), test=cut(ds.test, 1024))


def _state(head) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in head.state_dict().items()}


def _untimed(entry: dict) -> dict:
    """A kind's result without its timings (encode_s, head_s), which no rerun repeats."""
    return {k: v for k, v in entry.items() if k not in ("encode_s", "head_s")}


def _without_meta(result: dict) -> dict:
    return {k: _untimed(v) if isinstance(v, dict) else v for k, v in result.items() if k != "meta"}


def test_schedule_warms_up_from_a_tenth_then_cosine_to_min_lr():
    """The official schedule: warmup epochs starting from lr/10, then cosine down to 1e-5."""
    cfg = ProbeConfig()
    total, warmup, lr = 101, 10, 2e-3
    f = [probe_lr_at(s, total, warmup, lr, cfg) for s in range(total)]
    assert f[0] == pytest.approx(lr / 10) and f[5] == pytest.approx(lr * (0.1 + 0.9 * 0.5))
    assert f[10] == pytest.approx(lr) and f[-1] == pytest.approx(1e-5)
    assert all(a < b for a, b in zip(f[:10], f[1:11]))
    assert all(a > b for a, b in zip(f[10:], f[11:]))
    assert f[55] == pytest.approx(1e-5 + (lr - 1e-5) / 2)
    assert probe_lr_at(0, 10, 0, lr, cfg) == lr


def test_linear_probe_learns_fashion_mnist_and_is_deterministic(run_dir):
    first = probe_run(run_dir, cfg=FAST, seed=0)
    linear = first["linear"]
    assert linear["test_top1"] > 0.5, linear  # chance is 0.1
    assert linear["epochs"] == FAST.epochs and linear["cache"] == "memory"
    meta = first["meta"]
    assert (meta["data"], meta["n_train"], meta["n_val"], meta["n_test"]) == ("fashion-mnist", 4000, 6000, 10000)
    on_disk = json.loads((run_dir / "probe.json").read_text())
    assert on_disk["linear"]["test_top1"] == linear["test_top1"]
    assert on_disk["linear"]["val_top1"] == {str(lr): acc for lr, acc in linear["val_top1"].items()}
    # Same seed, same numbers; the per-epoch val evaluation of the progress bar changes nothing.
    again = probe_run(run_dir, cfg=FAST, seed=0, progress=True)
    assert _without_meta(again) == _without_meta(first)


def test_probe_depends_on_the_seed_only(encoder, small):
    cfg = dataclasses.replace(FAST, kinds=("linear", "attentive"), epochs=2)
    first = probe(encoder, small, cfg, seed=0)
    assert _without_meta(probe(encoder, small, cfg, seed=0)) == _without_meta(first)
    assert probe(encoder, small, cfg, seed=1) != first


def test_random_init_probe_writes_its_own_file(run_dir):
    trained = json.loads((run_dir / "probe.json").read_text()) if (run_dir / "probe.json").exists() else None
    floor = probe_run(run_dir, cfg=FAST, seed=0, random_init=True)
    assert (run_dir / "probe-random.json").exists() and floor["meta"]["random_init"] is True
    if trained is not None:  # probe.json is left alone
        assert json.loads((run_dir / "probe.json").read_text()) == trained
    state = load_checkpoint(run_dir)
    model_cfg, _, run_seed = run_configs(state, run_dir)
    rand, pre = random_encoder(model_cfg, run_seed), load_encoder(state, model_cfg, run_dir)
    assert not torch.equal(rand.blocks[0].attn.qkv.weight, pre.blocks[0].attn.qkv.weight)
    assert torch.equal(random_encoder(model_cfg, run_seed).pos, rand.pos)  # seeded


@pytest.mark.parametrize("kind,cache,augment", [
    ("linear", "memory", False),
    ("linear", "off", False),
    ("linear", "off", True),
    ("attentive", "off", False),
    ("attentive", "memory", False),
])
def test_heads_trained_together_are_the_heads_trained_alone(encoder, small, kind, cache, augment):
    """All lrs in one pass (one batched module: `batched_logits`) == each lr alone, up to float
    rounding (a batched matmul sums in another order)."""
    cfg = ProbeConfig(kinds=(kind,), lrs=(1e-3, 1e-2, 1e-1), epochs=2, warmup_epochs=1, batch_size=128,
                      cache=cache, augment=augment, layers=2 if kind == "attentive" else 1)
    together, info = train_probe(kind, encoder, small, cfg, seed=3)
    assert info["cache"] == ("off" if augment else cache)
    states = [_state(h) for h in together]
    assert not torch.equal(states[0]["fc.weight"], states[2]["fc.weight"])  # the lrs really differ
    for i, lr in enumerate(cfg.lrs):
        (alone,), _ = train_probe(kind, encoder, small, dataclasses.replace(cfg, lrs=(lr,)), seed=3)
        alone_state = _state(alone)
        assert alone_state.keys() == states[i].keys()
        for key, value in alone_state.items():
            torch.testing.assert_close(value, states[i][key], rtol=1e-4, atol=1e-5,
                                       msg=lambda m, key=key, lr=lr: f"{kind} head for lr={lr}: {key}: {m}")


def _cached_splits(encoder, small, kind: str, cfg: ProbeConfig) -> tuple[Source, Source]:
    """The train and val head inputs of `kind`, computed once and held in memory."""
    def split(name: str) -> Source:
        images = getattr(small, name).images
        return Source(encoder, images, kind, cfg, torch.device("cpu"), "memory", None, name,
                      prebuilt=head_inputs_all(encoder, images, (kind,), cfg)[kind])
    return split("train"), split("val")


@pytest.mark.parametrize("kind", ["linear", "attentive"])
def test_the_reference_path_trains_each_head_bitwise_as_alone_and_the_batched_path_matches_it(encoder, small, kind):
    """train_heads(batched=False), one head after the other, is bitwise each head alone; the batched
    module gives the same heads and the same val top-1 (up to rounding)."""
    cfg = ProbeConfig(kinds=(kind,), lrs=(3e-3, 3e-2), epochs=2, warmup_epochs=1, batch_size=128, layers=2)
    source, val = _cached_splits(encoder, small, kind, cfg)
    runs = {}
    for batched in (False, True):
        heads = [make_head(kind, encoder.cfg, 10, cfg, seed=1) for _ in cfg.lrs]
        train_heads(kind, heads, cfg.lrs, source, small.train.labels, cfg, seed=1, batched=batched)
        runs[batched] = heads, evaluate(heads, val, small.val.labels, 128, batched=batched)
    for lr, head in zip(cfg.lrs, runs[False][0]):
        alone = make_head(kind, encoder.cfg, 10, cfg, seed=1)
        train_heads(kind, [alone], (lr,), source, small.train.labels, cfg, seed=1, batched=False)
        for key, value in _state(alone).items():
            assert torch.equal(value, _state(head)[key]), f"{kind} lr={lr}: {key}"
    for ref, fast in zip(*(runs[b][0] for b in (False, True))):
        for key, value in _state(ref).items():
            torch.testing.assert_close(_state(fast)[key], value, rtol=1e-4, atol=1e-5)
    assert runs[False][1] == pytest.approx(runs[True][1], abs=2 / len(small.val))  # a near-tie may flip


@pytest.mark.parametrize("kind", ["linear", "attentive"])
@pytest.mark.parametrize("train", [True, False])
def test_batched_logits_and_their_gradients_equal_each_head_on_its_own(kind, train):
    from xtra.probe import batched_logits, share_norm

    cfg = model_config("tiny", width=64, num_heads=2, depth=3)
    torch.manual_seed(0)
    x = torch.randn(32, 16, 64) * 3 + 1
    x = x.mean(dim=1) if kind == "linear" else x
    heads = [make_head(kind, cfg, 10, ProbeConfig(attentive_queries=2), seed=s) for s in range(3)]
    twins = [make_head(kind, cfg, 10, ProbeConfig(attentive_queries=2), seed=s) for s in range(3)]
    if not train:  # eval: running statistics from a few batches, the same for every head
        for h in heads + twins:
            with torch.no_grad():
                h(x * 0.5 + 0.2)
    for h in heads + twins:
        h.train(train)
    y = torch.randint(0, 10, (32,))
    together = batched_logits(heads, x)  # (L, B, C)
    torch.nn.functional.cross_entropy(together.flatten(0, 1), y.repeat(3), reduction="sum").div(32).backward()
    share_norm(heads)
    for i, (head, twin) in enumerate(zip(heads, twins)):
        alone = twin(x)
        torch.testing.assert_close(together[i], alone, rtol=1e-5, atol=1e-5)
        torch.nn.functional.cross_entropy(alone, y).backward()
        for (name, p), q in zip(head.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
        for key, value in twin.bn.state_dict().items():
            torch.testing.assert_close(head.bn.state_dict()[key], value)


def test_cache_in_memory_on_disk_and_off_give_the_same_linear_probe(encoder, small, tmp_path):
    results = {}
    for cache in ("memory", "disk", "off"):
        cfg = dataclasses.replace(FAST, epochs=2, cache=cache)
        heads, info = train_probe("linear", encoder, small, cfg, seed=0, cache_dir=tmp_path / "cache")
        assert info["cache"] == cache
        results[cache] = ([_state(h) for h in heads], info)
    assert list((tmp_path / "cache").iterdir()) == []  # the disk scratch is removed
    ref_states, ref_info = results["memory"]
    for cache in ("disk", "off"):
        states, info = results[cache]
        assert info["val_top1"] == ref_info["val_top1"] and info["best_lr"] == ref_info["best_lr"]
        for ref, got in zip(ref_states, states):
            for key in ref:
                torch.testing.assert_close(got[key], ref[key], rtol=0, atol=1e-6)


def test_disk_cache_round_trips_rows_in_batch_order(encoder, small, tmp_path):
    cfg = dataclasses.replace(FAST, cache="disk")
    disk = Source(encoder, small.val.images, "linear", cfg, torch.device("cpu"), "disk", tmp_path, "val")
    mem = Source(encoder, small.val.images, "linear", cfg, torch.device("cpu"), "memory", None, "val")
    idx = torch.tensor([7, 3, 500, 0, 3])
    assert (tmp_path / "linear-val.npy").exists()
    torch.testing.assert_close(disk.batch(idx), mem.batch(idx), rtol=0, atol=0)


def test_cache_mode_auto():
    tiny, big = model_config("tiny"), model_config("vit-h/14")
    auto = ProbeConfig()
    assert cache_mode("linear", auto, 10_000, tiny) == "memory"
    assert cache_mode("attentive", auto, 10_000, tiny) == "memory"
    n = MEMORY_CACHE_BYTES // (4 * big.width) + 1
    assert cache_mode("linear", auto, n, big) == "disk"
    assert cache_mode("attentive", auto, n, big) == "off"  # n x 256 tokens x 1280 floats: past the disk limit
    n_small = MEMORY_CACHE_BYTES // (4 * 16 * tiny.width) + 1
    assert cache_mode("attentive", auto, n_small, tiny) == "disk"
    assert cache_mode("linear", dataclasses.replace(auto, augment=True), 10, tiny) == "off"
    assert cache_mode("linear", dataclasses.replace(auto, cache="off"), 10, tiny) == "off"


def test_lr_is_chosen_on_val_and_only_that_head_is_tested(encoder, small):
    """Relabel val with the predictions of the smallest-lr head: that head scores 100% on val and must
    be chosen, although it is the worst on test. Training never sees val, so probe() retrains it bitwise."""
    cfg = dataclasses.replace(FAST, lrs=(1e-4, 1e-1), epochs=2)
    heads, _ = train_probe("linear", encoder, small, cfg, seed=0)
    val_src = Source(encoder, small.val.images, "linear", cfg, torch.device("cpu"), "memory", None, "val")
    test_src = Source(encoder, small.test.images, "linear", cfg, torch.device("cpu"), "memory", None, "test")
    with torch.no_grad():
        heads[0].eval()
        rigged = heads[0](val_src.cache).argmax(dim=-1)
    test_acc = evaluate(heads, test_src, small.test.labels, 256)
    assert test_acc[1] > test_acc[0]  # the test split would pick the other lr
    rigged_ds = dataclasses.replace(small, val=Split(small.val.images, rigged))
    result = probe(encoder, rigged_ds, cfg, seed=0)["linear"]
    val = result["val_top1"]
    assert list(val) == list(cfg.lrs) and val[1e-4] == 1.0 and val[1e-1] < 1.0
    assert result["best_lr"] == max(val, key=val.get) == 1e-4 and result["best_val_top1"] == 1.0
    assert result["test_top1"] == test_acc[0]  # a single number, for the chosen head only


def test_probe_run_rejects_bad_input_before_compute(run_dir, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint") as err:
        probe_run(tmp_path / "empty", cfg=FAST)
    assert "\n" not in str(err.value)

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(run_dir / "checkpoint.pt", run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"different model config.*model\.width \(checkpoint 32, expected 64\)"):
        probe_run(run, cfg=FAST, expect_model=model_config("tiny", width=64))
    rgb = load_dataset(dataclasses.replace(DATA, limit_train=512), 32, 3)
    with pytest.raises(ValueError, match="3-channel 32x32 but the encoder takes 1-channel 32x32") as err:
        probe_run(run, cfg=FAST, dataset=rgb)
    assert "\n" not in str(err.value)
    small_res = load_dataset(dataclasses.replace(DATA, limit_train=512), 28, 1)
    with pytest.raises(ValueError, match="1-channel 28x28"):
        probe_run(run, cfg=FAST, dataset=small_res)
    with pytest.raises(ValueError, match="dataset 'mnist' not found"):
        probe_run(run, DataConfig(name="mnist", root=str(tmp_path / "nowhere")), cfg=FAST)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]  # nothing was written


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)  # a group, so the command is invoked by name as in `xtra probe`
    app.command("probe")(probe_cmd)
    return app


def test_cli_probe_prints_table_and_writes_json(run_dir):
    result = CliRunner().invoke(_cli(), ["probe", str(run_dir), "--kind", "linear", "--epochs", "2",
                                         "--lrs", "1e-2,1e-1", "--batch-size", "128", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "val top-1" in result.output and "test top-1" in result.output
    assert str(run_dir / "probe.json") in result.output.replace("\n", "")
    written = json.loads((run_dir / "probe.json").read_text())
    assert set(written["linear"]["val_top1"]) == {"0.01", "0.1"}
    assert written["meta"]["probe"]["epochs"] == 2 and "attentive" not in written
    assert written["meta"]["probe"]["head_init"] == "official"  # the CLI starts the heads as cls.py does


@pytest.mark.parametrize("args,message", [
    (["--kind", "nonlinear"], "--kind='nonlinear' is not allowed"),
    (["--lrs", "1e-3,fast"], "is not a comma-separated list of numbers"),
    (["--epochs", "0"], "probe.epochs=0 is out of range"),
    (["--mask", "causal"], "probe.mask='causal' is not allowed"),
    (["--features", "pooled"], "probe.features='pooled' is not allowed"),
    (["--head-init", "xavier"], "probe.head_init='xavier' is not allowed"),
    (["--data", "cifar11"], "data.name='cifar11' is not a known dataset"),
    (["--data", "imagefolder:/nonexistent/xtra"], "not found"),
])
def test_cli_bad_input_is_one_red_line_and_exit_2(run_dir, args, message):
    result = CliRunner().invoke(_cli(), ["probe", str(run_dir), "--no-progress", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_cli_missing_checkpoint(tmp_path):
    result = CliRunner().invoke(_cli(), ["probe", str(tmp_path)])
    assert result.exit_code == 2 and "no checkpoint here" in result.stderr


def test_bench_probe_times_real_runs_whose_heads_agree(encoder, small):
    """The bench's single-lr and n-lr runs are real probes: the lr they share scores the same in both
    (a head trained with others is the head trained alone, up to float rounding: a near-tie may flip),
    and the timed runs took time."""
    out = bench_probe(encoder, small, n_lrs=3, epochs=1, batch_size=128, device="cpu", repeats=1)
    for key in ("linear", "attentive"):
        assert out[key]["one_lr_s"] > 0 and out[key]["3_lrs_s"] > 0
        assert out[key]["val_top1_alone"] > 0.1
        assert abs(out[key]["val_top1_alone"] - out[key]["val_top1_in_pass"]) <= 2 / len(small.val)
    assert out["n_train"] == len(small.train) and not encoder.training


def test_protocol_cost_costs_the_first_single_pass_that_reaches_the_official_top1(encoder, small):
    """The protocol bench: 7 separate official runs per kind over ours' lr range, then ours with 2x,
    4x ... epochs until it reaches the official top-1; with no tolerance below it, ours stops at its
    first run; with a target no run can reach, every rung runs and no ratio is claimed."""
    ours = dataclasses.replace(FAST, epochs=1, warmup_epochs=0)
    easy = protocol_cost(encoder, small, ours, 0, n_train=256, n_eval=256, official_epochs=1, tolerance=1.0, rungs=2)
    assert easy["official_lrs"] == (0.01, 0.0147, 0.0215, 0.0316, 0.0464, 0.0681, 0.1)
    linear = easy["linear"]
    assert len(linear["official_val_top1"]) == 7 and linear["official_s"] > 0
    assert linear["reached"] and [r["epochs"] for r in linear["ours"]] == [1]
    assert linear["speedup"] == linear["official_s"] / linear["ours"][0]["s"] == easy["speedup"]
    never = protocol_cost(encoder, small, ours, 0, n_train=256, n_eval=256, official_epochs=1, tolerance=-1.0,
                          rungs=2)
    assert [r["epochs"] for r in never["linear"]["ours"]] == [1, 2]
    assert not never["linear"]["reached"] and never["linear"]["speedup"] is None and never["speedup"] is None
    assert never["linear"]["official_top1"] == linear["official_top1"]  # the same seeded runs


def test_limit_train_is_a_fixed_subset(small):
    from xtra.probe import limit_train

    a, b = limit_train(small, 100), limit_train(small, 100)
    assert len(a.train) == 100 and torch.equal(a.train.labels, b.train.labels)
    assert a.val is small.val and a.test is small.test
    assert limit_train(small, 0) is small


def test_both_kinds_from_one_encoder_pass_equal_each_kind_alone(encoder, small):
    """The shared feature pass (both probes cached) gives exactly what each probe gives on its own."""
    cfg = dataclasses.replace(FAST, epochs=2, kinds=("linear", "attentive"), cache="memory")
    together = probe(encoder, small, cfg, seed=0)
    for kind in cfg.kinds:
        alone = probe(encoder, small, dataclasses.replace(cfg, kinds=(kind,)), seed=0)[kind]
        assert _untimed(alone) == _untimed(together[kind])


@pytest.mark.parametrize("queries", [1, 3])
def test_attentive_head_fast_form_equals_the_textbook_form(queries):
    from xtra.probe import AttentiveHead

    torch.manual_seed(0)
    head = AttentiveHead(48, 4, queries, 10)
    head.reset(torch.Generator().manual_seed(1))
    x = torch.randn(16, 20, 48, dtype=torch.float64, requires_grad=True)
    head = head.double().train()  # BatchNorm on batch statistics, as in training
    fast, ref = head(x), head.forward_reference(x)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    g_fast = torch.autograd.grad(fast.square().sum(), [x, *head.parameters()])
    g_ref = torch.autograd.grad(ref.square().sum(), [x, *head.parameters()])
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# The official heads, transcribed from their definitions (XTRA's cls.py follows AIM's
# AttentionPoolingClassifier: BatchNorm over tokens, k/v without bias, SDPA pooling of learned
# queries averaged, Linear; the linear probe: mean over tokens, BatchNorm1d(affine=False), Linear).


class OfficialAttentive(torch.nn.Module):
    def __init__(self, dim, out_features, num_heads, num_queries):
        super().__init__()
        self.num_heads, self.num_queries = num_heads, num_queries
        self.k = torch.nn.Linear(dim, dim, bias=False)
        self.v = torch.nn.Linear(dim, dim, bias=False)
        self.cls_token = torch.nn.Parameter(torch.randn(1, num_queries, dim) * 0.02)
        self.linear = torch.nn.Linear(dim, out_features)
        self.bn = torch.nn.BatchNorm1d(dim, affine=False, eps=1e-6)

    def forward(self, x):
        B, N, C = x.shape
        x = self.bn(x.transpose(-2, -1)).transpose(-2, -1)
        cls_token = self.cls_token.expand(B, -1, -1)
        q = cls_token.reshape(B, self.num_queries, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        k = self.k(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        v = self.v(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        x_cls = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        x_cls = x_cls.transpose(1, 2).reshape(B, self.num_queries, C).mean(dim=1)
        return self.linear(x_cls)


class OfficialLinear(torch.nn.Module):
    def __init__(self, dim, out_features):
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.linear = torch.nn.Linear(dim, out_features)

    def forward(self, tokens):  # (B, N, C) last-block tokens
        return self.linear(self.bn(tokens.mean(dim=1)))


@pytest.mark.parametrize("train", [True, False])
def test_heads_match_the_official_definitions(train):
    from xtra.probe import AttentiveHead, LinearHead

    cfg = model_config("tiny", width=64, num_heads=2, depth=3)
    torch.manual_seed(0)
    tokens = torch.randn(32, 16, 64) * 3 + 1
    official_a, official_l = OfficialAttentive(64, 10, 16, 1), OfficialLinear(64, 10)
    ours_a = make_head("attentive", cfg, 10, ProbeConfig(), seed=0)
    ours_l = make_head("linear", cfg, 10, ProbeConfig(), seed=0)
    assert isinstance(ours_a, AttentiveHead) and ours_a.heads == 16 and ours_a.k.bias is None
    assert isinstance(ours_l, LinearHead)
    with torch.no_grad():  # same weights
        official_a.k.weight.copy_(ours_a.k.weight)
        official_a.v.weight.copy_(ours_a.v.weight)
        official_a.cls_token.copy_(ours_a.query)
        official_a.linear.weight.copy_(ours_a.fc.weight)
        official_a.linear.bias.copy_(torch.randn(10))
        ours_a.fc.bias.copy_(official_a.linear.bias)
        official_l.linear.weight.copy_(ours_l.fc.weight)
        official_l.linear.bias.copy_(torch.randn(10))
        ours_l.fc.bias.copy_(official_l.linear.bias)
    for m in (official_a, official_l, ours_a, ours_l):
        m.train(train)
    if not train:  # eval: the running statistics of the same few training batches
        batches = [torch.randn(32, 16, 64) * 2 + 0.5 for _ in range(3)]
        for m in (official_a, official_l, ours_a, ours_l):
            m.train()
            with torch.no_grad():
                for batch in batches:
                    m(batch.mean(dim=1) if isinstance(m, LinearHead) else batch)
            m.eval()
    torch.testing.assert_close(ours_a(tokens), official_a(tokens), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_l(tokens.mean(dim=1)), official_l(tokens), rtol=1e-5, atol=1e-5)


def test_official_head_init_is_pytorchs_linear_default_and_a_normal_query():
    """cls.py builds its heads and keeps nn.Linear's default init (weights and bias uniform in
    +-1/sqrt(fan_in)) and a Normal(0, 0.02) query, untruncated; `head_init="official"` starts there,
    seeded; "trunc_normal" (the key-keeping default) is xtra's earlier init."""
    cfg = model_config("cpu-s")  # width 96, 10 classes
    official = ProbeConfig(head_init="official")
    att, lin = make_head("attentive", cfg, 10, official, seed=0), make_head("linear", cfg, 10, official, seed=0)
    bound = 96 ** -0.5
    for layer in (att.k, att.v, att.fc, lin.fc):
        w = layer.weight.detach()
        assert 0.97 * bound < w.abs().max() <= bound  # uniform up to the edge
        assert abs(float(w.std()) - bound / 3**0.5) < 0.08 * bound / 3**0.5  # the uniform's std
    for layer in (att.fc, lin.fc):
        assert layer.bias.abs().max() <= bound and layer.bias.abs().max() > 0.5 * bound  # drawn, not zero
    query = att.query.detach()
    assert abs(float(query.std()) - 0.02) < 0.004 and query.abs().max() > 2 * 0.02  # a Normal, not truncated
    again = make_head("attentive", cfg, 10, official, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(att.state_dict().values(), again.state_dict().values()))
    old = make_head("attentive", cfg, 10, ProbeConfig(), seed=0)
    assert ProbeConfig().head_init == "trunc_normal" and not old.fc.bias.any()
    assert old.k.weight.abs().max() <= 0.04 and old.fc.weight.abs().max() <= 0.02


def test_whitened_tokens_have_identity_covariance_and_the_head_folds_back_onto_raw_tokens():
    """`probe.attentive_whiten`: a head trained on whitened tokens is folded into the official head on
    the raw tokens, the same function (eval mode) up to float rounding."""
    from xtra.probe import AttentiveHead, Whitening

    torch.manual_seed(0)
    raw = (torch.randn(64, 10, 24) @ torch.randn(24, 24)) * 3 + 2  # correlated, off-centre channels
    source = Source(None, raw, "attentive", ProbeConfig(), torch.device("cpu"), "memory", None, "x",
                     prebuilt=raw.clone())
    whitening = Whitening(source)
    whitening.apply_(source)
    z = source.cache.reshape(-1, 24)
    torch.testing.assert_close(z.mean(dim=0), torch.zeros(24), rtol=0, atol=1e-4)
    torch.testing.assert_close(z.t() @ z / len(z), torch.eye(24), rtol=0, atol=1e-3)
    head = AttentiveHead(24, 4, 2, 10)
    head.reset(torch.Generator().manual_seed(1), "official")
    head.train()
    with torch.no_grad():
        for part in source.cache.split(16):  # running statistics as training leaves them
            head(part)
    head.eval()
    with torch.no_grad():
        on_whitened = head(source.cache)
        whitening.fold(head)
        on_raw = head(raw)
    torch.testing.assert_close(on_raw, on_whitened, rtol=1e-4, atol=1e-4)


def test_a_whitened_attentive_probe_returns_heads_that_read_raw_features(encoder, small):
    cfg = dataclasses.replace(FAST, kinds=("attentive",), lrs=(1e-2, 1e-1), epochs=2, warmup_epochs=0,
                              attentive_whiten=True)
    heads, info = train_probe("attentive", encoder, small, cfg, seed=0)
    val = Source(encoder, small.val.images, "attentive", cfg, torch.device("cpu"), "memory", None, "val")
    got = evaluate(heads, val, small.val.labels, 256)
    for want, have in zip(info["val_top1"].values(), got):
        assert abs(want - have) <= 2 / len(small.val), (info["val_top1"], got)
    with pytest.raises(ValueError, match="probe.attentive_whiten=true whitens cached token features"):
        dataclasses.replace(cfg, cache="off")


def test_features_are_raw_block_outputs_and_the_attentive_input_averages_the_last_blocks(encoder):
    from xtra.probe import head_inputs_all

    x = torch.randn(4, 1, 32, 32)
    cfg = ProbeConfig()  # raw features, layers=6 clamped to the tiny encoder's depth 2
    got = head_inputs_all(encoder, x, ("linear", "attentive"), cfg)
    with torch.no_grad():
        h = encoder.embed(x, torch.arange(16)) if encoder.cfg.block_size == 1 else None
        assert h is not None  # the fixture's encoder has k = 1: token order is raster
        outs = []
        for block in encoder.blocks:
            h = block(h, 1)
            outs.append(h)
    torch.testing.assert_close(got["linear"], outs[-1].mean(dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["attentive"], (outs[0] + outs[1]) / 2, rtol=1e-5, atol=1e-5)
    normed = head_inputs_all(encoder, x, ("linear",), dataclasses.replace(cfg, features="normed"))["linear"]
    with torch.no_grad():
        torch.testing.assert_close(normed, encoder.norm(outs[-1]).mean(dim=1), rtol=1e-5, atol=1e-5)


def test_heads_and_layers_are_clamped_to_the_encoder_and_recorded(encoder, small):
    from xtra.probe import attentive_heads

    assert [attentive_heads(w, 16) for w in (768, 1280, 96, 36, 32, 10)] == [16, 16, 16, 12, 16, 10]
    cfg = dataclasses.replace(FAST, kinds=("attentive",), epochs=1, warmup_epochs=0, lrs=(1e-2,))
    result = probe(encoder, small, cfg, seed=0)["attentive"]
    assert (result["layers"], result["heads"], result["features"]) == (2, 16, "raw")


def test_still_improving_is_a_doubling_test():
    from xtra.probe import IMPROVING_TOL, check_epochs, still_improving

    assert check_epochs(100) == (50, 75, 100) and check_epochs(2) == (1, 2) and check_epochs(1) == (1,)
    def pair(both: int, only_head: int, only_twin: int, neither: int) -> tuple[torch.Tensor, torch.Tensor]:
        head = [True] * both + [True] * only_head + [False] * only_twin + [False] * neither
        twin = [True] * both + [False] * only_head + [True] * only_twin + [False] * neither
        return torch.tensor(head), torch.tensor(twin)

    assert still_improving(*pair(4500, 150, 90, 1260)) is True  # +1 point of 6000, z = 60 / sqrt(240) = 3.9
    assert still_improving(*pair(4500, 130, 110, 1260)) is False  # +0.33 points, z = 1.3: val noise
    assert still_improving(*pair(4500, 10, 0, 1490)) is False  # significant (z = 3.2) but only 0.17 points
    assert still_improving(*pair(4500, 90, 150, 1260)) is False  # doubling lost
    assert IMPROVING_TOL == 0.0025


@pytest.mark.parametrize("select_epoch", [False, True])
def test_an_undertrained_probe_is_flagged_and_a_converged_one_is_not(encoder, small, select_epoch):
    """The flag compares the chosen head with its twin (its lr, init and shuffles, trained once the lr is
    chosen) on a schedule half as long, or with select_epoch twice as long: a small flat lr still gains
    from doubling, a converged probe does not."""
    short = dataclasses.replace(FAST, lrs=(1e-3,), min_lr=1e-3, epochs=8, warmup_epochs=0,  # a small, flat lr
                                select_epoch=select_epoch)
    result = probe(encoder, small, short, seed=0)["linear"]
    assert result["still_improving"] is True and result["twin_epochs"] == (16 if select_epoch else 4), result
    assert sorted(result["val_curve"]) == (list(range(1, 9)) if select_epoch else [4, 6, 8])
    converged = dataclasses.replace(FAST, lrs=(3e-1,), epochs=64, warmup_epochs=1, select_epoch=select_epoch)
    result = probe(encoder, small, converged, seed=0)["linear"]
    assert result["still_improving"] is False, result
    gain = result["twin_val_top1"] - result["best_val_top1"]  # the longer schedule's gain on val
    assert gain <= 0.01 if select_epoch else -gain <= 0.0025  # (a few of 512 val images: not significant)


def test_select_epoch_returns_each_head_at_its_best_val_epoch(encoder, small):
    """`probe.select_epoch`: every head is scored on val after every epoch and comes back at its best
    epoch (lr and epoch chosen on val), so a longer schedule cannot score lower by overfitting."""
    from xtra.probe import train_adamw

    cfg = dataclasses.replace(FAST, lrs=(3e-1, 1e-2), epochs=6, warmup_epochs=0, select_epoch=True)
    result = probe(encoder, small, cfg, seed=0)["linear"]
    curve = result["val_curve"]
    assert sorted(curve) == [1, 2, 3, 4, 5, 6]  # every epoch scored (without: 3, 4, 6)
    assert result["best_val_top1"] == max(curve.values())
    assert result["best_epoch"] == min(e for e, acc in curve.items() if acc == max(curve.values()))
    # the heads returned are those epochs' heads: scoring them again gives their best val top-1
    train = Source(encoder, small.train.images, "linear", cfg, torch.device("cpu"), "memory", None, "train")
    val = Source(encoder, small.val.images, "linear", cfg, torch.device("cpu"), "memory", None, "val")
    heads = [make_head("linear", encoder.cfg, small.num_classes, cfg, 0) for _ in cfg.lrs]
    best, curves, at_epoch = train_adamw("linear", heads, cfg.lrs, cfg.epochs, train, val, small, cfg, 0)
    assert evaluate(heads, val, small.val.labels, cfg.batch_size) == best
    assert [max(curves[e][i] for e in curves) for i in range(len(heads))] == best
    assert all(curves[at_epoch[i]][i] == best[i] for i in range(len(heads)))
    last = probe(encoder, small, dataclasses.replace(cfg, select_epoch=False), seed=0)["linear"]
    assert sorted(last["val_curve"]) == [3, 4, 6] and last["best_epoch"] == 6
    assert result["best_val_top1"] >= last["best_val_top1"]


def test_a_twin_on_a_half_schedule_is_the_head_trained_alone_for_half_the_epochs(encoder, small):
    cfg = dataclasses.replace(FAST, kinds=("attentive",), lrs=(1e-2,), epochs=4, warmup_epochs=2)
    train = Source(encoder, small.train.images, "attentive", cfg, torch.device("cpu"), "memory", None, "train")
    full, twin, alone = (make_head("attentive", encoder.cfg, small.num_classes, cfg, 0) for _ in range(3))
    train_heads("attentive", [full, twin], (1e-2, 1e-2), train, small.train.labels, cfg, 0, epochs=[4, 2])
    half_cfg = dataclasses.replace(cfg, epochs=2, warmup_epochs=1)
    train_heads("attentive", [alone], (1e-2,), train, small.train.labels, half_cfg, 0)
    for a, b in zip(twin.state_dict().values(), alone.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(full.fc.weight, twin.fc.weight)


def test_probe_checkpoints_long_format_rows(run_dir, tmp_path):
    from xtra.probe import probe_checkpoints

    early = tmp_path / "early.pt"
    shutil.copy(run_dir / "checkpoint.pt", early)
    cfg = dataclasses.replace(FAST, kinds=("linear", "attentive"), epochs=1, warmup_epochs=0,
                              datasets=("fashion-mnist", "digits"), limit_train=600)
    data = dataclasses.replace(DATA, limit_train=600)
    rows = probe_checkpoints({2048: run_dir / "checkpoint.pt", 1024: early}, data, cfg, seed=0, device="cpu")
    assert [(r["samples"], r["dataset"], r["kind"]) for r in rows] == [  # earlier checkpoints: along_kinds
        (1024, "fashion-mnist", "linear"), (1024, "digits", "linear"),
        *((2048, d, k) for d in ("fashion-mnist", "digits") for k in ("linear", "attentive"))]
    assert all(0 <= r["top1"] <= 1 and r["best_lr"] in cfg.lrs for r in rows)
    # 3 lrs: the middle one is inside the grid, the others at its edge
    assert all(r["lr_at_edge"] == (r["best_lr"] != 3e-2) for r in rows)
    by = {(r["samples"], r["dataset"], r["kind"]): r for r in rows}
    assert by[(1024, "digits", "linear")]["top1"] == by[(2048, "digits", "linear")]["top1"]  # same weights
    assert by[(1024, "digits", "linear")]["num_classes"] == 10 and by[(1024, "digits", "linear")]["n_train"] == 600


def test_probe_checkpoints_rejects_bad_input_before_compute(run_dir, tmp_path):
    from xtra.probe import probe_checkpoints

    ckpt = {2048: run_dir / "checkpoint.pt"}
    missing = dataclasses.replace(FAST, datasets=("mnist",))
    nowhere = dataclasses.replace(DATA, root=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"probe.datasets\[0\]='mnist': dataset 'mnist' not found") as err:
        probe_checkpoints(ckpt, nowhere, missing, seed=0)
    assert "\n" not in str(err.value)
    folder = tmp_path / "folder"
    with pytest.raises(ValueError, match=r"probe.datasets\[1\]='imagefolder:.*not found"):
        probe_checkpoints(ckpt, DATA, dataclasses.replace(FAST, datasets=("digits", f"imagefolder:{folder}")), 0)
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        probe_checkpoints({1: tmp_path / "none.pt", **ckpt}, DATA, FAST, seed=0)
    with pytest.raises(ValueError, match="no checkpoints given"):
        probe_checkpoints({}, DATA, FAST, seed=0)


def test_at_samples_beyond_the_budget_is_one_line():
    from xtra.config import TrialConfig
    from xtra.overrides import override

    with pytest.raises(ValueError, match=r"probe.at_samples=\(1000, 90000\): \[90000\] exceed pretrain.samples=60000"):
        override(TrialConfig(), {"probe.at_samples": [1000, 90000]})
    cfg = override(TrialConfig(), {"probe.points": 4, "pretrain.samples": 30000, "pretrain.batch_size": 128})
    assert cfg.probe.probe_samples(cfg.pretrain.samples, 128) == (7424, 14976, 22528, 30000)  # step boundaries
    assert ProbeConfig(at_samples=(100, 500)).probe_samples(1000) == (100, 500, 1000)
    with pytest.raises(ValueError, match=r"probe.at_samples=\(100,\): \[100\] are not step boundaries"):
        override(TrialConfig(), {"probe.at_samples": [100], "pretrain.batch_size": 128})
    with pytest.raises(ValueError, match="give one of them"):
        ProbeConfig(at_samples=(100,), points=3)


# ---------------------------------------------------------------------------------------------
# The linear head solved to convergence (probe.linear_solver = lbfgs)


def test_lbfgs_head_is_the_penalized_logistic_regression_optimum(encoder, small):
    """The same head (BatchNorm at the train statistics, Linear) solved by L-BFGS equals scikit-learn's
    multinomial logistic regression with the matching penalty (C = 1 / (l2 n)) on the same
    standardized features: the same predictions, probabilities within 3e-3 (float32 here), and
    clearly closer than to the optimum of half the penalty."""
    from sklearn.linear_model import LogisticRegression

    from xtra.probe import fit_linear_lbfgs

    cfg = dataclasses.replace(FAST, linear_solver="lbfgs", linear_l2=(1e-2, 1e-3))
    train = Source(encoder, small.train.images, "linear", cfg, torch.device("cpu"), "memory", None, "train")
    heads = [make_head("linear", encoder.cfg, small.num_classes, cfg, 0) for _ in cfg.linear_l2]
    fit_linear_lbfgs(heads, cfg.linear_l2, train, small.train.labels)
    x = train.cache.double()
    z = ((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-6)).numpy()
    y = small.train.labels.numpy()
    for head, l2 in zip(heads, cfg.linear_l2):
        ref = LogisticRegression(C=1 / (l2 * len(y)), max_iter=5000, tol=1e-10).fit(z, y)
        head.eval()
        with torch.no_grad():
            mine = torch.softmax(head(train.cache), dim=-1).double().numpy()
        gap = abs(mine - ref.predict_proba(z)).max()
        off = LogisticRegression(C=2 / (l2 * len(y)), max_iter=5000, tol=1e-10).fit(z, y)  # half the penalty
        assert gap < 3e-3 and abs(mine - off.predict_proba(z)).max() > 3 * gap, l2  # float32 vs float64 solve
        assert (mine.argmax(1) == ref.predict(z)).mean() > 0.995


@pytest.mark.parametrize("l2", [1e-2, 1e-4])
def test_whitened_lbfgs_reaches_the_optimum_of_plain_lbfgs(encoder, small, l2):
    """Whitening only preconditions: the same objective, the same optimum (probabilities within solve
    noise) as the reference L-BFGS on the standardized features, also from a cap of 200 iterations.
    Solved in float64: the weakly penalized optimum is flat, and float32 solves of it scatter by ~5e-3
    in probability whichever preconditioning they use."""
    from xtra.probe import fit_linear_lbfgs

    cfg = dataclasses.replace(FAST, linear_solver="lbfgs")
    built = Source(encoder, small.train.images, "linear", cfg, torch.device("cpu"), "memory", None, "train")
    train = Source(encoder, small.train.images, "linear", cfg, torch.device("cpu"), "memory", None, "train",
                    prebuilt=built.cache.double())
    probs = {}
    for whiten, max_iter in ((False, 5000), (True, 1000), (True, 200)):
        (head,) = [make_head("linear", encoder.cfg, small.num_classes, cfg, 0).double()]
        fit_linear_lbfgs([head], (l2,), train, small.train.labels, whiten=whiten, max_iter=max_iter)
        head.eval()
        with torch.no_grad():
            probs[whiten, max_iter] = torch.softmax(head(train.cache), dim=-1)
    reference = probs[False, 5000]
    for key in ((True, 1000), (True, 200)):
        assert (probs[key] - reference).abs().max() < 5e-3, key
        assert (probs[key].argmax(1) == reference.argmax(1)).float().mean() > 0.995, key


def test_bfloat16_features_on_cpu_are_close_and_auto_is_float32(encoder):
    from xtra.probe import head_inputs_all

    x = torch.randn(8, 1, 32, 32)
    kinds = ("linear", "attentive")
    full = head_inputs_all(encoder, x, kinds, ProbeConfig(feature_dtype="float32"))
    auto = head_inputs_all(encoder, x, kinds, ProbeConfig())
    half = head_inputs_all(encoder, x, kinds, ProbeConfig(feature_dtype="bfloat16"))
    for kind in kinds:
        assert torch.equal(auto[kind], full[kind]) and half[kind].dtype == torch.float32
        assert not torch.equal(half[kind], full[kind])  # it did run in bfloat16
        torch.testing.assert_close(half[kind], full[kind], rtol=0.05, atol=0.05 * float(full[kind].abs().max()))


@pytest.mark.parametrize("kind", ["linear", "attentive"])
def test_bfloat16_heads_train_in_bfloat16_and_score_like_float32_heads(encoder, small, kind):
    """probe.head_dtype=bfloat16: the heads' forward and backward run under autocast (the weights differ
    from float32 training) while the weights, the optimizer and the scoring stay float32; on the same
    inputs the heads reach the same val top-1 within a few images."""
    cfg = ProbeConfig(kinds=(kind,), lrs=(3e-3, 3e-2), epochs=3, warmup_epochs=1, batch_size=128, layers=2)
    source, val = _cached_splits(encoder, small, kind, cfg)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        run_cfg = dataclasses.replace(cfg, head_dtype=dtype)
        heads = [make_head(kind, encoder.cfg, 10, run_cfg, seed=1) for _ in cfg.lrs]
        train_heads(kind, heads, cfg.lrs, source, small.train.labels, run_cfg, seed=1)
        runs[dtype] = heads, evaluate(heads, val, small.val.labels, 128)
    for full, half in zip(runs["float32"][0], runs["bfloat16"][0]):
        assert all(v.dtype == torch.float32 for v in _state(half).values() if v.is_floating_point())
        assert not torch.equal(_state(full)["fc.weight"], _state(half)["fc.weight"])  # it did run in bfloat16
    assert runs["bfloat16"][1] == pytest.approx(runs["float32"][1], abs=6 / len(small.val))


def test_new_probe_fields_at_their_defaults_keep_the_probe_key():
    """Studies probed before `linear_max_iter` / `feature_dtype` existed keep their probe results: at
    the defaults the key is the one computed without those fields; set, they change it."""
    from xtra.config import PROBE_KEYS_IF_SET, RESOURCE_KEYS, TrialConfig, _digest

    cfg = TrialConfig()
    old = {k: v for k, v in dataclasses.asdict(cfg.probe).items()
           if k not in PROBE_KEYS_IF_SET and f"probe.{k}" not in RESOURCE_KEYS}
    assert cfg.probe_hash() == _digest({"pretrain": cfg.config_hash(), "probe": old})
    for changes in ({"linear_max_iter": 200}, {"feature_dtype": "bfloat16"}, {"head_init": "official"},
                    {"attentive_whiten": True}, {"select_epoch": True}, {"head_dtype": "bfloat16"}):
        assert dataclasses.replace(cfg, probe=ProbeConfig(**changes)).probe_hash() != cfg.probe_hash()


def test_lbfgs_probe_chooses_the_penalty_on_val_and_records_it(encoder, small):
    cfg = dataclasses.replace(FAST, linear_solver="lbfgs", linear_l2=(1e-6, 1e-1))
    result = probe(encoder, small, cfg, seed=0)["linear"]
    val = result["val_top1"]
    assert list(val) == [1e-6, 1e-1] and result["solver"] == "lbfgs" and result["best_lr"] is None
    assert result["best_l2"] == max(val, key=val.get) and result["best_val_top1"] == max(val.values())
    assert result["still_improving"] is None and 0.1 < result["test_top1"] <= 1.0
    adamw = probe(encoder, small, FAST, seed=0)["linear"]
    assert adamw["solver"] == "adamw" and adamw["best_l2"] is None and adamw["best_lr"] in FAST.lrs


@pytest.mark.parametrize("changes, message", [
    ({"linear_solver": "sgd"}, "probe.linear_solver='sgd' is not allowed"),
    ({"linear_solver": "lbfgs", "augment": True}, "probe.linear_solver=lbfgs solves on cached features"),
    ({"linear_solver": "lbfgs", "cache": "off"}, "probe.linear_solver=lbfgs needs the feature cache"),
    ({"linear_l2": ()}, "probe.linear_l2=() must be a non-empty list"),
    ({"linear_max_iter": 0}, "ProbeConfig.linear_max_iter=0 must be > 0"),
    ({"feature_dtype": "fp16"}, "probe.feature_dtype='fp16' is not allowed"),
    ({"head_dtype": "auto"}, "probe.head_dtype='auto' is not allowed"),
])
def test_bad_solver_settings_are_one_line(changes, message):
    with pytest.raises(ValueError) as err:
        ProbeConfig(**changes)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_cpu_preset_probes_as_the_benchmarked_protocol():
    """docs/bench-cpu-2core-probe.md measures `CPU_PROBE`: the block-size study's cpu preset must be it
    (its `points` aside: the study probes completed budgets only)."""
    from xtra.benchmarks.probe import CPU_PROBE
    from xtra.studies.load import load_study

    probe_cfg = load_study("block-size", preset="cpu").expand()[0].config.probe
    assert dataclasses.replace(probe_cfg, points=CPU_PROBE.points) == CPU_PROBE
    assert probe_cfg.head_init == "official" and probe_cfg.attentive_whiten


def _trial_config(run_dir):
    """The trial config the module's run was pretrained under, as a study's point carries it."""
    from xtra.config import TrialConfig

    model_cfg, _, _ = run_configs(load_checkpoint(run_dir), run_dir)
    return TrialConfig(model=model_cfg, data=DATA, pretrain=PretrainConfig(samples=2048, batch_size=128,
                                                                           warmup_samples=256))


def test_bench_probe_points_times_both_presets_against_pretraining_and_checks_convergence(run_dir):
    from xtra.benchmarks.probe_study import bench_probe_points

    cfg = _trial_config(run_dir)
    short = ProbeConfig(lrs=(1e-2, 1e-1), epochs=2, warmup_epochs=0, limit_train=512, linear_solver="lbfgs",
                        linear_l2=(1e-6,), linear_max_iter=20, attentive_whiten=True, head_init="official")
    presets = {"before": dataclasses.replace(short, attentive_whiten=False, head_init="trunc_normal"), "after": short}
    out = bench_probe_points([{"trial": "t", "config": cfg, "checkpoint": run_dir / "checkpoint.pt"}], 10_000, 9,
                             presets, rate_samples=256)
    assert [e["preset"] for e in out["probes"]] == ["before", "after"]
    assert all({r["kind"] for r in e["rows"]} == {"linear", "attentive"} for e in out["probes"])
    for study in out["study"].values():
        assert study["ratio"] == pytest.approx(9 * study["probe_s_mean"] / out["pretrain_s"])
    (check,) = out["converge"]
    assert (check["epochs"], check["epochs_4x"]) == (2, 8) and 0 < check["top1_4x"] <= 1
    row = next(r for r in out["probes"][1]["rows"] if r["kind"] == "attentive")
    assert row["twin_val_top1"] is not None and row["ci95"][0] < row["top1"] < row["ci95"][1]


def test_convergence_over_seeds_pairs_each_seed_with_its_longer_probe_and_intervals_the_mean_gap(run_dir):
    from xtra.benchmarks.probe_study import convergence_over_seeds, gap_summary

    cfg = _trial_config(run_dir)
    probe_cfg = ProbeConfig(lrs=(1e-2, 1e-1), epochs=1, warmup_epochs=0, limit_train=512, attentive_whiten=True,
                            head_init="official")
    point = {"trial": "t", "config": cfg, "checkpoint": run_dir / "checkpoint.pt"}
    out = convergence_over_seeds([point], probe_cfg, (0, 1), factor=2)
    assert (out["epochs"], out["epochs_long"]) == (1, 2) and [p["seed"] for p in out["pairs"]] == [0, 1]
    assert out["flagged"] == sum(bool(p["still_improving"]) for p in out["pairs"])
    assert out["flagged_long"] == sum(bool(p["still_improving_long"]) for p in out["pairs"])
    gaps = [p["gap_points"] for p in out["pairs"]]
    for p in out["pairs"]:
        assert p["gap_points"] == pytest.approx(100 * (p["top1_long"] - p["top1"]))
    assert out["mean_gap_points"] == pytest.approx(sum(gaps) / 2)
    low, high = out["mean_gap_interval"]
    assert low <= out["mean_gap_points"] <= high and out["mean_gap_by_trial"] == {"t": pytest.approx(sum(gaps) / 2)}
    # a different seed is a different head (its init and shuffles), the same seed the same one
    first, second = ((p["top1"], p["top1_long"]) for p in out["pairs"])
    assert first != second
    again = convergence_over_seeds([point], probe_cfg, (0,), factor=2)["pairs"][0]
    assert (again["top1"], again["top1_long"]) == first
    wide = gap_summary([{**out["pairs"][0], "gap_points": g} for g in (-1.0, 1.0, 0.5)], level=0.99)
    narrow = gap_summary([{**out["pairs"][0], "gap_points": g} for g in (-1.0, 1.0, 0.5)], level=0.5)
    assert wide["mean_gap_interval"][0] < narrow["mean_gap_interval"][0] < 1 / 6 < narrow["mean_gap_interval"][1]
    # several checkpoints: the interval is over their means (pairs on one encoder are not independent)
    two = gap_summary([{**out["pairs"][0], "trial": t, "gap_points": g}
                       for t, g in (("a", -1.0), ("a", 1.0), ("b", 0.5), ("b", 0.5))])
    assert two["interval_over"] == "checkpoints" and two["mean_gap_by_trial"] == {"a": 0.0, "b": 0.5}
    half = 12.706 * (0.5 / 2**0.5) / 2**0.5  # t(0.975, df 1) x sd of {0, 0.5} / sqrt(2)
    assert two["mean_gap_interval"] == pytest.approx([0.25 - half, 0.25 + half], abs=1e-3)
    assert out["interval_over"] == "pairs"


def test_wilson_interval_of_a_test_top1():
    from xtra.benchmarks.probe import wilson

    lo, hi = wilson(0.8, 10_000)
    assert lo < 0.8 < hi and abs((hi - lo) / 2 - 1.96 * (0.8 * 0.2 / 10_000) ** 0.5) < 2e-4  # ~ +-0.78 points
    lo2, hi2 = wilson(0.8, 2_500)
    assert hi2 - lo2 > 1.9 * (hi - lo)  # a quarter of the images: twice as wide
