"""Training and scoring N heads at once on the same batches: AdamW per head (`train_heads`), the
linear heads solved to convergence by L-BFGS (`fit_linear_lbfgs`), top-1 of every head (`evaluate`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from xtra.config import ProbeConfig
from xtra.precision import autocast
from xtra.probe.features import Source
from xtra.probe.heads import batched_logits, make_head_optimizer, share_norm
from xtra.probe.schedule import probe_lr_at, probe_seed, steps_per_epoch


@torch.no_grad()
def evaluate(heads: list[nn.Module], source: Source, labels: torch.Tensor, batch_size: int,
             batched: bool = True) -> list[float]:
    """Top-1 of every head on a split; one pass over the inputs feeds all heads (`batched`: as one
    module, `batched_logits`; else one head after the other, the reference)."""
    for head in heads:
        head.eval()
    correct = [0] * len(heads)
    labels = labels.to(source.device)
    batched = batched and len(heads) > 1 and all(  # one module only where every head normalizes alike
        torch.equal(h.bn.running_mean, heads[0].bn.running_mean)
        and torch.equal(h.bn.running_var, heads[0].bn.running_var) for h in heads[1:])
    for start in range(0, len(source), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(source)))
        x = source.batch(idx)
        y = labels[start: start + len(idx)]
        if batched:
            hits = (batched_logits(heads, x).argmax(dim=-1) == y).sum(dim=1)  # (L,)
            correct = [c + int(k) for c, k in zip(correct, hits)]
            continue
        for i, head in enumerate(heads):
            correct[i] += int((head(x).argmax(dim=-1) == y).sum())
    for head in heads:
        head.train()
    return [c / max(len(source), 1) for c in correct]


@torch.no_grad()
def right_per_image(head: nn.Module, source: Source, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) bool: whether `head` classifies each image of the split right (eval mode)."""
    head.eval()
    labels = labels.to(source.device)
    out = torch.cat([head(source.batch(torch.arange(i, min(i + batch_size, len(source))))).argmax(dim=-1)
                     == labels[i: i + batch_size] for i in range(0, len(source), batch_size)])
    head.train()
    return out.cpu()


def train_heads(kind: str, heads: list[nn.Module], lrs: tuple[float, ...], source: Source, labels: torch.Tensor,
                cfg: ProbeConfig, seed: int, on_epoch: Callable[[int, int], None] | None = None,
                batched: bool = True, epochs: list[int] | None = None) -> None:
    """Train every head on the same batches (one input computation per micro-batch), head i for
    `epochs[i]` epochs (default: cfg.epochs each; its warmup scaled alike, in steps: steps_per_epoch *
    cfg.warmup_epochs * epochs[i] // cfg.epochs): a head with a shorter schedule is the head trained alone
    for that many epochs (the same init and shuffles), and stops there while the others go on.

    Each head has its own AdamW, follows `probe_lr_at(step, ..., lr_i)` over its own schedule, and clips its
    own gradient norm: the heads share nothing but their (read-only) inputs, so each one is exactly
    what it would be if trained alone. A step of cfg.batch_size images is cfg.accumulate micro-batches
    (BatchNorm sees each micro-batch, as in the official code). `batched`: the heads' forward and
    backward as one module (`batched_logits`: one matmul per layer for all lrs), the same training up
    to float rounding; else each head in turn (the reference path). `cfg.head_dtype` = bfloat16: each
    forward under bfloat16 autocast, the weights and AdamW float32. `on_epoch(epoch, step)` hears the
    end of every epoch (0-based), when each head still training holds its BatchNorm statistics."""
    epochs = list(epochs) if epochs is not None else [cfg.epochs] * len(heads)
    optimizers = [make_head_optimizer(kind, head, lr, cfg) for head, lr in zip(heads, lrs)]
    n, bs = len(source), cfg.batch_size
    per_epoch = steps_per_epoch(n, bs)
    totals = [per_epoch * e for e in epochs]
    # warmup scaled in steps, not whole epochs: a twin on half of an 8-epoch schedule with 1 warmup epoch
    # warms up for half an epoch (rounded down to whole epochs it had none and started at the full lr)
    warmups = [per_epoch * cfg.warmup_epochs * e // cfg.epochs for e in epochs]
    labels = labels.to(source.device)
    for head in heads:
        head.train()
    step = 0
    for epoch in range(max(epochs)):
        active = [i for i, e in enumerate(epochs) if epoch < e]  # the heads whose schedule goes on
        live = [heads[i] for i in active]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(probe_seed(seed, kind, "shuffle", epoch)))
        for s in range(per_epoch):
            idx = perm[s * bs: (s + 1) * bs]
            for i in active:
                for group in optimizers[i].param_groups:
                    group["lr"] = probe_lr_at(step, totals[i], warmups[i], lrs[i], cfg)
                optimizers[i].zero_grad(set_to_none=True)
            micro = idx.chunk(cfg.accumulate) if cfg.accumulate > 1 else (idx,)
            for j, part in enumerate(micro):
                x = source.batch(part, step * cfg.accumulate + j)
                y = labels[part.to(labels.device)]
                weight = len(part) / len(idx)  # the step's gradient is the mean over its images
                if batched and len(live) > 1:  # the sum of the heads' losses: each gets its own gradient
                    with autocast(x.device, cfg.head_dtype):
                        logits = batched_logits(live, x)  # (L, B, C)
                        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.repeat(len(live)), reduction="sum")
                    (loss * (weight / len(y))).backward()  # outside autocast: each op's backward in its forward's dtype
                else:
                    for head in live:
                        with autocast(x.device, cfg.head_dtype):
                            loss = F.cross_entropy(head(x).float(), y)
                        (loss * weight).backward()
            for i in active:
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(heads[i].parameters(), cfg.grad_clip)
                optimizers[i].step()
            step += 1
        if batched:  # one BatchNorm ran for all (the first live head's): every live head gets its statistics,
            share_norm(live)  # and a head whose schedule ends here keeps them
        if on_epoch is not None:
            on_epoch(epoch, step)


LBFGS_MAX_ITER = 1000  # default full-batch iterations per head (each one pass over the cached train features)


def fit_linear_lbfgs(heads: list[nn.Module], l2s: tuple[float, ...], source: Source, labels: torch.Tensor,
                     whiten: bool = True, max_iter: int = LBFGS_MAX_ITER) -> None:
    """Solve each linear head to convergence on the cached train features: its BatchNorm (no affine
    part) takes the train split's mean and variance, which is what its running statistics estimate,
    so it standardizes; then its Linear layer minimizes mean cross-entropy + l2/2 |W|^2 by full-batch
    L-BFGS with a strong-Wolfe line search. The same head as `train_heads` trains, without the
    optimizer's noise: on correlated features AdamW needs far more epochs than a short probe has to
    get there (docs/bench-cpu-2core-probe.md).

    `whiten`: L-BFGS runs in whitened coordinates, W = V P with P = Cov(z)^(-1/2) (symmetric), on
    the features z P, minimizing the SAME objective (cross-entropy of z Wᵀ + l2/2 |V P|^2): only the
    preconditioning changes, not the optimum, and correlated features no longer slow it down
    (several times fewer iterations; docs/bench-cpu-2core-probe.md). False: plain L-BFGS on z, the
    reference path."""
    n = len(source)
    x = torch.cat([source.batch(torch.arange(i, min(i + 4096, n))) for i in range(0, n, 4096)])  # (N, D)
    y = labels.to(x.device)
    mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)
    previous = None
    basis = None  # (P, P^-1): the whitening and its inverse, from the first head's standardized features
    for i in sorted(range(len(heads)), key=lambda i: -l2s[i]):  # strongest penalty first: a warm start for the next
        head, l2 = heads[i], l2s[i]
        with torch.no_grad():
            head.bn.running_mean.copy_(mean)
            head.bn.running_var.copy_(var)
            if previous is not None:
                head.fc.load_state_dict(previous.fc.state_dict())
        head.eval()  # BatchNorm on the statistics just set
        with torch.no_grad():
            z = head.bn(x)
            if whiten and basis is None:
                basis = _whitening(z)
        if whiten:
            assert basis is not None
            _lbfgs_whitened(head.fc, z, y, l2, *basis, max_iter=max_iter)
        else:
            _lbfgs(head.fc.parameters(), lambda head=head, l2=l2, z=z: (
                F.cross_entropy(head.fc(z), y) + 0.5 * l2 * head.fc.weight.pow(2).sum()), max_iter)
        previous = head


def _lbfgs(params, objective: Callable[[], torch.Tensor], max_iter: int = LBFGS_MAX_ITER) -> None:
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)


def _whitening(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, P^-1) with P = Cov(z)^(-1/2), symmetric (ZCA); eigenvalues floored at 1e-6 of the largest so a
    degenerate direction stays finite (P only preconditions: any invertible P has the same optimum)."""
    cov = (z.t() @ z).double() / len(z)  # (D, D): z is centred by the BatchNorm
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(evals.max() * 1e-6)
    p = (evecs * evals.rsqrt()) @ evecs.t()
    p_inv = (evecs * evals.sqrt()) @ evecs.t()
    return p.to(z.dtype), p_inv.to(z.dtype)


def _lbfgs_whitened(fc: nn.Linear, z: torch.Tensor, y: torch.Tensor, l2: float, p: torch.Tensor,
                    p_inv: torch.Tensor, max_iter: int = LBFGS_MAX_ITER) -> None:
    """The Linear layer `fc` solved by L-BFGS over V (W = V P) on the whitened features z P."""
    zw = z @ p  # (N, D)
    v = torch.nn.Parameter(fc.weight.detach() @ p_inv)  # (C, D): W P^-1, so V P = W at the start
    bias = torch.nn.Parameter(fc.bias.detach().clone())
    _lbfgs([v, bias], lambda: F.cross_entropy(torch.addmm(bias, zw, v.t()), y) + 0.5 * l2 * (v @ p).pow(2).sum(),
           max_iter)
    with torch.no_grad():
        fc.weight.copy_(v @ p)
        fc.bias.copy_(bias)

