"""The methods of the comparison: the registry, think blocks, the stand-in teacher."""

from __future__ import annotations

import pytest

from flythinker.apps.experiment.methods import BASELINES, get_baseline, profile_teacher, strip_think, with_reasoning
from flythinker.data.longlamp import Example
from flythinker.errors import UserError
from flythinker.evaluate.metrics import score_examples


def test_registry_names_and_unknown_name():
    assert set(BASELINES) == {"nonpers", "rag", "sft", "think_then_generate", "static", "flythinker"}
    assert get_baseline("nonpers").retrieval == "none" and get_baseline("static").model == "static"
    with pytest.raises(UserError, match="unknown method"):
        get_baseline("cot")


def test_think_block_is_stripped_before_scoring():
    ref = "Teach the parser to accept empty lines."
    pred = '<think>\nOpening: "Teach the".\n</think>\nTeach the parser to accept empty lines.'
    assert strip_think(pred) == ref
    assert score_examples([strip_think(pred)], [ref], bertscore=False).rouge1[0] == 1.0
    assert score_examples([pred], [ref], bertscore=False).rouge1[0] < 1.0
    assert strip_think("<think> ran out of tokens") == ""
    assert strip_think("plain answer") == "plain answer"


def test_profile_teacher_reads_the_profile_never_the_output():
    prof = [
        {"title": "a", "text": "Teach foo to bar.\n\nThe foo bar was slow."},
        {"title": "b", "text": "Teach baz the foo bar trick."},
    ]
    ex = Example("e", "u", "q", "SECRET OUTPUT WORDS", prof, "generic")
    plan = profile_teacher(ex)
    assert "SECRET" not in plan and "Teach" in plan and '"foo bar"' in plan
    assert plan == profile_teacher(Example("e", "u", "q", "other output", prof, "generic"))  # deterministic
    wrapped = with_reasoning(ex)
    assert wrapped.output.startswith("<think>\n") and wrapped.output.endswith("</think>\nSECRET OUTPUT WORDS")
    given = with_reasoning(Example("e", "u", "q", "out", prof, "generic", reasoning="my plan"))
    assert strip_think(given.output) == "out" and "my plan" in given.output
