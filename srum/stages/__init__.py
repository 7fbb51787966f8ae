# SPDX-License-Identifier: Apache-2.0
"""The per-item data stages of SRUM: generate, propose, judge (and the shared sharding)."""
