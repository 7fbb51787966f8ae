# SPDX-License-Identifier: Apache-2.0
"""Region proposals: tiny SAM loading and proposing, cleanup rules, self-grounding filter."""
import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything.utils.amg import mask_to_rle_pytorch

from srum.config import ConfigError, load_config
from srum.models.bagel import CheckpointError
from srum.proposals import (CleanupConfig, GroundingConfig, ProposalConfig, SamConfig, build_mask_generator,
                            build_sam, clean_regions, ground_regions, propose_for_image,
                            propose_regions, select_kept, write_tiny_sam)
from srum.records import decode_rle
from srum.regions import RegionView, show_region

WIDTH, HEIGHT = 64, 48  # not square, so a transposed mask or box shows


def scene() -> Image.Image:
    rng = np.random.default_rng(0)
    pixels = np.full((HEIGHT, WIDTH, 3), 30, np.uint8)
    pixels[8:30, 5:28] = (220, 40, 40)
    pixels[30:44, 36:60] = (40, 90, 230)
    return Image.fromarray((pixels + rng.integers(0, 20, pixels.shape)).astype(np.uint8))


def rle(mask: np.ndarray) -> dict:
    return mask_to_rle_pytorch(torch.from_numpy(mask)[None])[0]


def rect_mask(x1, y1, x2, y2, size=(100, 80)) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def region(mask: np.ndarray, predicted_iou=0.9, with_mask=True) -> dict:
    ys, xs = np.nonzero(mask)
    return {"bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
            "mask": rle(mask) if with_mask else None, "area": int(mask.sum()),
            "predicted_iou": predicted_iou, "stability_score": 0.95}


@pytest.fixture(scope="module")
def tiny_sam_path(tmp_path_factory):
    return write_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny_sam.pth", seed=0)


@pytest.fixture(scope="module")
def generator(tiny_sam_path):
    return build_mask_generator(SamConfig(model_type="tiny", checkpoint=str(tiny_sam_path), points_per_side=4))


# ---------------------------------------------------------------- SAM
def test_tiny_sam_checkpoint_round_trip(tiny_sam_path, tmp_path):
    saved = torch.load(tiny_sam_path, map_location="cpu", weights_only=True)
    model = build_sam(SamConfig(model_type="tiny", checkpoint=str(tiny_sam_path)))
    loaded = model.state_dict()
    assert set(saved) == set(loaded)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert model.image_encoder.img_size <= 256 and len(model.image_encoder.blocks) == 2
    # deterministic per seed; another seed differs; checkpoint=None means seed 0
    again = torch.load(write_tiny_sam(tmp_path / "again.pth", seed=0), weights_only=True)
    other = torch.load(write_tiny_sam(tmp_path / "other.pth", seed=1), weights_only=True)
    key = "mask_decoder.iou_token.weight"
    assert torch.equal(again[key], saved[key]) and not torch.equal(other[key], saved[key])
    default = build_sam(SamConfig(model_type="tiny")).state_dict()
    assert all(torch.equal(default[k], saved[k]) for k in saved)


def test_bad_sam_checkpoints_name_the_file_and_keys(tiny_sam_path, tmp_path):
    state = torch.load(tiny_sam_path, weights_only=True)

    def load(name, content):
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        with pytest.raises(CheckpointError) as err:
            build_sam(SamConfig(model_type="tiny", checkpoint=str(path)))
        assert str(path) in str(err.value)
        return str(err.value)

    missing = dict(state)
    del missing["mask_decoder.iou_token.weight"]
    assert "mask_decoder.iou_token.weight" in load("missing.pth", missing)
    renamed = {("model." + k if k.startswith("prompt_encoder.pe_layer") else k): v for k, v in state.items()}
    message = load("renamed.pth", renamed)
    assert "model.prompt_encoder.pe_layer" in message and "unexpected" in message
    reshaped = dict(state, **{"mask_decoder.iou_token.weight": torch.zeros(1, 7)})
    assert "mask_decoder.iou_token.weight [1, 7]" in load("reshaped.pth", reshaped)
    assert "state dict" in load("list.pth", [1, 2])
    assert "not a readable" in load("garbage.pth", b"not a pickle at all")
    with pytest.raises(CheckpointError, match="not found"):
        build_sam(SamConfig(model_type="tiny", checkpoint=str(tmp_path / "absent.pth")))
    with pytest.raises(CheckpointError, match="required for model_type 'vit_h'"):
        build_sam(SamConfig())


def test_generator_settings_resolve_per_model_type(tiny_sam_path):
    assert SamConfig().generator_kwargs()["pred_iou_thresh"] == 0.88
    assert SamConfig().generator_kwargs()["stability_score_thresh"] == 0.95
    tiny = SamConfig(model_type="tiny", points_per_side=6, box_nms_thresh=0.5)
    kwargs = tiny.generator_kwargs()
    assert (kwargs["pred_iou_thresh"], kwargs["stability_score_thresh"]) == (0.0, 0.0)
    assert SamConfig(model_type="tiny", pred_iou_thresh=0.3).generator_kwargs()["pred_iou_thresh"] == 0.3
    gen = build_mask_generator(tiny)
    assert gen.box_nms_thresh == 0.5 and gen.output_mode == "uncompressed_rle"
    assert len(gen.point_grids[0]) == 36
    with pytest.raises(ValueError, match="pred_iou_thresh"):
        SamConfig(pred_iou_thresh=1.5)
    with pytest.raises(ConfigError, match="points_per_side"):
        load_config(ProposalConfig, None, ["sam.points_per_side=0"])


def test_propose_regions_boxes_match_masks(generator):
    regions = propose_regions(scene(), generator)
    assert len(regions) >= 1
    for r in regions:
        mask = decode_rle(r["mask"])
        assert mask.shape == (HEIGHT, WIDTH) and r["mask"]["size"] == [HEIGHT, WIDTH]
        assert r["area"] == int(mask.sum()) > 0
        ys, xs = np.nonzero(mask)
        assert r["bbox"] == [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        x1, y1, x2, y2 = r["bbox"]
        assert 0 <= x1 < x2 <= WIDTH and 0 <= y1 < y2 <= HEIGHT
        assert all(isinstance(c, int) for c in r["mask"]["counts"])
        assert isinstance(r["predicted_iou"], float) and isinstance(r["stability_score"], float)


class FakeGenerator:
    """Stands in for SamAutomaticMaskGenerator: fixed masks, SAM's XYWH (inclusive) boxes."""

    output_mode = "uncompressed_rle"

    def __init__(self, masks_and_scores):
        self.anns = []
        for mask, piou in masks_and_scores:
            ys, xs = np.nonzero(mask) if mask.any() else (np.array([0]), np.array([0]))
            x, y = int(xs.min()), int(ys.min())
            self.anns.append({"segmentation": rle(mask), "area": int(mask.sum()), "predicted_iou": piou,
                              "bbox": [x, y, int(xs.max()) - x, int(ys.max()) - y],
                              "stability_score": 0.97, "point_coords": [[0.0, 0.0]], "crop_box": [0, 0, 64, 48]})

    def generate(self, pixels):
        assert pixels.shape == (HEIGHT, WIDTH, 3) and pixels.dtype == np.uint8
        return self.anns


def test_propose_regions_converts_xywh_and_drops_empty_masks():
    one_pixel = rect_mask(5, 6, 6, 7, size=(WIDTH, HEIGHT))
    gen = FakeGenerator([(one_pixel, 0.9), (np.zeros((HEIGHT, WIDTH), bool), 0.9)])
    regions = propose_regions(scene(), gen)
    assert [r["bbox"] for r in regions] == [[5.0, 6.0, 6.0, 7.0]] and regions[0]["area"] == 1


def test_zero_masks_are_handled(tiny_sam_path):
    # the random tiny SAM predicts IoUs far below 1, so this threshold leaves no mask
    gen = build_mask_generator(SamConfig(model_type="tiny", checkpoint=str(tiny_sam_path), points_per_side=2,
                                         pred_iou_thresh=1.0))
    assert propose_regions(scene(), gen) == []

    class NoCalls:
        def choice_probabilities(self, *args):
            raise AssertionError("the model must not be asked about zero regions")

    regions, stats = propose_for_image(scene(), "a red box", gen, NoCalls(), ProposalConfig())
    assert regions == [] and stats["sam_masks"] == 0 and stats["kept"] == 0 and stats["grounding"]["forwards"] == 0


# ---------------------------------------------------------------- cleanup
def test_cleanup_size_limits_and_counts():
    small = region(rect_mask(0, 0, 5, 5))         # 25 px = 0.3 % of 8000
    medium = region(rect_mask(10, 10, 20, 20))    # 100 px
    full = region(rect_mask(0, 0, 100, 80))       # whole image
    kept, counts = clean_regions([small, medium, full], (100, 80), CleanupConfig())
    assert kept == [medium]
    assert counts == {"input": 3, "min_area": 1, "max_area": 1, "duplicate": 0, "contained": 0, "top_k": 0, "kept": 1}
    kept, _ = clean_regions([small, medium, full], (100, 80), CleanupConfig(min_area_fraction=0, max_area_fraction=1,
                                                                       containment=None))
    assert kept == [full, medium, small]
    assert clean_regions([], (100, 80), CleanupConfig())[0] == []


def test_cleanup_duplicates_keep_the_better_predicted_mask():
    a = region(rect_mask(10, 10, 50, 50), predicted_iou=0.95)
    near_copy = region(rect_mask(11, 10, 50, 50), predicted_iou=0.90)   # IoU 0.975
    elsewhere = region(rect_mask(60, 10, 90, 40), predicted_iou=0.5)
    kept, counts = clean_regions([near_copy, elsewhere, a], (100, 80), CleanupConfig())
    assert kept == [a, elsewhere] and counts["duplicate"] == 1
    near_copy["predicted_iou"] = 0.99
    kept, _ = clean_regions([near_copy, elsewhere, a], (100, 80), CleanupConfig())
    assert kept == [near_copy, elsewhere]
    kept, counts = clean_regions([near_copy, elsewhere, a], (100, 80), CleanupConfig(nms_iou=1.0, containment=None))
    assert len(kept) == 3 and counts["duplicate"] == 0


def test_cleanup_containment_uses_masks_not_boxes():
    whole = region(rect_mask(0, 0, 60, 60))
    part = region(rect_mask(10, 10, 20, 20))                            # entirely inside `whole`
    half_in = region(rect_mask(50, 10, 70, 20))                         # half inside
    kept, counts = clean_regions([part, half_in, whole], (100, 80), CleanupConfig())
    assert kept == [whole, half_in] and counts["contained"] == 1
    kept, _ = clean_regions([part, half_in, whole], (100, 80), CleanupConfig(containment=None))
    assert kept == [whole, half_in, part]
    # a ring and the hole inside it: boxes nest, masks do not overlap
    ring_mask = rect_mask(10, 10, 60, 60) & ~rect_mask(20, 20, 50, 50)
    ring, hole = region(ring_mask), region(rect_mask(20, 20, 50, 50))
    kept, _ = clean_regions([hole, ring], (100, 80), CleanupConfig())
    assert kept == [ring, hole]
    # without masks only the boxes are known: the hole lies inside the ring's box
    ring_box, hole_box = region(ring_mask, with_mask=False), region(rect_mask(20, 20, 50, 50), with_mask=False)
    kept, counts = clean_regions([hole_box, ring_box], (100, 80), CleanupConfig())
    assert kept == [ring_box] and counts["contained"] == 1


def test_cleanup_top_k_keeps_the_largest_in_order():
    regions = [region(rect_mask(8 * i, 0, 8 * i + 7, 10 + 5 * i)) for i in range(12)]  # disjoint, growing
    kept, counts = clean_regions(regions, (100, 80), CleanupConfig(top_k=10))
    assert kept == regions[::-1][:10]
    assert [r["area"] for r in kept] == sorted((r["area"] for r in kept), reverse=True)
    assert counts["top_k"] == 2 and counts["kept"] == 10
    assert clean_regions(regions, (100, 80), CleanupConfig(top_k=0))[0] == []


def test_cleanup_rejects_a_mask_of_another_size():
    r = region(rect_mask(0, 0, 30, 30, size=(80, 100)))
    with pytest.raises(ValueError, match="does not match the image"):
        clean_regions([r, region(rect_mask(0, 0, 30, 30))], (100, 80), CleanupConfig())


# ---------------------------------------------------------------- grounding
class FakeModel:
    """Returns P(yes) from a fixed list, in call order; records what it was asked."""

    def __init__(self, p_yes):
        self.p_yes = list(p_yes)
        self.calls = []

    def choice_probabilities(self, images, prompts, choices):
        assert choices == [["Yes", "yes"], ["No", "no"]]
        assert len(images) == len(prompts)
        assert all(isinstance(entry, list) and all(isinstance(im, Image.Image) for im in entry) for entry in images)
        self.calls.append(list(prompts))
        p = torch.tensor([self.p_yes.pop(0) for _ in prompts])
        return torch.stack([p, 1 - p], dim=1), torch.full((len(prompts),), 0.8)


def boxes(n):
    return [{"bbox": [2.0 * i, 1.0, 2.0 * i + 20, 30.0], "mask": None, "area": 100 - i} for i in range(n)]


@pytest.mark.parametrize("cfg, expected", [
    (dict(threshold=0.5), [1, 2, 4]),
    (dict(threshold=0.99, min_keep=2), [1, 4]),
    (dict(threshold=0.99, min_keep=0), []),
    (dict(threshold=0.5, max_keep=2), [1, 4]),
    (dict(threshold=0.0, min_keep=0), [0, 1, 2, 3, 4]),
    (dict(threshold=0.99, min_keep=9), [0, 1, 2, 3, 4]),
])
def test_grounding_keep_rules(cfg, expected):
    p = [0.2, 0.9, 0.6, 0.4, 0.95]
    model = FakeModel(p)
    regions, stats = ground_regions(model, scene(), "a red box", boxes(5), GroundingConfig(batch_size=2, **cfg))
    assert [r["grounding"]["p_relevant"] for r in regions] == pytest.approx(p)
    assert [i for i, r in enumerate(regions) if r["grounding"]["kept"]] == expected
    assert all(r["grounding"]["mass"] == pytest.approx(0.8) for r in regions)
    assert [len(c) for c in model.calls] == [2, 2, 1] and stats["forwards"] == 3
    assert stats["kept"] == len(expected) and stats["regions"] == 5
    assert all("a red box" in q and "red rectangle" in q for call in model.calls for q in call)


def test_grounding_ties_keep_the_earlier_region():
    flags, counts = select_kept([0.5, 0.5, 0.5], GroundingConfig(threshold=0.9, min_keep=2))
    assert flags == [True, True, False] and counts["added_by_min_keep"] == 2


def test_grounding_disabled_or_without_model():
    regions, stats = ground_regions(None, scene(), "x", boxes(3), GroundingConfig(enabled=False))
    assert [r["grounding"] for r in regions] == [None] * 3 and stats["kept"] == 3
    with pytest.raises(ValueError, match="no model"):
        ground_regions(None, scene(), "x", boxes(1), GroundingConfig())
    with pytest.raises(ValueError, match="max_keep"):
        GroundingConfig(min_keep=3, max_keep=2)
    with pytest.raises(ValueError, match="prompt"):
        GroundingConfig(question="Is {region} fine?")
    cfg = GroundingConfig(question="For '{prompt}': is {region} relevant? yes or no")
    model = FakeModel([0.7])
    ground_regions(model, scene(), "a cat", boxes(1), cfg)
    assert model.calls == [["For 'a cat': is the area inside the red rectangle relevant? yes or no"]]
    model = FakeModel([0.7])    # the compact wording: the same question in a few words
    ground_regions(model, scene(), "a cat", boxes(1), GroundingConfig(wording="compact"))
    assert model.calls == [['Prompt: "a cat".\nRegion: the area inside the red rectangle.\nIs the region relevant? Yes or no.']]
    with pytest.raises(ValueError, match="wording"):
        GroundingConfig(wording="terse")


@pytest.mark.parametrize("view", [RegionView("mark"), RegionView("crop"), RegionView("crop", crop_context=True),
                                  RegionView("coords")], ids=["mark", "crop", "crop_context", "coords"])
def test_grounding_batches_equal_single_regions_on_the_tiny_model(tiny_model, view):
    image = scene()
    regions = [{"bbox": [5.0, 8.0, 28.0, 30.0]}, {"bbox": [36.0, 30.0, 60.0, 44.0]}, {"bbox": [0.0, 0.0, 64.0, 20.0]}]
    batched, stats = ground_regions(tiny_model, image, "a red box and a blue box",
                                    [dict(r) for r in regions], GroundingConfig(view=view, batch_size=3))
    single, single_stats = ground_regions(tiny_model, image, "a red box and a blue box",
                                          [dict(r) for r in regions], GroundingConfig(view=view, batch_size=1))
    assert (stats["forwards"], single_stats["forwards"]) == (1, 3)
    for b, s in zip(batched, single):
        assert 0.0 <= b["grounding"]["p_relevant"] <= 1.0 and 0.0 < b["grounding"]["mass"] <= 1.0
        assert b["grounding"]["p_relevant"] == pytest.approx(s["grounding"]["p_relevant"], abs=1e-5)
        assert b["grounding"]["mass"] == pytest.approx(s["grounding"]["mass"], abs=1e-5)
    # the regions are shown differently, so the model's answers differ between them
    assert len({round(r["grounding"]["p_relevant"], 6) for r in batched}) > 1


# ---------------------------------------------------------------- the whole step
def test_propose_for_image_orders_kept_first_and_numbers_regions():
    masks = [rect_mask(0, 0, 30, 30, (WIDTH, HEIGHT)), rect_mask(34, 0, 60, 20, (WIDTH, HEIGHT)),
             rect_mask(34, 24, 50, 40, (WIDTH, HEIGHT)), rect_mask(0, 0, 2, 2, (WIDTH, HEIGHT))]
    gen = FakeGenerator([(m, 0.9) for m in masks])
    model = FakeModel([0.1, 0.8, 0.6])   # asked largest first: masks 0, 1, 2 (mask 3 is too small)
    cfg = ProposalConfig(grounding=GroundingConfig(threshold=0.5))
    regions, stats = propose_for_image(scene(), "two boxes", gen, model, cfg)
    assert [r["region_id"] for r in regions] == [0, 1, 2]
    assert [r["area"] for r in regions] == [int(masks[i].sum()) for i in (1, 2, 0)]
    assert [r["grounding"]["kept"] for r in regions] == [True, True, False]
    assert list(regions[0])[:2] == ["region_id", "bbox"]
    assert stats["sam_masks"] == 4 and stats["cleanup"]["min_area"] == 1 and stats["kept"] == 2
    # filter off: no model needed, everything kept, largest first
    off = ProposalConfig(grounding=GroundingConfig(enabled=False))
    regions, stats = propose_for_image(scene(), "two boxes", gen, None, off)
    assert [r["grounding"] for r in regions] == [None] * 3 and stats["kept"] == 3
    assert [r["area"] for r in regions] == [int(masks[i].sum()) for i in (0, 1, 2)]


def test_propose_for_image_with_tiny_sam_and_tiny_model(generator, tiny_model):
    cfg = ProposalConfig(cleanup=CleanupConfig(max_area_fraction=1.0), grounding=GroundingConfig(threshold=1.0))
    regions, stats = propose_for_image(scene(), "a red box", generator, tiny_model, cfg)
    assert stats["regions"] == len(regions) >= 1
    assert stats["kept"] == 1    # nothing reaches p = 1.0, min_keep rescues the most probable
    assert regions[0]["grounding"]["kept"] and all(not r["grounding"]["kept"] for r in regions[1:])


def test_proposal_config_loads_from_yaml(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("sam: {model_type: tiny, points_per_side: 4}\ncleanup: {top_k: 5, containment: null}\n"
                    "grounding: {threshold: 0.7, view: {mode: crop, crop_margin: 0.2}}\n")
    cfg = load_config(ProposalConfig, path)
    assert cfg.sam.model_type == "tiny" and cfg.cleanup.top_k == 5 and cfg.cleanup.containment is None
    assert cfg.grounding.view == RegionView("crop", crop_margin=0.2) and cfg.grounding.threshold == 0.7
    with pytest.raises(ConfigError, match="grounding.view.mode"):
        load_config(ProposalConfig, None, ["grounding.view.mode=box"])


# ---------------------------------------------------------------- top_k after the filter (issue 14)
def _fourteen_strips():
    """14 disjoint strips, strip i of area 4 * (3 + i): strip 13 is the largest, strip 2
    the 12th largest."""
    return [rect_mask(4 * i, 0, 4 * i + 4, 3 + i, (WIDTH, HEIGHT)) for i in range(14)]


def test_filter_sees_a_relevant_region_beyond_the_ten_largest():
    masks = _fourteen_strips()
    gen = FakeGenerator([(m, 0.9) for m in masks])
    relevant = [0.1] * 14
    relevant[11] = 0.9                      # asked largest first: the 12th largest is strip 2
    cleanup = CleanupConfig(min_area_fraction=0.0, top_k=10)
    regions, stats = propose_for_image(scene(), "a thin strip", gen, FakeModel(relevant),
                                       ProposalConfig(cleanup=cleanup, grounding=GroundingConfig(threshold=0.5)))
    kept = [r for r in regions if r["grounding"]["kept"]]
    assert [r["area"] for r in kept] == [int(masks[2].sum())]
    assert stats["grounding"]["regions"] == 14 and stats["cleanup"]["top_k"] == 0
    # a pool of only the ten largest (the old order: top_k before the filter) never sees it
    small_pool = CleanupConfig(min_area_fraction=0.0, top_k=10, grounding_pool=10)
    regions, stats = propose_for_image(scene(), "a thin strip", gen, FakeModel(relevant[:10]),
                                       ProposalConfig(cleanup=small_pool, grounding=GroundingConfig(threshold=0.5)))
    assert int(masks[2].sum()) not in [r["area"] for r in regions]
    assert stats["grounding"]["regions"] == 10 and stats["cleanup"]["top_k"] == 4


def test_top_k_keeps_the_most_relevant_of_the_accepted_regions():
    masks = _fourteen_strips()
    gen = FakeGenerator([(m, 0.9) for m in masks])
    p_yes = [0.6 + 0.02 * i for i in range(14)]   # all relevant; the smallest are the most relevant
    cleanup = CleanupConfig(min_area_fraction=0.0, top_k=4)
    regions, stats = propose_for_image(scene(), "strips", gen, FakeModel(p_yes),
                                       ProposalConfig(cleanup=cleanup, grounding=GroundingConfig(threshold=0.5)))
    kept = [r for r in regions if r["grounding"]["kept"]]
    assert sorted(r["area"] for r in kept) == sorted(int(masks[i].sum()) for i in range(4))
    assert stats["kept"] == 4 and stats["grounding"]["removed_by_max_keep"] == 10 and len(regions) == 14
    # filter off: the reference's rule, the top_k largest
    off = ProposalConfig(cleanup=cleanup, grounding=GroundingConfig(enabled=False))
    regions, _ = propose_for_image(scene(), "strips", gen, None, off)
    assert [r["area"] for r in regions] == [int(masks[i].sum()) for i in (13, 12, 11, 10)]
    with pytest.raises(ValueError, match="grounding_pool"):
        CleanupConfig(top_k=10, grounding_pool=5)


def test_coords_view_names_the_box_on_its_grid_in_either_phrase():
    image = scene()                       # 64 x 48
    box = [16.0, 12.0, 48.0, 36.0]
    views, full = show_region(image, box, RegionView("coords", coords_scale=100))
    assert views == [image] and full.startswith("the area with corners (25, 25) and (75, 75)") and "0 to 100" in full
    views, short = show_region(image, box, RegionView("coords", coords_scale=64, coords_phrase="compact"))
    assert views == [image] and short == "the box (16, 16, 48, 48)"
    with pytest.raises(ValueError, match="coords_phrase"):
        RegionView("coords", coords_phrase="tiny")


def test_isolate_view_keeps_the_region_in_place_and_blacks_out_the_rest():
    image = Image.new("RGB", (64, 48), (10, 20, 30))
    image.paste((200, 0, 0), (4, 4, 12, 12))       # inside the box
    image.paste((0, 200, 0), (50, 30, 60, 40))     # far outside it
    views, phrase = show_region(image, [2.0, 2.0, 14.0, 14.0], RegionView("isolate", crop_margin=0.25))
    assert phrase == "the part of the image left visible" and len(views) == 1
    shown = np.asarray(views[0])
    assert views[0].size == image.size
    assert (shown[4:12, 4:12] == (200, 0, 0)).all()           # the region at its own size and place
    assert (shown[0:17, 0:17] == np.asarray(image)[0:17, 0:17]).all()   # window = box + 3 px a side
    assert shown[17:].max() == 0 and shown[:, 17:].max() == 0            # everything else black
