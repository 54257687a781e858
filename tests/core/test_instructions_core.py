"""core/instructions.py: line parsing, spans, strengths, and the exactness of the per-token math."""
import pytest
import torch

from kontext_sliders.core.instructions import (InstructionSpans, leave_one_out_prompts, parse_strengths,
                                               spans_from_lines, split_instructions)
from kontext_sliders.core.knobs.guidance import combine_instruction_guidance
from kontext_sliders.core.knobs.toward_pad import lerp_toward_pad, toward_pad_plan
from kontext_sliders.core.knobs.guidance import GUIDANCE_RANGE
from kontext_sliders.core.instructions import MAX_INSTRUCTIONS
from kontext_sliders.core.knobs.toward_pad import SLIDER_RANGE


def test_lines_and_leave_one_out_prompts():
    lines = split_instructions("  a b \n\n c\r\n   \nd e f\n")
    assert lines == ["a b", "c", "d e f"]
    assert leave_one_out_prompts(lines) == ["c d e f", "a b d e f", "a b c"]
    assert leave_one_out_prompts(["only"]) == [""]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\v", "\f", "\x1c", "\x85", "\r"])
def test_only_newlines_split_sub_instructions(separator):
    # invisible or legacy separators stay inside the line they appear in (str.splitlines would split there)
    assert split_instructions(f"make the sky{separator}stormy\nturn the car red") == [
        f"make the sky{separator}stormy", "turn the car red"]


def test_sub_instruction_count_is_capped_with_a_clear_error():
    assert len(split_instructions("\n".join(f"line {i}" for i in range(MAX_INSTRUCTIONS)))) == MAX_INSTRUCTIONS
    assert MAX_INSTRUCTIONS >= 32
    with pytest.raises(ValueError, match=f"{MAX_INSTRUCTIONS + 1} sub-instructions: at most {MAX_INSTRUCTIONS}"):
        split_instructions("\n".join(f"line {i}" for i in range(MAX_INSTRUCTIONS + 1)))
    with pytest.raises(ValueError, match="5000 sub-instructions"):
        split_instructions("x\n" * 5000)


def test_spans_from_lines_and_their_failures():
    full = [(5, 1.0), (6, 1.0), (7, 1.2), (8, 1.0)]
    assert spans_from_lines(full, [full[:2], full[2:3], full[3:]], ["x", "y", "z"]) == [(0, 2), (2, 3), (3, 4)]
    with pytest.raises(ValueError, match="could not locate line 2"):  # same token, another weight
        spans_from_lines(full, [full[:2], [(7, 1.0)], full[3:]], ["x", "y", "z"])
    with pytest.raises(ValueError, match="line 2 .* tokenises to nothing"):
        spans_from_lines(full, [full[:2], [], full[2:]], ["x", "", "z"])
    with pytest.raises(ValueError, match="lines account for 3"):
        spans_from_lines(full, [full[:2], full[2:3]], ["x", "y"])


def test_parse_strengths():
    assert parse_strengths(" 1, 0.5 ,-1", 3) == [1.0, 0.5, -1.0]
    assert parse_strengths("1;0", 2) == [1.0, 0.0]
    assert parse_strengths("+1.5, .5, 2e0", 3) == [1.5, 0.5, 2.0]
    with pytest.raises(ValueError, match=r"1 value\(s\) given but the prompt has 2 .*'a'; 'b'"):
        parse_strengths("1", 2, ["a", "b"])
    for bad in ("x", "nan", "inf", "1_0", "0x1", "1e", "--1", "1.2.3", "１"):  # strict: float() reads 1_0 as 10
        with pytest.raises(ValueError, match="not a number"):
            parse_strengths(f"1, {bad}", 2)


@pytest.mark.parametrize("accepted", [SLIDER_RANGE, GUIDANCE_RANGE])
def test_strengths_outside_the_knobs_range_name_value_line_and_range(accepted):
    low, high = accepted
    assert parse_strengths(f"{low}, {high}", 2, ["a", "b"], accepted) == [low, high]
    for value in ("1e30", "1e300", str(high + 0.01), str(low - 0.01)):
        with pytest.raises(ValueError) as info:
            parse_strengths(f"1, {value}", 2, ["make the sky stormy", "turn the car red"], accepted, "Knob strengths")
        message = str(info.value)
        assert value in message and "line 2 ('turn the car red')" in message
        assert f"{low:g} ... {high:g}" in message and message.startswith("Knob strengths")


def test_toward_pad_math_is_exact_at_zero_and_one():
    spans = InstructionSpans(("a", "b"), ((0, 3), (3, 5)), pad_index=6, length=10)
    txt = torch.randn(2, 10, 8, dtype=torch.bfloat16)
    index, weight = toward_pad_plan(spans, [1.0, 0.0])
    out = lerp_toward_pad(txt, index.expand(2, -1), weight.expand(2, -1).unsqueeze(-1))
    assert torch.equal(out[:, :3], txt[:, :3]) and torch.equal(out[:, 5:], txt[:, 5:])  # untouched, bit for bit
    assert torch.equal(out[:, 3:5], txt[:, 6:7].expand(-1, 2, -1))  # exactly the pad state
    index, weight = toward_pad_plan(spans, [0.25, 2.0])
    out = lerp_toward_pad(txt.float(), index.expand(2, -1), weight.expand(2, -1).unsqueeze(-1))
    pad = txt[:, 6:7].float()
    torch.testing.assert_close(out[:, :3], pad + 0.25 * (txt[:, :3].float() - pad))
    torch.testing.assert_close(out[:, 3:5], pad + 2.0 * (txt[:, 3:5].float() - pad))
    with pytest.raises(ValueError, match="no pad token"):
        toward_pad_plan(InstructionSpans(("a",), ((0, 3),), None, 3), [0.5])


def test_guidance_combination():
    full, w1, w2 = torch.randn(3, 4, 5).unbind(0)
    assert combine_instruction_guidance(full, [w1, w2], [1.0, 1.0]) is full
    torch.testing.assert_close(combine_instruction_guidance(full, [w1, w2], [0.0, 1.0]), w1)
    torch.testing.assert_close(combine_instruction_guidance(full, [w1, w2], [2.0, 0.5]),
                               full + (full - w1) - 0.5 * (full - w2))
