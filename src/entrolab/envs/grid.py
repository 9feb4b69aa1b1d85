"""``grid``: walk to the goal of a small map, one ``move(up|down|left|right)`` per turn.

The prompt shows the map (``#`` walls, ``S`` start, ``G`` goal, rows top to bottom, positions ``row,col``
from 0). Each move answers ``-> at r,c``, or ``-> blocked`` into a wall or off the map; reaching the goal
ends the episode with reward 1; ``max_turns`` moves without it end it with 0. The state of a turn is the
position, so trajectories of a group that reach the same cell share a state (GiGPO's anchor states).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from entrolab.envs import EnvTask, StepResult, parse_action, play
from entrolab.tasks import Example, check_demo_mix, check_range, draw_demo_kind

MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


def _path(rows: list[str], start: tuple[int, int], goal: tuple[int, int]) -> list[str] | None:
    """The moves of a shortest path (breadth-first, moves tried in MOVES order), or None."""
    n, m = len(rows), len(rows[0])
    prev: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            out = []
            while prev[cell] is not None:
                cell, mv = prev[cell]  # type: ignore[misc]
                out.append(mv)
            return out[::-1]
        for mv, (dr, dc) in MOVES.items():
            r, c = cell[0] + dr, cell[1] + dc
            if 0 <= r < n and 0 <= c < m and rows[r][c] != "#" and (r, c) not in prev:
                prev[(r, c)] = (cell, mv)
                queue.append((r, c))
    return None


@dataclass(frozen=True)
class GridConfig:
    """Small maps with walls."""

    size: int = 4
    """Rows and columns of the map."""
    walls: tuple[int, int] = (2, 4)
    """Inclusive range of the number of walls."""
    path_length: tuple[int, int] = (2, 5)
    """Inclusive range of the shortest path's moves."""
    test_size: int = 128
    """Problems in the test split."""
    max_train: int = 20_000
    """At most this many problems in the train split."""
    max_turns: int = 8
    """Moves per episode before it ends without reaching the goal."""
    demo_mix: tuple[float, float, float] = (0.3, 0.5, 0.2)
    """Fractions of right (shortest path), wrong (random walk) and badly formatted demonstrations."""

    def __post_init__(self) -> None:
        check_range("walls", self.walls, 0, self.size * self.size - 2)
        check_range("path_length", self.path_length, 1, 4 * self.size)
        if not 2 <= self.size <= 8 or self.test_size < 1 or self.max_train < 1 or self.max_turns < 1:
            raise ValueError(
                "size must be in [2, 8] and test_size, max_train, max_turns >= 1, got "
                f"{self.size}, {self.test_size}, {self.max_train}, {self.max_turns}"
            )
        check_demo_mix(self.demo_mix)


class GridEnv:
    """One walk on one map."""

    def reset(self, example: Example, seed: int = 0) -> str:
        self.example, self.rows = example, list(example.get("rows"))
        self.pos, self.goal = tuple(example.get("start")), tuple(example.get("goal"))
        return example.prompt

    def step(self, action: str) -> StepResult:
        act = parse_action(action, ("move",))
        if act.kind == "answer":
            return StepResult("error: move with move(up|down|left|right)\n", info={"parse_error": True})
        if act.kind == "error" or act.args not in MOVES:
            return StepResult("error: expected move(up|down|left|right)\n", info={"parse_error": True})
        dr, dc = MOVES[act.args]
        r, c = self.pos[0] + dr, self.pos[1] + dc
        n = len(self.rows)
        if not (0 <= r < n and 0 <= c < n) or self.rows[r][c] == "#":
            return StepResult("-> blocked\n", info={"tool_call": True, "valid": True})
        self.pos = (r, c)
        if self.pos == self.goal:
            return StepResult("", 1.0, True, {"right": True, "tool_call": True, "valid": True})
        return StepResult(f"-> at {r},{c}\n", info={"tool_call": True, "valid": True})

    def state_key(self) -> str:
        return f"{self.pos[0]},{self.pos[1]}"


class GridTask(EnvTask):
    name = "grid"
    config_class = GridConfig

    def __init__(self, config: GridConfig | None = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        self.max_turns = self.config.max_turns

    @staticmethod
    def generate(config: GridConfig, rng: random.Random) -> list[Example]:
        n, out = config.size, []
        cells = [(r, c) for r in range(n) for c in range(n)]
        for _ in range(20 * (config.test_size + config.max_train)):
            start, goal, *walls = rng.sample(cells, 2 + rng.randint(*config.walls))
            rows = ["".join("#" if (r, c) in walls else "." for c in range(n)) for r in range(n)]
            path = _path(rows, start, goal)
            if path is None or not config.path_length[0] <= len(path) <= config.path_length[1]:
                continue
            shown = [list(row) for row in rows]
            shown[start[0]][start[1]], shown[goal[0]][goal[1]] = "S", "G"
            text = "\n".join("".join(row) for row in shown)
            prompt = f"map:\n{text}\nat {start[0]},{start[1]}. reach G.\n"
            data = (("rows", tuple(rows)), ("start", start), ("goal", goal), ("path", tuple(path)))
            out.append(Example(id=f"grid:{text}", prompt=prompt, answer=" ".join(path), data=data))
            if len(out) >= config.test_size + config.max_train:
                break
        return out

    def make_env(self) -> GridEnv:
        return GridEnv()

    def demo_segments(self, example: Example, rng: random.Random) -> list[tuple[str, bool]]:
        kind, path = draw_demo_kind(rng, self.config.demo_mix), list(example.get("path"))
        if kind == "right":
            moves = path
        else:  # a correct start, then a random walk
            moves = path[: rng.randrange(len(path))]
            moves += [rng.choice(list(MOVES)) for _ in range(self.config.max_turns - len(moves))]
        turns = [f"move({m})\n" for m in moves]
        if kind == "format_error":
            turns.insert(rng.randrange(len(turns)), f"go {rng.choice(list(MOVES))}\n")
        return play(self.make_env(), example, [(t, True) for t in turns[: self.config.max_turns]])


__all__ = ["MOVES", "GridConfig", "GridEnv", "GridTask"]
