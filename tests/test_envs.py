"""The built-in environments: parsing of tool calls, the tools themselves, demonstrations that agree with
their environment, and errors that name what is allowed."""

from __future__ import annotations

import random

import pytest

from entrolab.envs import ENVS, make_env_task, parse_action, play
from entrolab.envs.calc import calculate
from entrolab.envs.grid import GridEnv
from entrolab.tasks import CHARSET


def test_parse_action_answers_calls_and_errors() -> None:
    assert parse_action("answer: 42", ("calc",)).kind == "answer"
    assert parse_action("so answer: 42\n", ("calc",)).args == "42"
    call = parse_action("first multiply: calc(3*4)\n", ("calc",))
    assert (call.kind, call.name, call.args) == ("call", "calc", "3*4")
    assert parse_action("calc 3*4", ("calc",)).kind == "error"
    bad = parse_action("search(x)", ("calc",))
    assert bad.kind == "error" and "unknown tool 'search'" in bad.args


def test_calculator_precedence_and_refusals() -> None:
    assert calculate("23*7+12") == 173
    assert calculate("3-4*2") == -5
    assert calculate("10 - 2 - 3") == 5
    assert calculate("-5+3") == -2
    for bad in ("2**3", "import os", "1/2", ""):
        assert calculate(bad) is None


def test_calc_episode_right_wrong_and_parse_error() -> None:
    task = make_env_task("calc")
    ex = task.train[0]
    env = task.make_env()
    env.reset(ex)
    err = env.step("calc " + ex.get("expression"))
    assert err.observation.startswith("error:") and not err.done and err.info["parse_error"]
    res = env.step(f"calc({ex.get('expression')})\n")
    assert res.observation == f"-> {ex.answer}\n" and res.info["tool_call"] and res.reward == 0
    done = env.step(f"answer: {ex.answer}")
    assert done.done and done.reward == 1.0 and done.info["right"]
    env.reset(ex)
    assert env.step("answer: -999999").reward == 0.0


def test_lookup_needs_every_hop() -> None:
    task = make_env_task("lookup")
    ex = task.train[3]
    facts, rels, who = dict(ex.get("facts")), ex.get("relations"), ex.get("start")
    env = task.make_env()
    env.reset(ex)
    for r in rels:
        obs = env.step(f"search({r} of {who})\n").observation
        who = facts[f"{r} of {who}"]
        assert obs == f"-> {who}\n"
    assert who == ex.answer
    assert env.step("search(boss of nobodyxx)\n").observation == "-> no result\n"
    assert env.step(f"answer: {ex.answer}").reward == 1.0


def test_grid_moves_walls_and_goal() -> None:
    task = make_env_task("grid")
    ex = task.train[0]
    env = GridEnv()
    env.reset(ex)
    start = env.state_key()
    for mv in ex.get("path")[:-1]:
        assert env.step(f"move({mv})\n").observation.startswith("-> at ")
    assert env.state_key() != start
    last = env.step(f"move({ex.get('path')[-1]})\n")
    assert last.done and last.reward == 1.0 and last.info["right"]
    env.reset(ex)
    assert env.step("move(sideways)\n").info["parse_error"]
    # off the map is blocked and the position stays
    r, c = ex.get("start")
    edge = "up" if r == 0 else "down" if r == 3 else "left" if c == 0 else "right" if c == 3 else None
    if edge is not None:
        assert env.step(f"move({edge})\n").observation == "-> blocked\n" and env.state_key() == start


@pytest.mark.parametrize("name", ENVS)
def test_demonstrations_agree_with_their_environment_and_mix(name: str) -> None:
    task = make_env_task(name)
    rng, wins = random.Random(0), 0
    for ex in task.train[:200]:
        segs = task.demo_segments(ex, rng)
        assert segs and segs[0][1], "a demonstration starts with a model turn"
        assert set("".join(t for t, _ in segs)) <= CHARSET
        assert play(task.make_env(), ex, segs) == segs  # the observations are the environment's own
        env = task.make_env()
        env.reset(ex)
        for text, trained in segs:
            if trained:
                res = env.step(text)
        wins += bool(res.info.get("right"))
    assert 0.2 < wins / 200 < 0.6  # imperfect on purpose: right about demo_mix[0] of the time (plus lucky walks)


def test_unknown_env_and_option_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown env 'chess'; built-in envs: \['calc', 'lookup', 'grid'\]"):
        make_env_task("chess")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['depth'\] for env 'lookup'; allowed"):
        make_env_task("lookup", depth=3)
    with pytest.raises(ValueError, match="hops"):
        make_env_task("lookup", hops=(0, 9))


def test_splits_are_seeded_and_disjoint() -> None:
    a, b = make_env_task("lookup", seed=0), make_env_task("lookup", seed=0)
    assert [e.id for e in a.test] == [e.id for e in b.test]
    assert not {e.prompt for e in a.test} & {e.prompt for e in a.train}
