"""The model, attention and the loop run on a stock PyTorch image: torch and numpy only."""

import json
import subprocess
import sys

HEAVY = ("ray", "polars", "plotly", "typer", "rich", "optuna", "scipy", "sklearn", "xformers", "PIL")


def test_core_modules_import_only_torch_and_numpy():
    code = ("import sys, json; import xtra.model, xtra.attention, xtra.pretrain, xtra.distributed; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
