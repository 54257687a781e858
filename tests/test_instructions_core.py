"""core/instructions.py: line parsing, spans, strengths, and the exactness of the per-token math."""
import pytest
import torch

from kontext_sliders.core.instructions import (InstructionSpans, combine_instruction_guidance, leave_one_out_prompts,
                                               lerp_toward_pad, parse_strengths, spans_from_prefixes,
                                               split_instructions, toward_pad_plan)


def test_lines_and_leave_one_out_prompts():
    lines = split_instructions("  a b \n\n c\n   \nd e f\n")
    assert lines == ["a b", "c", "d e f"]
    assert leave_one_out_prompts(lines) == ["c d e f", "a b d e f", "a b c"]
    assert leave_one_out_prompts(["only"]) == [""]


def test_spans_from_prefixes_and_their_failures():
    full = [(5, 1.0), (6, 1.0), (7, 1.2), (8, 1.0)]
    assert spans_from_prefixes(full, [full[:2], full[:3], full], ["x", "y", "z"]) == [(0, 2), (2, 3), (3, 4)]
    with pytest.raises(ValueError, match="could not locate line 2"):
        spans_from_prefixes(full, [full[:2], [(5, 1.0), (6, 1.0), (7, 1.0)], full], ["x", "y", "z"])
    with pytest.raises(ValueError, match="line 2 .* tokenises to nothing"):
        spans_from_prefixes(full, [full[:2], full[:2], full], ["x", "", "z"])


def test_parse_strengths():
    assert parse_strengths(" 1, 0.5 ,-2", 3) == [1.0, 0.5, -2.0]
    assert parse_strengths("1;0", 2) == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"strengths has 1 value\(s\) but the prompt has 2 .*'a'; 'b'"):
        parse_strengths("1", 2, ["a", "b"])
    with pytest.raises(ValueError, match="not a number"):
        parse_strengths("1, x", 2)
    with pytest.raises(ValueError, match="not a finite"):
        parse_strengths("nan, 1", 2)


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
