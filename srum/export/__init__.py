# SPDX-License-Identifier: Apache-2.0
"""Exports: training checkpoints -> BAGEL-7B-MoT weight directories, and generated data -> SFT parquet."""
