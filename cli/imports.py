"""`xtra import official CKPT --out DIR`: the authors' released XTRA weights as an xtra run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from xtra.cli.options import user_errors

app = typer.Typer(help="Bring weights made elsewhere into xtra.", no_args_is_help=True)
console = Console()


@app.command("official")
def official_cmd(
    ckpt: Annotated[Path, typer.Argument(help="An official XTRA checkpoint: Lightning (epoch=799-step=490400) "
                                               "or DeepSpeed (mp_rank_00_model_states).")],
    out: Annotated[Path, typer.Option(help="New run directory: checkpoint.pt + official.json.")],
    data: Annotated[str | None, typer.Option(help="The weights' pretraining data in xtra's names (default: read "
                                                  "from the checkpoint, e.g. ImageNet at the authors' path).")] = None,
    num_heads: Annotated[int | None, typer.Option(help="Encoder heads, if the checkpoint does not say.")] = None,
    pred_num_heads: Annotated[int | None, typer.Option(help="Predictor heads, if the checkpoint does not say.")] = None,
) -> None:
    """Import an official checkpoint (weights only; no optimizer state) so `xtra probe`, `xtra pretrain`
    (`pretrain.init`) and studies use it like any xtra run."""
    from xtra.config import DataConfig, ModelConfig
    from xtra.costs import describe
    from xtra.official import PROVENANCE_JSON, import_official
    from xtra.overrides import override
    from xtra.trialdir import CHECKPOINT

    with user_errors():
        data_cfg = DataConfig(name=data) if data else None
        info = import_official(ckpt, out, data=data_cfg, num_heads=num_heads, pred_num_heads=pred_num_heads)
    model = override(ModelConfig(), info["model"])
    console.print(f"[bold]imported[/] {ckpt} ({info['layout']} layout, {info['enc_arch'] or 'arch not recorded'}, "
                  f"epoch {info['epoch']}, step {info['global_step']}): {describe(model)}, k={model.block_size}, "
                  f"{model.next_heads} head(s) ahead", highlight=False)
    console.print(f"checkpoint: {out / CHECKPOINT}\nprovenance: {out / PROVENANCE_JSON}", highlight=False)
    console.print(f"probe it:   xtra probe {out} --data {info['data']['name']}", highlight=False, soft_wrap=True)
    sets = " ".join(f"--set {s}" for s in info["continue_sets"])
    if info["data"]["fingerprint"]:
        sets += f" --set data.fingerprint={info['data']['fingerprint']}"
    console.print(f"continue pretraining (weights only: the optimizer starts fresh): xtra pretrain --out RUN "
                  f"--data {info['data']['name']} --block-size {model.block_size} {sets} --set pretrain.init={out}",
                  highlight=False, soft_wrap=True)
