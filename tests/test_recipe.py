"""Tests for asr/recipe.py: stages run in order, only the selected range, and a bad range is
refused before anything runs."""

from __future__ import annotations

import pytest

from asr.recipe import run_stages


def stages(ran: list[str]) -> list:
    return [(name, lambda name=name: ran.append(name)) for name in ("a", "b", "c", "d")]


def test_only_the_selected_stages_run_in_order(capsys):
    ran: list[str] = []
    assert run_stages(stages(ran), 2, 3) == 0
    assert ran == ["b", "c"]
    assert "== stage 2: b" in capsys.readouterr().out


@pytest.mark.parametrize(("first", "last"), [(0, 2), (3, 2), (1, 5)])
def test_a_range_outside_the_recipe_is_refused_before_anything_runs(first, last):
    ran: list[str] = []
    with pytest.raises(SystemExit, match="--stop-stage <= 4"):
        run_stages(stages(ran), first, last)
    assert ran == []
