# SPDX-License-Identifier: Apache-2.0
"""Token-budget packing, the global pack stream, rank splitting and the data position."""
import numpy as np
import pytest

from srum.training.packing import DataPosition, PackingConfig, PackStream, StepPlanner, epoch_order

CFG = PackingConfig(expected_num_tokens=100, max_num_tokens=120, max_num_tokens_per_sample=110)


def _lengths(n, seed=0, low=5, high=110):
    return np.random.default_rng(seed).integers(low, high + 1, size=n).tolist()


def test_epoch_order_is_a_seeded_permutation():
    a, b = epoch_order(50, seed=1, epoch=0), epoch_order(50, seed=1, epoch=0)
    assert sorted(a.tolist()) == list(range(50))
    assert a.tolist() == b.tolist()
    assert a.tolist() != epoch_order(50, seed=1, epoch=1).tolist()
    assert a.tolist() != epoch_order(50, seed=2, epoch=0).tolist()


def test_every_sample_lands_in_exactly_one_pack_per_epoch():
    lengths = _lengths(203)
    stream = PackStream(lengths, CFG, seed=3)
    position = DataPosition()
    for epoch in range(3):
        seen = []
        while True:
            pack, position = stream.next_pack(position)
            assert pack.epoch == epoch
            assert pack.num_tokens == sum(lengths[i] for i in pack.indices)
            assert pack.num_tokens <= CFG.max_num_tokens
            # closed only when full enough, when the next sample does not fit, or at the epoch end
            order = stream.order(epoch)
            if pack.end < len(order) and pack.num_tokens < CFG.expected_num_tokens:
                assert pack.num_tokens + lengths[order[pack.end]] > CFG.max_num_tokens
            seen += pack.indices
            if position.epoch != epoch:
                break
        assert sorted(seen) == list(range(203)), "a sample was dropped or repeated"
        assert seen == stream.order(epoch).tolist()  # packs follow the epoch order
        assert position == DataPosition(epoch + 1, 0)


def test_pack_closes_at_expected_tokens():
    stream = PackStream([30] * 10, PackingConfig(60, 100, 50), seed=0, shuffle=False)
    pack, pos = stream.next_pack(DataPosition())
    assert pack.indices == (0, 1) and pack.num_tokens == 60 and pos == DataPosition(0, 2)
    # a sample exactly at the per-sample cap still gets its own pack
    stream = PackStream([50, 50, 50], PackingConfig(60, 60, 50), seed=0, shuffle=False)
    packs = [stream.next_pack(DataPosition(0, o))[0] for o in (0, 1, 2)]
    assert [p.indices for p in packs] == [(0,), (1,), (2,)]


def test_oversize_samples_are_refused_not_dropped():
    with pytest.raises(ValueError, match="exceed max_num_tokens_per_sample=110, e.g. sample 1 with 111"):
        PackStream([10, 111, 5], CFG, seed=0)
    with pytest.raises(ValueError, match="need 0 < max_num_tokens_per_sample"):
        PackingConfig(10, 20, 30)


def test_steps_split_one_global_stream_over_ranks_and_micro_batches():
    lengths = _lengths(97, seed=1)
    stream = PackStream(lengths, CFG, seed=5)
    # world 2 x accum 1 and world 1 x accum 2 consume the same packs per step
    two = [StepPlanner(stream, 2, r) for r in range(2)]
    one = StepPlanner(stream, 1, 0, grad_accum=2)
    pos2 = pos1 = DataPosition()
    for _ in range(7):
        mine0, all0, nxt0 = two[0].step(pos2)
        mine1, all1, nxt1 = two[1].step(pos2)
        solo, all_solo, nxt_solo = one.step(pos1)
        assert all0 == all1 == all_solo and nxt0 == nxt1 == nxt_solo
        assert mine0 == [all0[0]] and mine1 == [all0[1]]
        assert solo == all0
        pos2 = pos1 = nxt0
    # 2 ranks x 2 micro-batches: micro-batch j of rank r is pack j * world + r
    mine, all_packs, _ = StepPlanner(stream, 2, 1, grad_accum=2).step(DataPosition())
    assert mine == [all_packs[1], all_packs[3]]


def test_resume_from_saved_position_continues_with_next_unseen_sample():
    lengths = _lengths(41, seed=2)
    stream = PackStream(lengths, CFG, seed=9)
    planner = StepPlanner(stream, 2, 0)
    straight, pos = [], DataPosition()
    for _ in range(20):  # 40 packs: past the end of epoch 0
        _, packs, pos = planner.step(pos)
        straight += [p.indices for p in packs]
    # stop after 5 steps, save the position (as JSON would), resume on another world size
    resumed, pos = [], DataPosition()
    for _ in range(5):
        _, packs, pos = planner.step(pos)
        resumed += [p.indices for p in packs]
    saved = DataPosition.from_dict(dict(pos.to_dict()))
    fresh = StepPlanner(PackStream(lengths, CFG, seed=9), 1, 0, grad_accum=2)
    for _ in range(15):
        _, packs, saved = fresh.step(saved)
        resumed += [p.indices for p in packs]
    assert resumed == straight
    # across the epoch boundary every sample was seen exactly once per epoch
    flat = [i for pack in straight for i in pack]
    assert len(flat) > 41 and sorted(flat[:41]) == list(range(41))


def test_data_position_round_trip_and_errors():
    pos = DataPosition(3, 17)
    assert DataPosition.from_dict(pos.to_dict()) == pos
    with pytest.raises(ValueError, match="trainer_state.json: expected"):
        DataPosition.from_dict({"epoch": 1}, "trainer_state.json")
    with pytest.raises(ValueError, match="non-negative integers"):
        DataPosition.from_dict({"epoch": -1, "offset": 0})
    stream = PackStream([10] * 5, CFG, seed=0)
    assert stream.normalise(DataPosition(2, 5)) == DataPosition(3, 0)
    with pytest.raises(ValueError, match="beyond the dataset's 5 samples"):
        stream.next_pack(DataPosition(0, 6))
