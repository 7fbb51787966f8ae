# SPDX-License-Identifier: Apache-2.0
"""``srum pipeline``: generate -> propose -> judge -> train -> export -> eval -> report,
for one or more self-iterative rounds, resumable stage by stage."""
from .config import PipelineConfig, load_pipeline_config
from .runner import Pipeline, PipelineError, run_pipeline

__all__ = ["PipelineConfig", "load_pipeline_config", "Pipeline", "PipelineError", "run_pipeline"]
