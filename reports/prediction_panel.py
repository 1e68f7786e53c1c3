"""The prediction pictures panel: (k, image) arrays supplied by the caller laid out as a grid of PNGs."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .collect import StudyResults
from .panel import Panel


def _png(img: np.ndarray) -> str:
    """uint8 (H, W, 3) -> PNG data URI (zlib only, no imaging library)."""
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _as_rgb(arr: Any, where: str) -> np.ndarray:
    a = np.asarray(arr, dtype=float)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3, 4):
        a = np.transpose(a, (1, 2, 0))  # CHW -> HWC
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"{where}: expected an HxWxC image with C in 1, 3, 4 (got shape {np.shape(arr)})")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{where}: image contains NaN or inf")
    a = a[:, :, :3] if a.shape[2] == 4 else np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a
    return (np.clip(a, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


Pictures = Sequence[tuple[Any, Any]] | Mapping[Any, Any]


def prediction_grid(pictures: Pictures, title: str = "Next-block predictions pasted in place") -> go.Figure:
    """Lay out (k, image) pairs, images HxWxC (or HxW) in [0, 1]: one row per k, in order of appearance.

    A mapping ``{k: image or [images]}`` works too."""
    items: list[tuple[Any, Any]] = []
    if isinstance(pictures, Mapping):
        for k, v in pictures.items():
            imgs = v if isinstance(v, (list, tuple)) else [v]
            items += [(k, im) for im in imgs]
    else:
        for i, pair in enumerate(pictures):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"pictures[{i}]: expected a (k, image) pair")
            items.append((pair[0], pair[1]))
    if not items:
        raise ValueError("pictures is empty: expected (k, HxWxC array) pairs")
    rows: dict[Any, list[np.ndarray]] = {}
    for i, (k, img) in enumerate(items):
        rows.setdefault(k, []).append(_as_rgb(img, f"pictures[{i}] (k={k})"))
    n_cols = max(len(v) for v in rows.values())
    titles = [f"k={k}" if j == 0 else "" for k, v in rows.items() for j in range(n_cols)]
    fig = make_subplots(rows=len(rows), cols=n_cols, subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.06)
    for r, (_, imgs) in enumerate(rows.items(), start=1):
        for c, img in enumerate(imgs, start=1):
            fig.add_trace(go.Image(source=_png(img), hoverinfo="skip"), row=r, col=c)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor=None)
    fig.update_layout(template="plotly_white", title=dict(text=title, x=0.01), height=80 + 170 * len(rows),
                      margin=dict(l=10, r=10, t=70, b=10))
    return fig


def predictions_panel(study: StudyResults, pictures: Pictures | Callable[[Any], Pictures] | None) -> Panel:
    pid, title = "predictions", "Predictions"
    if pictures is None:
        return Panel(pid, title, note="No prediction pictures: pass pictures=[(k, HxWxC array in [0, 1]), ...] "
                                      "(e.g. from a trial checkpoint) to build_report.")
    try:
        pics = pictures(study.path) if callable(pictures) else pictures
        if pics is None or len(pics) == 0:
            return Panel(pid, title, note="No prediction pictures were produced.")
        return Panel(pid, title, prediction_grid(pics), note="Validation images with the model's next-block "
                                                             "predictions pasted in place, one row per k.")
    except Exception as exc:  # a broken picture hook must not lose the report
        return Panel(pid, title, note=f"Prediction pictures failed: {type(exc).__name__}: {exc}")


