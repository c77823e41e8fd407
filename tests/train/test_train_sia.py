"""Stochastic Instruction Alignment: reference re-indexing tables (English and Chinese), drops, determinism."""

from __future__ import annotations

import collections

import pytest


from firered_train.data import (  # noqa: E402
    Dims, EditRecord, ImageRef, SIAConfig, SourcePlan, align, choose_instruction, find_references, plan_sources,
    realign,
)

SWAP = {1: 2, 2: 1}
ROTATE3 = {1: 3, 2: 1, 3: 2}


# ---------------------------------------------------------------- re-indexing (nothing dropped)
@pytest.mark.parametrize("text,mapping,expected", [
    ("Put the cat from Picture 2 on the sofa in Picture 1.", SWAP,
     "Put the cat from Picture 1 on the sofa in Picture 2."),
    ("Fig. 1 and fig 2, figure 3; img #2 image3 photo 1", ROTATE3,
     "Fig. 3 and fig 1, figure 2; img #1 image2 photo 3"),
    ("Swap IMAGE 1 with Image 2 and image 2 with picture1", SWAP,
     "Swap IMAGE 2 with Image 1 and image 1 with picture2"),
    ("Take the dog from the second image and put it in the First picture.", SWAP,
     "Take the dog from the first image and put it in the Second picture."),
    ("the 2nd photo onto the 1st photo", SWAP, "the 1st photo onto the 2nd photo"),
    ("resize image 1024 wide, keep Picture 3", SWAP, "resize image 1024 wide, keep Picture 3"),  # not images 1..2
    ("Make the images brighter", SWAP, "Make the images brighter"),
])
def test_english_references_follow_the_new_order(text: str, mapping: dict[int, int], expected: str) -> None:
    assert realign(text, mapping, len(mapping)) == expected


@pytest.mark.parametrize("text,mapping,expected", [
    ("把图2中的猫放到图1的沙发上", SWAP, "把图1中的猫放到图2的沙发上"),
    ("把图 2 的帽子戴到图 1 的人头上", SWAP, "把图 1 的帽子戴到图 2 的人头上"),  # with spaces
    ("图片2和图像1", SWAP, "图片1和图像2"),
    ("把图一和图二合成", SWAP, "把图二和图一合成"),  # Chinese numerals stay Chinese numerals
    ("把第二张图的人放进第1张", SWAP, "把第一张图的人放进第2张"),
    ("第 3 幅图片、图1、图二", ROTATE3, "第 2 幅图片、图3、图一"),
    ("地图2和意图1不变, 构图2也是", SWAP, "地图2和意图1不变, 构图2也是"),  # not references
])
def test_chinese_references_follow_the_new_order(text: str, mapping: dict[int, int], expected: str) -> None:
    assert realign(text, mapping, len(mapping)) == expected


def test_find_references_reports_the_image_numbers_and_forms() -> None:
    refs = find_references("Picture 2 vs the third image; 图2、第一张图")
    assert [(r.index, r.form) for r in refs] == [(2, "en"), (3, "en_ordinal"), (2, "cn"), (1, "cn_ordinal")]


# ---------------------------------------------------------------- references to dropped images
@pytest.mark.parametrize("text,mapping,expected", [
    # rule 2: a preposition phrase goes with the reference
    ("Put the cat from Picture 2 on the sofa in Picture 1.", {1: 1, 2: None}, "Put the cat on the sofa in Picture 1."),
    ("Put the cat from Picture 2 on the sofa in Picture 1.", {1: None, 2: 1},
     "Put the cat from Picture 1 on the sofa."),
    ("Take the dog from the second image and put it in the first image.", {1: 1, 2: None},
     "Take the dog and put it in the first image."),
    ("From Picture 2, take the cat and put it in Picture 1.", {1: 1, 2: None},
     "Take the cat and put it in Picture 1."),
    # rule 1: possessive
    ("Use Image 2's style for image 1", {1: 1, 2: None}, "Use the style for image 1"),
    ("Picture 2's hat goes on Picture 1", {1: 1, 2: None}, "The hat goes on Picture 1"),
    # rule 3: lists
    ("Combine Picture 1, Picture 2 and Picture 3 into one scene.", {1: 1, 2: None, 3: 2},
     "Combine Picture 1 and Picture 2 into one scene."),
    ("Combine Picture 1, Picture 2 and Picture 3 into one scene.", {1: None, 2: 1, 3: 2},
     "Combine Picture 1 and Picture 2 into one scene."),
    ("Image 1 & Image 2 side by side", {1: None, 2: 1}, "Image 1 side by side"),
    # rule 4: a neutral noun
    ("Make Picture 2 brighter", {1: 1, 2: None}, "Make the image brighter"),
    ("Picture 2 shows a hat; put it on Picture 1", {1: 1, 2: None}, "The image shows a hat; put it on Picture 1"),
    ("Combine Picture 1 and Picture 2.", {1: None, 2: None}, "Combine the image."),
])
def test_english_references_to_dropped_images_are_removed(text: str, mapping: dict[int, int | None],
                                                           expected: str) -> None:
    assert realign(text, mapping, len(mapping)) == expected


@pytest.mark.parametrize("text,mapping,expected", [
    ("把图2中的猫放到图1的沙发上", {1: 1, 2: None}, "把猫放到图1的沙发上"),
    ("把图2的帽子戴到图1的人头上", {1: 1, 2: None}, "把帽子戴到图1的人头上"),
    ("从图 2 中取出猫放到图片1里", {1: 1, 2: None}, "取出猫放到图片1里"),
    ("把图一和图二合成", {1: 1, 2: None}, "把图一合成"),
    ("把图一、图二和图三拼在一起", {1: 1, 2: None, 3: 2}, "把图一和图二拼在一起"),
    ("把图一、图二和图三拼在一起", {1: None, 2: 1, 3: 2}, "把图一和图二拼在一起"),
    ("参考图2,修改图1", {1: 1, 2: None}, "参考图片,修改图1"),
])
def test_chinese_references_to_dropped_images_are_removed(text: str, mapping: dict[int, int | None],
                                                          expected: str) -> None:
    assert realign(text, mapping, len(mapping)) == expected


# ---------------------------------------------------------------- plans
def test_a_plan_is_a_function_of_seed_and_step() -> None:
    config = SIAConfig(image_drop_prob=0.3, shuffle_prob=0.5, seed=4)
    plans = [plan_sources(3, config, step) for step in range(200)]
    assert plans == [plan_sources(3, config, step) for step in range(200)]  # every rank computes the same
    assert len(set(plans)) > 5, "plans should vary from step to step"
    assert plans != [plan_sources(3, SIAConfig(image_drop_prob=0.3, seed=5), s) for s in range(200)]


def test_plan_probabilities_and_the_minimum_number_of_sources() -> None:
    assert all(plan_sources(3, SIAConfig(image_drop_prob=0, shuffle_prob=0), s).identity for s in range(50))
    kept = {len(plan_sources(3, SIAConfig(image_drop_prob=1, min_sources=1), s).order) for s in range(50)}
    assert kept == {1}
    assert plan_sources(0, SIAConfig(image_drop_prob=1), 0) == SourcePlan((), 0)
    sizes = collections.Counter(len(plan_sources(2, SIAConfig(image_drop_prob=0.2, min_sources=0), s).order)
                                for s in range(4000))
    assert sizes[2] / 4000 == pytest.approx(0.64, abs=0.03)  # (1 - 0.2)^2
    assert sizes[0] / 4000 == pytest.approx(0.04, abs=0.015)  # 0.2^2
    swapped = sum(plan_sources(2, SIAConfig(image_drop_prob=0, shuffle_prob=0.5), s).order == (1, 0)
                  for s in range(4000))
    assert swapped / 4000 == pytest.approx(0.25, abs=0.03)  # shuffled half the time, a 2-permutation swaps half


def test_align_moves_images_sizes_and_text_together() -> None:
    plan = SourcePlan((2, 0), 3)  # keep old 3 then old 1; drop old 2
    assert plan.mapping() == {1: 2, 2: None, 3: 1}
    images, text = align(["a", "b", "c"], "Put the hat from Picture 2 on Picture 3 next to Picture 1", plan)
    assert images == ["c", "a"] and text == "Put the hat on Picture 1 next to Picture 2"
    sizes = plan.apply([Dims(16, 16), Dims(32, 16), Dims(16, 48)])  # bucket slot sizes follow their images
    assert sizes == [Dims(16, 48), Dims(16, 16)]
    same = SourcePlan((0, 1), 2)
    assert align(["a", "b"], "keep Picture 2  as is", same) == (["a", "b"], "keep Picture 2  as is")
    with pytest.raises(ValueError):
        SourcePlan((0, 0), 2)
    with pytest.raises(ValueError):
        plan.apply(["a", "b"])


# ---------------------------------------------------------------- text choice and text drop
def record(sample_id: str, en: str = "Make it red.", cn: str = "变红") -> EditRecord:
    return EditRecord(id=sample_id, target=ImageRef(8, 8, data=b"unused"), instruction=en, instruction_cn=cn)


def test_instruction_choice_is_deterministic_per_seed_sample_and_epoch() -> None:
    config = SIAConfig(text_drop_prob=0.1, seed=3)
    picks = [choose_instruction(record(f"id{i}"), config, epoch=0) for i in range(2000)]
    assert picks == [choose_instruction(record(f"id{i}"), config, epoch=0) for i in range(2000)]
    counts = collections.Counter(picks)
    assert counts[""] / 2000 == pytest.approx(0.1, abs=0.02)
    assert counts["Make it red."] / 2000 == pytest.approx(0.45, abs=0.04)
    next_epoch = [choose_instruction(record(f"id{i}"), config, epoch=1) for i in range(2000)]
    assert next_epoch != picks


def test_text_drop_extremes_and_single_language_samples() -> None:
    assert choose_instruction(record("a"), SIAConfig(text_drop_prob=1.0), 0) == ""
    only_cn = record("b", en="")
    assert {choose_instruction(only_cn, SIAConfig(text_drop_prob=0.0), e) for e in range(20)} == {"变红"}


def test_config_rejects_impossible_probabilities() -> None:
    with pytest.raises(ValueError, match="text_drop_prob"):
        SIAConfig(text_drop_prob=1.5)
    with pytest.raises(ValueError, match="min_sources"):
        SIAConfig(min_sources=-1)


def test_cn_prob_sets_the_share_of_chinese_instructions() -> None:
    from firered_train.data.record import EditRecord, ImageRef
    from firered_train.data.sia import SIAConfig, choose_instruction

    ref = ImageRef(width=8, height=8, data=b"x", name="t")
    record = EditRecord(id="s", sources=(ref,), target=ref, instruction="make it red", instruction_cn="把它变成红色")
    picks = [choose_instruction(record, SIAConfig(text_drop_prob=0.0, cn_prob=0.2), e) for e in range(2000)]
    share = picks.count("把它变成红色") / len(picks)
    assert 0.17 < share < 0.23
    assert {choose_instruction(record, SIAConfig(text_drop_prob=0.0, cn_prob=0.0), e) for e in range(50)} == {
        "make it red"}
    with pytest.raises(ValueError, match="cn_prob"):
        SIAConfig(cn_prob=1.5)
