# SPDX-License-Identifier: Apache-2.0
"""Inputs of the pipeline: prompt files and the dataset registry (registry.py)."""
