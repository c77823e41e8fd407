"""Instruction phrasing: many English and Chinese ways to ask for the same edit.

Every edit op has at least five English and five Chinese templates. A template mixes two kinds of variation:

- ``[a|b|c]`` picks one synonym at random ("[Add|Put|Place] a ..."), so one template is many phrasings;
- ``{slot}`` is filled from the edit (``obj`` = "red circle", ``pos`` = "top left", ...), with ``*_cn`` slots for
  the Chinese names from ``palette``.

The wording never carries information the edit does not have (no "slightly" for a fixed factor that is not
slight), and every slot a template uses is given by the edit maker, which ``phrase`` checks.

Public API: ``phrase``, ``TEMPLATES``, ``expand``.
"""

from __future__ import annotations

import random
import re

_CHOICE = re.compile(r"\[([^\[\]]*)\]")

T = tuple[str, ...]

# op -> (English templates, Chinese templates)
TEMPLATES: dict[str, tuple[T, T]] = {
    "draw": ((
        "Draw {desc} on {bg}.",
        "[Create|Generate|Make] an image of {desc} on {bg}.",
        "{Desc} on {bg}.",
        "[Paint|Render|Draw] {bg} with {desc}.",
        "[An image|A picture|A drawing] showing {desc}, [set against|on] {bg}.",
        "I want {desc} on {bg}.",
    ), (
        "画{desc_cn}，背景为{bg_cn}。",
        "[生成|创作|绘制]一张图：{bg_cn}背景上有{desc_cn}。",
        "在{bg_cn}背景上画{desc_cn}。",
        "一幅画，{desc_cn}，背景是{bg_cn}。",
        "请[画出|生成]{bg_cn}背景上的{desc_cn}。",
    )),
    "add": ((
        "[Add|Put|Place|Draw|Insert] a {size} {obj} [in|at] the {pos}.",
        "[Add|Put|Place] a {size} {obj} [in|at] the {pos} [of the image|of the picture].",
        "[Can you|Please] add a {size} {obj} to the {pos}.",
        "There should be a {size} {obj} in the {pos}.",
        "In the {pos}, [add|draw|place] a {size} {obj}.",
        "Insert a {size} {obj} into the empty {pos} spot.",
    ), (
        "在{pos_cn}[添加|加上|放]一个{size_cn}的{obj_cn}。",
        "[请|帮我]在图片{pos_cn}[画|加]一个{size_cn}的{obj_cn}。",
        "{pos_cn}[添加|增加]一个{size_cn}的{obj_cn}。",
        "给{pos_cn}[加上|放上]一个{size_cn}的{obj_cn}。",
        "在画面的{pos_cn}插入一个{size_cn}{obj_cn}。",
    )),
    "remove": ((
        "[Remove|Delete|Erase] the {obj}.",
        "[Remove|Delete|Erase|Get rid of] the {obj} [in|at] the {pos}.",
        "[Please|Can you] [remove|erase] the {obj} from the [image|picture].",
        "Take the {obj} out of the [image|picture].",
        "Make the {obj} disappear.",
        "The {obj} should be gone; keep everything else.",
    ), (
        "[删除|移除|去掉]{obj_cn}。",
        "[删除|去掉|擦除]{pos_cn}的{obj_cn}。",
        "把图中的{obj_cn}[去掉|删掉]。",
        "[请|帮我]移除画面里的{obj_cn}。",
        "让{obj_cn}消失，其他保持不变。",
    )),
    "replace": ((
        "Replace the {obj} with a {new}.",
        "[Swap|Change|Turn] the {obj} [into|for] a {new}.",
        "[Replace|Substitute] the {obj} [in|at] the {pos} with a {new}.",
        "Put a {new} where the {obj} is.",
        "[Please|Can you] replace the {obj} by a {new}.",
        "Instead of the {obj}, draw a {new}.",
    ), (
        "把{obj_cn}[替换成|换成|改成]{new_cn}。",
        "将{pos_cn}的{obj_cn}替换为{new_cn}。",
        "[用|拿]{new_cn}替换{obj_cn}。",
        "在{obj_cn}的位置画一个{new_cn}。",
        "[请|帮我]把图中的{obj_cn}换成{new_cn}。",
    )),
    "recolor": ((
        "[Make|Turn|Paint] the {obj} {color}.",
        "Change the color of the {obj} to {color}.",
        "[Recolor|Repaint] the {obj} [in|at] the {pos} {color}.",
        "The {obj} should be {color}.",
        "[Please|Can you] change the {obj} to {color}.",
        "Color the {obj} {color} [instead|and keep the rest].",
    ), (
        "把{obj_cn}[改成|变成|涂成]{color_cn}。",
        "将{pos_cn}的{obj_cn}的颜色改为{color_cn}。",
        "[请|帮我]把{obj_cn}染成{color_cn}。",
        "{obj_cn}的颜色换成{color_cn}。",
        "让{obj_cn}变成{color_cn}，其余不变。",
    )),
    "background": ((
        "Change the background to {bg}.",
        "[Replace|Swap] the background with {bg}.",
        "[Make|Set] the background {bg}.",
        "Put the objects on {bg} [instead|background].",
        "[Please|Can you] change the backdrop to {bg}.",
        "Keep the objects, but use {bg} as the background.",
    ), (
        "把背景[换成|改成]{bg_cn}。",
        "将背景替换为{bg_cn}。",
        "[请|帮我]把背景改为{bg_cn}。",
        "背景[换成|变成]{bg_cn}，物体保持不变。",
        "保留所有物体，背景使用{bg_cn}。",
    )),
    "move": ((
        "Move the {obj} to the {pos}.",
        "[Move|Shift|Drag] the {obj} [over |]to the {pos}.",
        "Put the {obj} in the {pos} instead.",
        "[Relocate|Reposition] the {obj} to the {pos} [of the image|].",
        "The {obj} should be in the {pos}.",
        "[Please|Can you] move the {obj} from the {src} to the {pos}.",
    ), (
        "把{obj_cn}[移到|挪到|移动到]{pos_cn}。",
        "将{obj_cn}从{src_cn}移动到{pos_cn}。",
        "[请|帮我]把{obj_cn}放到{pos_cn}。",
        "{obj_cn}应该在{pos_cn}。",
        "把{src_cn}的{obj_cn}挪到{pos_cn}。",
    )),
    "insert": ((
        "Put the {obj} from Picture 2 into the {pos} of Picture 1.",
        "[Take|Copy] the {obj} from Picture 2 and [place|put] it in the {pos} of Picture 1.",
        "Add the {obj} of Picture 2 to Picture 1, in the {pos}.",
        "[Insert|Paste] the {obj} from the second image into the {pos} of the first image.",
        "Picture 1 should also have the {obj} from Picture 2, [in|at] the {pos}.",
        "Combine the pictures: the {obj} from Picture 2 goes [in|at] the {pos} of Picture 1.",
    ), (
        "把图2中的{obj_cn}放到图1的{pos_cn}。",
        "将图2的{obj_cn}[添加|加]到图1的{pos_cn}。",
        "[复制|拿]图2里的{obj_cn}，放在图1的{pos_cn}。",
        "在图1的{pos_cn}加入图2中的{obj_cn}。",
        "把第二张图的{obj_cn}合成到第一张图的{pos_cn}。",
    )),
    "resize": ((
        "Make the {obj} {bigger}.",
        "[Resize|Scale] the {obj} to be {bigger}.",
        "The {obj} should be {bigger}.",
        "[Please|Can you] make the {obj} [in|at] the {pos} {bigger}.",
        "{Grow} the {obj}.",
        "Change the size of the {obj}: {bigger}.",
    ), (
        "把{obj_cn}[变|调]{bigger_cn}。",
        "将{pos_cn}的{obj_cn}{grow_cn}。",
        "[请|帮我]把{obj_cn}{grow_cn}。",
        "{obj_cn}应该{bigger_cn}一些。",
        "调整{obj_cn}的大小，让它变{bigger_cn}一些。",
    )),
    "brightness": ((
        "Make the [image|picture|photo] {brighter}.",
        "{Brighten} the [image|picture].",
        "[Increase|Adjust] the brightness: {brighter}.",
        "The [image|picture] should look {brighter}.",
        "[Please|Can you] make it {brighter}.",
    ), (
        "把图片调{brighter_cn}。",
        "[请|帮我]把画面{brighten_cn}。",
        "调整亮度，让图片{brighter_cn}。",
        "让整张图变得{brighter_cn}。",
        "图片的亮度{brighten_cn}。",
    )),
    "contrast": ((
        "{Raise} the contrast.",
        "[Make|Give] the [image|picture] {more} contrast.",
        "Adjust the contrast: {more}.",
        "The [image|picture] should have {more} contrast.",
        "[Please|Can you] {raise} the contrast of the [image|picture].",
    ), (
        "{raise_cn}对比度。",
        "[请|帮我]{raise_cn}图片的对比度。",
        "把对比度调{more_cn}。",
        "让画面的对比度{more_cn}一些。",
        "调整对比度，{raise_cn}。",
    )),
    "text_replace": ((
        "Replace the text \"{old}\" with \"{word}\".",
        "Change the word \"{old}\" to \"{word}\".",
        "[Rewrite|Edit] the text so it says \"{word}\" instead of \"{old}\".",
        "The text should read \"{word}\", not \"{old}\".",
        "[Swap|Change] \"{old}\" for \"{word}\", keeping the same color and place.",
    ), (
        "把文字“{old}”改成“{word}”。",
        "将“{old}”替换为“{word}”。",
        "[请|帮我]把图中的“{old}”换成“{word}”。",
        "文字应该是“{word}”，而不是“{old}”。",
        "把单词“{old}”[改为|换成]“{word}”，颜色和位置不变。",
    )),
    "text_write": ((
        "Write \"{word}\" in {color} [at|across] the {row}.",
        "[Add|Put] the text \"{word}\" in {color} [at|across] the {row} of the [image|picture].",
        "[Write|Print] the word \"{word}\" [at|along] the {row} in {color} letters.",
        "Add {color} text \"{word}\" to the {row}.",
        "[Please|Can you] write \"{word}\" [at|across] the {row} in {color}.",
    ), (
        "在{row_cn}用{color_cn}写上“{word}”。",
        "[添加|加上]{color_cn}文字“{word}”，放在{row_cn}。",
        "[请|帮我]在图片{row_cn}写“{word}”，颜色为{color_cn}。",
        "在{row_cn}加一行{color_cn}的“{word}”。",
        "{row_cn}写上{color_cn}的单词“{word}”。",
    )),
    "denoise": ((
        "[Remove|Reduce|Clean up] the noise.",
        "Denoise the [image|picture|photo].",
        "The [image|picture] is grainy; [make it clean|remove the grain].",
        "[Please|Can you] get rid of the noise in this [image|picture].",
        "Restore a clean, noise-free version of the [image|picture].",
    ), (
        "去除[图片|画面]中的噪点。",
        "给图片[降噪|去噪]。",
        "[请|帮我]把噪点去掉。",
        "图片有颗粒感，请还原干净的画面。",
        "消除噪声，恢复清晰的图片。",
    )),
    "deblur": ((
        "[Sharpen|Deblur] the [image|picture|photo].",
        "The [image|picture] is blurry; make it sharp.",
        "[Remove|Fix] the blur.",
        "[Please|Can you] make this blurry [image|picture] crisp.",
        "Restore the sharp edges of the [image|picture].",
    ), (
        "[去除|修复]图片的模糊。",
        "让[图片|画面]变清晰。",
        "[请|帮我]把模糊的图片锐化。",
        "图片太模糊了，请恢复清晰的边缘。",
        "去模糊，还原清晰的画面。",
    )),
    "brighten": ((
        "[Fix|Correct] the underexposure.",
        "The [image|photo] is too dark; restore its normal brightness.",
        "[Brighten|Lighten] this underexposed [image|photo].",
        "[Please|Can you] fix the exposure of this dark [image|picture].",
        "Restore the [image|picture] as if it were properly exposed.",
    ), (
        "修复[曝光不足|欠曝]的图片。",
        "图片太暗了，请恢复正常亮度。",
        "[请|帮我]把这张欠曝的照片调亮到正常。",
        "校正曝光，还原正常的画面。",
        "这张图曝光不足，请修复。",
    )),
    "extract": ((
        "[Extract|Isolate|Cut out] the {obj} onto a [blank|plain] white [canvas|background].",
        "Keep only the {obj} and make everything else white.",
        "[Remove|Erase] everything except the {obj}, on a white background.",
        "[Please|Can you] extract the {obj} [in|at] the {pos} onto white.",
        "Show just the {obj} on a [blank|clean] white canvas, in the same place.",
    ), (
        "把{obj_cn}[抠出来|提取出来]，放在白色背景上。",
        "只保留{obj_cn}，其余全部变成白色。",
        "[请|帮我]提取{pos_cn}的{obj_cn}，背景为白色。",
        "去掉除{obj_cn}以外的一切，背景改为纯白。",
        "在空白的白色画布上只显示{obj_cn}，位置不变。",
    )),
    "mirror": ((
        "[Flip|Mirror] the [image|picture] {axis}.",
        "[Make|Give me] a mirror image of the [image|picture], flipped {axis}.",
        "Mirror the [image|picture] {axis}.",
        "[Please|Can you] flip this [image|picture] {axis}.",
        "Show the [image|picture] [as if in a mirror|mirrored], flipped {axis}.",
    ), (
        "把图片{axis_cn}翻转。",
        "[请|帮我]将画面{axis_cn}镜像。",
        "{axis_cn}翻转这张图。",
        "对图片做{axis_cn}镜像翻转。",
        "把画面{axis_cn}镜像一下。",
    )),
    "rotate": ((
        "Rotate the [image|picture] {angle}.",
        "[Turn|Rotate] the [image|picture] by {angle}.",
        "[Please|Can you] rotate this [image|picture] {angle}.",
        "Show the [image|picture] rotated {angle}.",
        "Give the [image|picture] a {angle} rotation.",
    ), (
        "把图片{angle_cn}。",
        "[请|帮我]将画面{angle_cn}。",
        "图片{angle_cn}。",
        "对整张图进行旋转：{angle_cn}。",
        "把这张图{angle_cn}显示。",
    )),
    "posterize": ((
        "Posterize the [image|picture].",
        "[Give|Apply] the [image|picture] a poster style with few color levels.",
        "Reduce the [image|picture] to {levels} levels per color channel.",
        "[Make|Turn] it [into|look like] a posterized print.",
        "[Please|Can you] apply a posterize effect ({levels} levels).",
    ), (
        "给图片加上色调分离效果。",
        "把图片[做成|变成]海报风格，减少颜色层次。",
        "将每个颜色通道减少到{levels}级。",
        "[请|帮我]对画面做色调分离（{levels}级）。",
        "让图片看起来像色调分离的海报。",
    )),
    "outline": ((
        "Turn the [image|picture] into a line drawing.",
        "[Draw|Show] only the outlines, black on white.",
        "[Make|Convert] it [into|to] an outline sketch.",
        "[Please|Can you] render the [image|picture] as black outlines on white paper.",
        "Outline style: black edges, white everywhere else.",
    ), (
        "把图片变成线稿。",
        "只画出轮廓，白底黑线。",
        "[请|帮我]把画面转换成轮廓素描。",
        "将图片渲染为白纸上的黑色轮廓线。",
        "线条风格：黑色边缘，其余为白色。",
    )),
}


def expand(template: str, rng: random.Random) -> str:
    """Replace every ``[a|b|c]`` group with one of its alternatives."""
    return _CHOICE.sub(lambda m: rng.choice(m.group(1).split("|")), template)


def _capitalised(slots: dict[str, str]) -> dict[str, str]:
    """Add ``Slot`` (first letter upper-case) for every ``slot``, for templates that start with one."""
    return {**slots, **{k[:1].upper() + k[1:]: v[:1].upper() + v[1:] for k, v in slots.items()}}


def phrase(op: str, rng: random.Random, **slots: str) -> tuple[str, str]:
    """(English, Chinese) instruction for ``op`` with its slots filled; raises ``KeyError`` for a missing slot."""
    en_templates, cn_templates = TEMPLATES[op]
    filled = _capitalised(slots)
    en = expand(rng.choice(en_templates), rng).format(**filled)
    cn = expand(rng.choice(cn_templates), rng).format(**filled)
    en = en[:1].upper() + en[1:]
    return " ".join(en.split()), cn
