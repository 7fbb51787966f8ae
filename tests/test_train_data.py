# SPDX-License-Identifier: Apache-2.0
"""Training data: reward records -> planned samples -> packed sequences that match the
inference layout."""
import json

import PIL.Image
import pytest
import torch

from helpers_train import write_reward_dataset
from srum.models.bagel.tokenizer import encode_text
from srum.rewards.raster import RewardMapConfig, reward_weights
from srum.training.data import StepLoader, TrainSample, build_dataset, layout_pack, to_packed_batch
from srum.training.packing import DataPosition, PackingConfig, PackStream, StepPlanner

SIZES = [(32, 48), (64, 64), (48, 32), (64, 64)]


def _build(model, files, **overrides):
    kwargs = dict(max_image_size=64, min_image_size=32, image_stride=16, latent_downsample=16,
                  max_latent_size=model.config.max_latent_size, latent_dim=model.config.patch_latent_dim,
                  max_num_tokens_per_sample=200, oversize="error", rewards_enabled=True,
                  map_config=RewardMapConfig(), missing_global="skip", text_dropout_prob=0.0,
                  timestep_shift=1.0, seed=7)
    kwargs.update(overrides)
    return build_dataset([str(f) for f in files], model.tokenizer, model.special_tokens, **kwargs)


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory):
    path = write_reward_dataset(tmp_path_factory.mktemp("rewards"), SIZES, failed_global=(3,))
    with open(path, "a", encoding="utf-8") as f:
        f.write("this is not json\n")
    return path


def test_build_plans_every_sample_and_reports_what_it_leaves_out(tiny_model, reward_file):
    dataset, report = _build(tiny_model, [reward_file])
    assert report.records_read == 5 and report.kept == 3 == len(dataset)
    assert report.skipped_missing_global == ["sample_003_0"]
    assert len(report.bad_lines) == 1 and f"{reward_file}:5: invalid JSON" in report.bad_lines[0]
    # 32x48 -> 2 x 3 latent tokens (w x h), 64x64 -> 4 x 4, 48x32 -> 3 x 2
    assert [info.grid for info in dataset.infos] == [(3, 2), (4, 4), (2, 3)]
    for info in dataset.infos:
        text = encode_text(tiny_model.tokenizer, tiny_model.special_tokens, info.record["prompt"])
        assert info.text_ids == text
        assert info.num_tokens == len(text) + info.grid[0] * info.grid[1] + 2

    # a failed global is kept when it is not needed, or when asked to treat it as neutral
    assert _build(tiny_model, [reward_file], missing_global="neutral")[1].kept == 4
    assert _build(tiny_model, [reward_file], rewards_enabled=False)[1].kept == 4
    assert _build(tiny_model, [reward_file], map_config=RewardMapConfig(use_global=False))[1].kept == 4
    # the same records in a second file are reported as duplicates, not trained twice
    _, dup = _build(tiny_model, [reward_file, reward_file])
    assert dup.kept == 3 and len(dup.skipped_duplicate) == 4


def test_reference_rows_are_read_leniently_and_zero_global_is_kept_unless_asked(tiny_model, tmp_path):
    """Reference rows with one bad region keep the row; data_report.json counts each fix.
    A global score of 0.0 is trained unless rewards.drop_zero_global asks for the
    reference formatter's rule."""
    from srum.training.data import write_report
    ours = write_reward_dataset(tmp_path, [(64, 64), (64, 64), (64, 64)])
    rows = []
    for i, line in enumerate(ours.read_text().splitlines()):
        rec = json.loads(line)
        entries = [{"object": "global_layout_reward", "bbox": [0, 0, 64, 64], "score": 0.0 if i == 0 else 1.4},
                   {"object": "cup", "bbox": [0, 0, 80, 64], "score": 0.5},
                   {"object": "sliver", "bbox": [5, 5, 5, 9], "score": -0.5}]
        rows.append(json.dumps({"bad_image_file": rec["image_file"], "good_image_file": rec["image_file"],
                                "prompt": rec["prompt"], "vlm_rewards": entries}))
    path = tmp_path / "reference.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    dataset, report = _build(tiny_model, [path])
    assert report.kept == 3 and report.skipped_zero_global == []
    assert report.import_fixes == {"regions_dropped": 3, "boxes_clamped": 3, "scores_clamped": 0,
                                   "global_scores_clamped": 2, "rows_fixed": 3}
    assert [len(info.record["regions"]) for info in dataset.infos] == [1, 1, 1]
    assert "3 region(s) dropped" in report.summary()
    write_report(report, str(tmp_path / "data_report.json"))
    written = json.loads((tmp_path / "data_report.json").read_text())
    assert written["import_fixes"]["regions_dropped"] == 3 and written["skipped_zero_global"] == []
    _, dropped = _build(tiny_model, [path], drop_zero_global=True)
    assert dropped.kept == 2 and dropped.skipped_zero_global == ["sample_000_0"]


def test_oversize_and_too_large_images_are_errors_or_reported(tiny_model, reward_file):
    with pytest.raises(ValueError, match="sample_001_0' needs \\d+ tokens, more than data.max_num_tokens_per_sample=20"):
        _build(tiny_model, [reward_file], max_num_tokens_per_sample=20)
    dataset, report = _build(tiny_model, [reward_file], max_num_tokens_per_sample=20, oversize="skip")
    assert len(report.skipped_oversize) == 1 and report.kept == 2  # only the 64x64 one is too long
    with pytest.raises(ValueError, match="size 688x1024 needs a 64x43 latent grid, beyond the model.s 32 per side"):
        _build(tiny_model, [reward_file], max_image_size=1024, min_image_size=1024)


def test_image_that_does_not_match_its_record_is_an_error(tiny_model, tmp_path):
    path = write_reward_dataset(tmp_path, [(64, 64)])
    PIL.Image.new("RGB", (32, 32)).save(tmp_path / "images" / "sample_000_0.png")
    message = "sample_000_0.png: image of record 'sample_000_0' is 32x32 but the record says 64x64"
    with pytest.raises(ValueError, match=message):  # found at start, before any training
        _build(tiny_model, [path])
    (tmp_path / "images" / "sample_000_0.png").unlink()
    with pytest.raises(ValueError, match="sample_000_0.png: cannot open the image of record 'sample_000_0'"):
        _build(tiny_model, [path])


def test_sample_randomness_depends_only_on_seed_epoch_and_index(tiny_model, reward_file):
    dataset, _ = _build(tiny_model, [reward_file], text_dropout_prob=0.5)
    a, b = dataset.load(1, epoch=0), dataset.load(1, epoch=0)
    assert torch.equal(a.noise, b.noise) and a.timestep == b.timestep and a.vae_seed == b.vae_seed
    assert a.noise.shape == (16, tiny_model.config.patch_latent_dim) and 0.0 < a.timestep < 1.0
    c = dataset.load(1, epoch=1)
    assert not torch.equal(a.noise, c.noise) and a.timestep != c.timestep
    assert not torch.equal(a.noise[:6], dataset.load(0, epoch=0).noise)
    # the reward weights are the rasterizer's map on the latent grid, row-major
    expected, _ = reward_weights(dataset.infos[1].record, (4, 4), RewardMapConfig())
    torch.testing.assert_close(a.weights, expected.reshape(-1))
    assert a.image.shape == (3, 64, 64) and a.reference is None
    # the prompt is dropped about half of the time at p = 0.5
    dropped = sum(not dataset.load(0, epoch=e).text_ids for e in range(200))
    assert 70 <= dropped <= 130

    fixed, _ = _build(tiny_model, [reward_file], resample_noise_each_epoch=False)
    assert torch.equal(fixed.load(2, 0).noise, fixed.load(2, 5).noise)
    plain, _ = _build(tiny_model, [reward_file], rewards_enabled=False)
    assert torch.equal(plain.load(1, 0).weights, torch.ones(16))


def test_loader_reads_ahead_the_same_samples(tiny_model, reward_file):
    dataset, _ = _build(tiny_model, [reward_file])
    planner = StepPlanner(PackStream(dataset.lengths, PackingConfig(40, 80, 80), seed=1), 2, 1, grad_accum=2)
    results = []
    for workers in (0, 2):
        loader = StepLoader(dataset, planner, num_workers=workers)
        steps = loader.steps(DataPosition())
        results.append([next(steps) for _ in range(3)])
        loader.close()
    for sync, threaded in zip(*results):
        assert sync.packs == threaded.packs and sync.position_after == threaded.position_after
        assert [[s.index for s in p] for p in sync.samples] == [list(p.indices) for p in sync.packs]
        for ps, pt in zip(sync.samples, threaded.samples):
            assert all(torch.equal(x.noise, y.noise) and torch.equal(x.image, y.image) for x, y in zip(ps, pt))


def _sample(model, index, prompt, grid, t, seed, drop_text=False):
    g = torch.Generator().manual_seed(seed)
    h, w = grid
    ids = [] if drop_text else encode_text(model.tokenizer, model.special_tokens, prompt)
    return TrainSample(index=index, image_id=f"s{index}", image=torch.zeros(3, 16 * h, 16 * w), reference=None,
                       text_ids=ids, grid=grid, weights=torch.ones(h * w), reward_stats={}, timestep=t,
                       noise=torch.randn(h * w, model.config.patch_latent_dim, generator=g), vae_seed=0)


def test_layout_of_a_pack(tiny_model):
    st = tiny_model.special_tokens
    a = _sample(tiny_model, 0, "a red cube", (2, 3), 0.3, 0)
    b = _sample(tiny_model, 1, "unused", (2, 2), 0.8, 1, drop_text=True)
    x = layout_pack([a, b], st, 16, tiny_model.config.max_latent_size)
    n = len(a.text_ids)
    assert x.split_lens == [[n, 8], [6]] and x.attn_modes == [["causal", "noise"], ["noise"]]
    assert x.sequence_length == n + 8 + 6
    assert x.position_ids.tolist() == list(range(n)) + [n] * 8 + [0] * 6  # dropped prompt: image at 0
    assert x.text_ids.tolist() == a.text_ids + [st.vision_start, st.vision_end] * 2
    assert x.text_index.tolist() == list(range(n)) + [n, n + 7, n + 8, n + 13]
    assert x.latent_index.tolist() == list(range(n + 1, n + 7)) + list(range(n + 9, n + 13))
    assert x.latent_timesteps.tolist() == pytest.approx([0.3] * 6 + [0.8] * 4)
    side = tiny_model.config.max_latent_size
    assert x.latent_position_ids.tolist() == [0, 1, 2, side, side + 1, side + 2, 0, 1, side, side + 1]
    torch.testing.assert_close(x.noise, torch.cat([a.noise, b.noise]))
    batch = to_packed_batch(x, torch.zeros(10, tiny_model.config.patch_latent_dim), torch.device("cpu"))
    assert batch.attention_mask.shape == (x.sequence_length,) * 2
    assert not batch.attention_mask[: n + 8, n + 8:].any() and not batch.attention_mask[n + 8:, : n + 8].any()


def test_packed_training_matches_each_sample_alone_and_cached_inference(tiny_model):
    """A sample's velocity does not depend on its pack neighbours, and equals what the
    KV-cache inference path (prompt prefilled, then the image block) computes."""
    model = tiny_model
    samples = [_sample(model, 0, "two blue spheres", (2, 3), 0.7, 0),
               _sample(model, 1, "", (2, 2), 0.4, 1, drop_text=True),
               _sample(model, 2, "a yellow star above a small house", (3, 2), 0.2, 2)]
    latents = [torch.randn(s.grid[0] * s.grid[1], model.config.patch_latent_dim, generator=torch.Generator().manual_seed(9 + i))
               for i, s in enumerate(samples)]
    cfg = model.config
    with torch.no_grad():
        packed = layout_pack(samples, model.special_tokens, cfg.latent_downsample, cfg.max_latent_size)
        v_packed = model(to_packed_batch(packed, torch.cat(latents), torch.device("cpu")))["velocity"]
        start = 0
        for s, lat in zip(samples, latents):
            n = lat.shape[0]
            alone = layout_pack([s], model.special_tokens, cfg.latent_downsample, cfg.max_latent_size)
            v_alone = model(to_packed_batch(alone, lat, torch.device("cpu")))["velocity"]
            torch.testing.assert_close(v_packed[start:start + n], v_alone, atol=1e-5, rtol=1e-4)
            start += n

            # cached inference: prompt (if any), then the image block at one position
            h, w = s.grid
            cache = model.new_cache(1, 64)
            if s.text_ids:
                prompt = model.tokenizer.decode(s.text_ids[1:-1])
                model._prefill_text(cache, [prompt])
            frame = model.embed_text(torch.tensor([model.special_tokens.vision_start, model.special_tokens.vision_end]))
            pos = model.latent_position_ids(h * 16, w * 16)
            emb = model.embed_latents(lat, torch.full((n,), s.timestep), pos)
            block = torch.cat([frame[:1], emb, frame[1:]])
            is_gen = torch.ones(n + 2, dtype=torch.bool)
            is_gen[[0, -1]] = False
            hidden = model._forward_rows(cache, block, torch.tensor([n + 2]), causal=False, single_position=True,
                                         is_gen=is_gen, commit=False)
            v_cached = model.llm2vae(hidden[1:-1])
            torch.testing.assert_close(v_alone, v_cached, atol=1e-5, rtol=1e-4)


def test_reward_file_in_reference_format_is_read(tiny_model, tmp_path):
    """The published dataset's formatted rows train too (global from global_layout_reward)."""
    PIL.Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "bad.png")
    row = {"bad_image_file": "bad.png", "good_image_file": "bad.png", "prompt": "a green field",
           "vlm_rewards": [{"object": "global_layout_reward", "bbox": [0, 0, 64, 64], "score": 0.5, "reason": "ok"},
                           {"object": "field", "bbox": [0, 32, 64, 64], "score": -0.5}]}
    (tmp_path / "formatted.jsonl").write_text(json.dumps(row) + "\n")
    dataset, report = _build(tiny_model, [tmp_path / "formatted.jsonl"])
    assert report.kept == 1
    sample = dataset.load(0, 0)
    alpha = 0.75  # (0.5 + 1) / 2; official map: 0.5 background floor, region (−0.5+1)/2 = 0.25 -> floor 0.5
    torch.testing.assert_close(sample.weights, torch.full((16,), 0.5 * alpha))
