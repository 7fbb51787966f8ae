# SPDX-License-Identifier: Apache-2.0
"""Pictures of reward records and the self-contained HTML run report (``srum visualize``).

* :func:`render_image_card` / :func:`draw_card`: one judged image with its regions coloured
  by local score, beside its dense reward map as a heat map with a colour bar;
* :func:`render_report`: ``report.html`` + pictures + loss curves + evaluation tables in
  one folder that opens in a browser without a server;
* :func:`line_plot`: a small PIL line chart (no matplotlib).
"""
from __future__ import annotations

import importlib

__all__ = ["render_report", "render_image_card", "draw_card", "Card", "CardLayout", "ColorScale", "SCORE_SCALE",
           "OFFICIAL_MAP_SCALE", "SIGNED_MAP_SCALE", "map_scale", "line_plot", "loss_plot", "Series",
           "read_metrics", "MetricsRun"]

# Loaded on first use: `srum --help` imports srum.visualize.cli, which must not pull in
# torch, numpy and PIL through this package.
_HOME = {**{n: ".pictures" for n in ("OFFICIAL_MAP_SCALE", "SCORE_SCALE", "SIGNED_MAP_SCALE", "Card", "CardLayout",
                                     "ColorScale", "draw_card", "map_scale", "render_image_card")},
         **{n: ".plots" for n in ("MetricsRun", "Series", "line_plot", "loss_plot", "read_metrics")},
         "render_report": ".report"}


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
