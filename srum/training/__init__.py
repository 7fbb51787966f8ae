# SPDX-License-Identifier: Apache-2.0
"""Reward-weighted training (the SRUM loss, data and trainer). Import submodules directly."""
