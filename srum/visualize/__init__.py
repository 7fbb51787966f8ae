# SPDX-License-Identifier: Apache-2.0
"""Pictures of reward records and the self-contained HTML run report (``srum visualize``).

* :func:`render_image_card` / :func:`draw_card`: one judged image with its regions coloured
  by local score, beside its dense reward map as a heat map with a colour bar;
* :func:`render_report`: ``report.html`` + pictures + loss curves + evaluation tables in
  one folder that opens in a browser without a server;
* :func:`line_plot`: a small PIL line chart (no matplotlib).
"""
from .pictures import (OFFICIAL_MAP_SCALE, SCORE_SCALE, SIGNED_MAP_SCALE, Card, CardLayout, ColorScale, draw_card,
                       map_scale, render_image_card)
from .plots import MetricsRun, Series, line_plot, loss_plot, read_metrics
from .report import render_report

__all__ = ["render_report", "render_image_card", "draw_card", "Card", "CardLayout", "ColorScale", "SCORE_SCALE",
           "OFFICIAL_MAP_SCALE", "SIGNED_MAP_SCALE", "map_scale", "line_plot", "loss_plot", "Series",
           "read_metrics", "MetricsRun"]
