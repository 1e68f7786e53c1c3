"""Generate tests/fixtures/official/: a tiny official XTRA model and its own outputs, for parity tests.

    python scripts/official_fixture.py --mirror /work/.mirror/elad-amrani+xtra/repo [--commit SHA]

The official repository (github.com/elad-amrani/xtra) is read from a bare git directory with
`git show`; its plain-torch modules (`src/modules/vit.py`, `src/modules/mlp.py`) are written to a
scratch directory outside this repository and imported from there. `src/modules/xtra.py` and
`src/modules/cls.py` import Lightning, torchmetrics and the training code, so they are not imported:
the methods that define the pretraining step (`XTRA._step`, `_loss`, `concat_block_embeds`,
`choose_perm`, `forward`) and the class `AttentionPoolingClassifier` are taken from the source by
`ast` and executed as the official code wrote them, on a small holder object that has the same
attributes (`enc`, `proj`, `predictor`, `aim_proj`, `args`). Nothing of the official code is copied
into this repository; only its outputs are saved, with the commit that produced them.

Written: `lightning-k{1,2,4}.ckpt` (the Lightning layout: `state_dict` + flattened
`hyper_parameters`), `lightning-pseudo-k2.ckpt` (the pseudo-random order of
`config/ablations/ar_pattern/pesudo_random.yaml`: its orders come from the official
`create_random_permutations` in `src/utils/utils.py`, taken from the source by `ast` like the methods),
`lightning-causal-2x.ckpt` (the multi-token control of `config/ablations/block/block_2x16x16.yaml`: a
causal, not block-causal, encoder and predictor with two heads ahead), `deepspeed-k2.pt` (the
DeepSpeed model-states layout: `module` with Lightning's `_forward_module.` wrapper prefix, and an
fp16 loss-scaler object pickled under DeepSpeed's class name, as such files hold; the class is a plain
record made here, not DeepSpeed's), `outputs.pt` (inputs and every official output), `meta.json`
(commit, config).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import textwrap
import types
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.functional import l1_loss, mse_loss

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "official"
# A tiny official-style config: 16 px RGB, 2 px patches (8x8 grid: k = 1, 2, 4 all fit), 2 heads ahead.
TINY = dict(img_size=16, patch_size=2, width=16, depth=2, num_heads=2, proj_hidden=24, pred_width=8,
            pred_depth=2, pred_num_heads=2, head_hidden=16, next_heads=2)
BATCH, CLASSES, PROBE_HEADS = 4, 5, 4


def git_show(mirror: str, commit: str, path: str) -> str:
    return subprocess.run(["git", f"--git-dir={mirror}", "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def load_module(name: str, source: str, scratch: Path) -> types.ModuleType:
    file = scratch / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(f"official_{name}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def class_methods(source: str, cls: str, names: tuple[str, ...], namespace: dict) -> dict:
    """The named methods of `cls` in `source`, compiled from the official text as written."""
    tree = ast.parse(source)
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == cls).body
    out = {}
    for node in body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            code = textwrap.dedent(ast.get_source_segment(source, node))
            exec(compile(code, f"<official {cls}.{node.name}>", "exec"), namespace)  # noqa: S102 - official code
            out[node.name] = namespace[node.name]
    missing = set(names) - set(out)
    assert not missing, f"official {cls} has no {missing}"
    return out


def class_source(source: str, cls: str, namespace: dict) -> type:
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    exec(compile(ast.get_source_segment(source, node), f"<official {cls}>", "exec"), namespace)  # noqa: S102
    return namespace[cls]


def function_source(source: str, name: str, namespace: dict):
    """A module-level function of `source`, compiled from the official text as written."""
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    exec(compile(ast.get_source_segment(source, node), f"<official {name}>", "exec"), namespace)  # noqa: S102
    return namespace[name]


def flat_hparams(config: dict, prefix: str = "") -> dict:
    """The official `Config` flattening: nested keys joined by '_' (what Lightning saves)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_hparams(value, f"{prefix}{key}_"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def official_config(k: int, pseudo_random: bool = False, causal: bool = False) -> dict:
    """The tiny config at block size k; `pseudo_random` as the order ablation sets it, `causal` as the
    block ablation's 2x16x16 sets it (is_causal instead of is_block_causal: one patch per step)."""
    t = TINY
    mask = {"is_block_causal": False, "is_causal": True} if causal else {"is_block_causal": True}
    return {
        "seed": 0, "name": "fixture-tiny",
        "enc": {"arch": "vit_tiny_fixture", "num_heads": t["num_heads"], "img_size": [t["img_size"]],
                "patch_size": t["patch_size"], **mask, "block_size": k, "drop_path_rate": 0.1},
        "proj": {"hidden_dim": t["proj_hidden"], "out_dim": t["pred_width"], "in_bn": False, "nlayers": 2},
        "predictor": {**mask, "block_size": k, "num_heads": t["pred_num_heads"], "depth": t["pred_depth"]},
        "aim": {"num_tokens": t["next_heads"], "norm_pix_loss": True, "alpha": 1.0, "pseudo_random": pseudo_random,
                "proj": {"hidden_dim": t["head_hidden"], "in_bn": False, "nlayers": 2, "out_bias": True}},
        "dataset": {"cifar10": {"use": True, "root": "./data/cifar10/"}},
        "train": {"batch_size": BATCH},
    }


class Args(types.SimpleNamespace):
    """Flattened config keys as attributes; a key the config does not set reads None (as official `Config`)."""

    def __getattr__(self, item):
        return None


class Holder(nn.Module):
    """The attributes the official XTRA LightningModule's methods read, built as its __init__ does."""

    def __init__(self, vit, mlp, hp: dict, create_random_permutations=None):
        super().__init__()
        t = TINY
        norm = lambda dim: nn.LayerNorm(dim, eps=1e-6)  # noqa: E731 - the official factories' norm_layer
        self.args = Args(**hp)
        enc_mask = dict(is_block_causal=hp["enc_is_block_causal"], is_causal=bool(hp.get("enc_is_causal")))
        pred_mask = dict(is_block_causal=hp["predictor_is_block_causal"],
                         is_causal=bool(hp.get("predictor_is_causal")))
        self.enc = vit.VisionTransformer(img_size=[t["img_size"]], patch_size=t["patch_size"], embed_dim=t["width"],
                                         depth=t["depth"], num_heads=t["num_heads"], mlp_ratio=4, qkv_bias=True,
                                         norm_layer=norm, **enc_mask, block_size=hp["enc_block_size"],
                                         drop_path_rate=hp["enc_drop_path_rate"])
        self.proj = mlp.MLPHead(in_dim=self.enc.d_model, hidden_dim=t["proj_hidden"], out_dim=t["pred_width"],
                                in_bn=False, nlayers=2)
        self.predictor = vit.vit_predictor(embed_dim=t["pred_width"], max_seq_len=self.enc.max_seq_len,
                                           **pred_mask, block_size=hp["predictor_block_size"],
                                           num_heads=t["pred_num_heads"], depth=t["pred_depth"])
        k = hp["enc_block_size"] if hp["enc_is_block_causal"] else 1  # as the official mlp_in_dim
        self.aim_proj = nn.ModuleList(
            mlp.MLPHead(in_dim=t["pred_width"] * k**2, out_dim=int(3 * self.enc.crop_size**2),
                        hidden_dim=t["head_hidden"], in_bn=False, nlayers=2, out_bias=True)
            for _ in range(t["next_heads"]))
        if hp["aim_pseudo_random"]:  # as the official __init__: one order per block, seeded by the run's seed
            num_crops = int((self.enc.img_size[0] / self.enc.crop_size) ** 2)
            self.perms, self.block_perms = create_random_permutations(num_crops, self.enc.max_seq_len, hp["seed"])
        self.trainer = types.SimpleNamespace(precision="32-true")
        self.logged: dict = {}

    def log(self, name, value, **_):
        self.logged[name] = value


def randomize(module: nn.Module, gen: torch.Generator) -> None:
    """Every parameter away from its init (biases and norms too), so a misplaced tensor shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if name.endswith("norm1.weight") or name.endswith("norm2.weight")
                    or name.endswith("norm.weight") else 0.2 * noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", required=True, help="bare git directory of github.com/elad-amrani/xtra")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    commit = subprocess.run(["git", f"--git-dir={args.mirror}", "rev-parse", args.commit], check=True,
                            capture_output=True, text=True).stdout.strip()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory(prefix="official-") as scratch:
        vit = load_module("vit", git_show(args.mirror, commit, "src/modules/vit.py"), Path(scratch))
        mlp = load_module("mlp", git_show(args.mirror, commit, "src/modules/mlp.py"), Path(scratch))
    xtra_src = git_show(args.mirror, commit, "src/modules/xtra.py")
    cls_src = git_show(args.mirror, commit, "src/modules/cls.py")
    ns = {"torch": torch, "math": math, "mse_loss": mse_loss, "l1_loss": l1_loss, "nn": nn}
    methods = class_methods(xtra_src, "XTRA", ("forward", "_step", "_loss", "concat_block_embeds", "choose_perm"), ns)
    from typing import Any, Optional

    pool_cls = class_source(cls_src, "AttentionPoolingClassifier",
                            {"torch": torch, "nn": nn, "Optional": Optional, "Any": Any, "Tuple": tuple})
    for name, fn in methods.items():
        setattr(Holder, name, fn)
    create_random_permutations = function_source(git_show(args.mirror, commit, "src/utils/utils.py"),
                                                 "create_random_permutations", {"torch": torch, "math": math})

    args.out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, TINY["img_size"], TINY["img_size"], generator=gen)
    outputs: dict = {"images": images}
    for k in (1, 2, 4):
        hp = flat_hparams(official_config(k))
        torch.manual_seed(k)
        model = Holder(vit, mlp, hp)
        randomize(model, gen)
        model.eval()
        model.training = False
        loss = model._step((images, None))
        outputs[f"k{k}"] = {
            "raw_last": model.enc.forward_return_n_last_blocks(images, n=1, norm_output=False),
            "normed_last": model.enc.forward_return_n_last_blocks(images, n=1, norm_output=True),
            "encoder": model.enc(images),
            "preds": [model.forward(images, aim_idx=j) for j in range(TINY["next_heads"])],
            "loss": loss.detach().clone(),
        }
        torch.save(_lightning(model, hp), args.out / f"lightning-k{k}.ckpt")
        if k == 2:
            save_deepspeed(args.out / "deepspeed-k2.pt", model, hp)
            outputs["probe"] = probe_outputs(model, images, pool_cls, gen)
    outputs["pseudo"] = pseudo_random_outputs(vit, mlp, create_random_permutations, images, gen, args.out)
    outputs["causal"] = causal_outputs(vit, mlp, images, gen, args.out)
    torch.save(outputs, args.out / "outputs.pt")
    meta = {"repository": "github.com/elad-amrani/xtra", "commit": commit, "tiny": TINY, "batch": BATCH,
            "classes": CLASSES, "attentive_heads": PROBE_HEADS, "generator": "scripts/official_fixture.py"}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.out} from commit {commit}")


def _lightning(model: nn.Module, hp: dict) -> dict:
    return {"epoch": 3, "global_step": 42, "pytorch-lightning_version": "2.1.0", "state_dict": model.state_dict(),
            "hparams_name": "kwargs", "hyper_parameters": hp, "optimizer_states": [], "lr_schedulers": [],
            "callbacks": {}, "loops": {}}


PSEUDO_K, PSEUDO_DRAWN = 2, 5  # 16 blocks, so 16 orders; the loss under order 0 (validation) and one drawn one


def pseudo_random_outputs(vit, mlp, create_random_permutations, images, gen, out: Path) -> dict:
    """The order ablation's model (pseudo_random: True, k = 2): its official orders, its validation loss
    (order 0, as `choose_perm` picks when not training), its loss under another order, and the features
    the official Classifier reads (`forward_return_n_last_blocks`: no permutation, raster order)."""
    hp = flat_hparams(official_config(PSEUDO_K, pseudo_random=True))
    torch.manual_seed(10)
    model = Holder(vit, mlp, hp, create_random_permutations)
    randomize(model, gen)
    model.eval()
    model.training = False
    result = {"perms": model.perms.clone(), "block_perms": model.block_perms.clone(), "drawn": PSEUDO_DRAWN,
              "loss": model._step((images, None)).detach().clone(),
              "raw_last": model.enc.forward_return_n_last_blocks(images, n=1, norm_output=False)}
    model.choose_perm = lambda: (model.perms[PSEUDO_DRAWN], model.block_perms[PSEUDO_DRAWN])  # a training draw
    result["loss_drawn"] = model._step((images, None)).detach().clone()
    torch.save(_lightning(model, hp), out / "lightning-pseudo-k2.ckpt")
    return result


def causal_outputs(vit, mlp, images, gen, out: Path) -> dict:
    """The multi-token control (block_2x16x16): causal encoder and predictor (k = 1), two heads ahead."""
    # block_size stays at config/base.yaml's 4, as block_2x16x16.yaml leaves it: unused under is_causal.
    hp = flat_hparams(official_config(4, causal=True))
    torch.manual_seed(11)
    model = Holder(vit, mlp, hp)
    randomize(model, gen)
    model.eval()
    model.training = False
    result = {"loss": model._step((images, None)).detach().clone(),
              "raw_last": model.enc.forward_return_n_last_blocks(images, n=1, norm_output=False),
              "preds": [model.forward(images, aim_idx=j) for j in range(TINY["next_heads"])]}
    torch.save(_lightning(model, hp), out / "lightning-causal-2x.ckpt")
    return result


def probe_outputs(model: Holder, images: torch.Tensor, pool_cls: type, gen: torch.Generator) -> dict:
    """The official probe heads (cls.py) on the k=2 model's features, as the eval configs set them:
    linear = last block, token mean, BatchNorm1d(affine=False) + Linear (`cls_out_bn: True`);
    attentive = mean of the last min(6, depth) blocks, AttentionPoolingClassifier."""
    layers = min(6, TINY["depth"])
    linear_in = model.enc.forward_return_n_last_blocks(images, n=1, return_patch_avgpool=True)
    attentive_in = model.enc.forward_return_n_last_blocks(images, n=layers, return_layer_avgpool=True)
    linear = nn.Sequential(nn.BatchNorm1d(TINY["width"], affine=False, eps=1e-6), nn.Linear(TINY["width"], CLASSES))
    attentive = pool_cls(dim=TINY["width"], out_features=CLASSES, num_heads=PROBE_HEADS, num_queries=1)
    out = {"linear_in": linear_in, "attentive_in": attentive_in, "layers": layers}
    for name, head in (("linear", linear), ("attentive", attentive)):
        randomize(head, gen)
        for bn in (m for m in head.modules() if isinstance(m, nn.BatchNorm1d)):
            bn.running_mean.copy_(0.3 * torch.randn(bn.running_mean.shape, generator=gen))
            bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=gen))
        head.eval()
        out[f"{name}_eval"] = head(linear_in if name == "linear" else attentive_in)
        out[f"{name}_state"] = {k: v.clone() for k, v in head.state_dict().items()}
        head.train()  # batch statistics (what training sees)
        out[f"{name}_train"] = head(linear_in if name == "linear" else attentive_in)
    return out


def save_deepspeed(path: Path, model: nn.Module, hp: dict) -> None:
    """The DeepSpeed model-states layout Lightning's DeepSpeed strategy writes (stage 0, fp16)."""
    name = "deepspeed.runtime.fp16.loss_scaler"
    parts = name.split(".")
    made = [".".join(parts[: i + 1]) for i in range(len(parts)) if ".".join(parts[: i + 1]) not in sys.modules]
    for mod in made:
        sys.modules[mod] = types.ModuleType(mod)
    record = type("DynamicLossScaler", (), {"__module__": name})
    sys.modules[name].DynamicLossScaler = record
    scaler = record()
    scaler.__dict__.update(cur_scale=65536.0, cur_iter=42, scale_factor=2.0, scale_window=1000, dtype=torch.float16)
    try:
        state = {"module": {f"_forward_module.{k}": v for k, v in model.state_dict().items()},
                 "buffer_names": [], "optimizer": {"loss_scaler": scaler, "cur_scale": 65536.0},
                 "lr_scheduler": None, "global_steps": 42, "global_samples": 168, "dp_world_size": 1,
                 "mp_world_size": 1, "ds_config": {"zero_optimization": {"stage": 0}, "fp16": {"enabled": True}},
                 "ds_version": "0.12.6", "epoch": 3, "global_step": 42, "hyper_parameters": hp}
        torch.save(state, path)
    finally:
        for mod in made:
            del sys.modules[mod]


if __name__ == "__main__":
    main()
