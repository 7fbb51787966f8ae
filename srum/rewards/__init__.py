# SPDX-License-Identifier: Apache-2.0
"""Rewards: turning judged reward records into dense weight maps for training."""
from .raster import GlobalRewardMissing, RewardMapConfig, pixel_reward_map, reward_weights

__all__ = ["GlobalRewardMissing", "RewardMapConfig", "pixel_reward_map", "reward_weights"]
