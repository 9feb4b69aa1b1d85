"""A replay buffer of whole trajectories for self-imitation (SPEAR, arXiv:2509.22601), and its baseline FIFO.

Rows are kept as tensors keyed by name (``prompt_ids``, ``prompt_mask``, ``response_ids``, ``attention_mask``,
``loss_mask``, ``old_logp``, ``old_entropy``, ``rewards``, ``advantages``, ``truncated``, ``tool_calls``, any
extra ``[B, T]`` field): batches of different widths are padded to the widest, keys starting with ``prompt_``
on the left, every other key on the right, with 0 (``step_ids`` and ``state_ids``: -1; see ``pad``). The
buffer decides only what is held: ``add`` admits rows with A > 0 and enough tool calls, drops rows more than
``tolerate_steps`` behind the newest held one, then the oldest beyond ``capacity``. When to replay, how many
rows and with which advantages is the method's (``entrolab.methods.spear_sil``); the trainer composes them.

Eviction follows ``TrajectoryBufferBatch`` (``verl/verl/trainer/ppo/ray_trainer_hybrid.py``): stale rows are
dropped relative to the newest row held *before* the new ones arrive (``remove_old`` runs before
``update_batch``), so rows up to ``tolerate_steps + 1`` behind the newest can be held; the baseline FIFO drops
whole oldest batches while it holds more than ``baseline_capacity`` means, before appending the new batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Rows = dict[str, torch.Tensor]
STATE_FORMAT = 1


class ReplayBuffer:
    """Trajectories kept for replay, with the step each was added at, plus the FIFO of group-mean rewards."""

    def __init__(
        self,
        *,
        capacity: int | None = None,
        tolerate_steps: int = 10,
        min_tool_calls: int = 1,
        baseline_capacity: int = 10240,
        pad: Mapping[str, float] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        """``capacity``: the most rows held (None: no cap); ``pad``: per-key padding values (default 0;
        ``step_ids``/``state_ids`` -1); rows are stored on ``device``."""
        if capacity is not None and capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1 or None, got {capacity}")
        if tolerate_steps < 0 or min_tool_calls < 0 or baseline_capacity < 1:
            raise ValueError(
                "replay buffer needs tolerate_steps >= 0, min_tool_calls >= 0, baseline_capacity >= 1, got "
                f"{tolerate_steps}, {min_tool_calls}, {baseline_capacity}"
            )
        self.capacity, self.tolerate_steps, self.min_tool_calls = capacity, tolerate_steps, min_tool_calls
        self.baseline_capacity = baseline_capacity
        self.pad = {"step_ids": -1.0, "state_ids": -1.0, **(pad or {})}
        self.device = torch.device(device)
        self.clear()
        self._baseline: list[torch.Tensor] = []  # one [P] float64 chunk per add_baseline call, oldest first

    # ---- trajectories -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._steps.numel())

    @property
    def steps(self) -> torch.Tensor:
        """``[N]`` long: the step each held row was added at, oldest first."""
        return self._steps

    def rows(self) -> Rows:
        """Every held row, oldest first (the stored tensors: do not modify them)."""
        return dict(self._rows)

    def clear(self) -> None:
        """Drop every held row (the code's ``reset_buffer`` after a replay); the baseline FIFO stays."""
        self._rows: Rows = {}
        self._steps = torch.zeros(0, dtype=torch.long, device=self.device)

    def add(self, rows: Mapping[str, torch.Tensor], step: int, keep: torch.Tensor | None = None) -> int:
        """Evict stale rows, admit ``rows`` (``[B, ...]`` each) with keep & A > 0 & tool_calls >= min, evict the
        oldest beyond capacity; returns the number admitted. A row's A > 0 is ``advantages.mean(-1) > 0`` for
        ``[B, T]`` / ``[B, 1]`` advantages (the code's test), ``advantages > 0`` for ``[B]``."""
        rows = {k: v.detach().to(self.device) for k, v in rows.items()}
        if "advantages" not in rows or (self.min_tool_calls > 0 and "tool_calls" not in rows):
            raise ValueError(f"replay rows need 'advantages' and 'tool_calls', got keys {sorted(rows)}")
        adv = rows["advantages"]
        batch = adv.shape[0]
        if any(v.shape[0] != batch for v in rows.values()):
            raise ValueError(f"replay rows must share the batch size {batch}: {self._shapes(rows)}")
        admit = (adv.reshape(batch, -1).float().mean(-1) if adv.dim() > 1 else adv) > 0  # [B]
        if self.min_tool_calls > 0:
            admit &= rows["tool_calls"] >= self.min_tool_calls
        if keep is not None:
            admit &= keep.to(device=self.device, dtype=torch.bool)
        if self._rows and set(rows) != set(self._rows):
            raise ValueError(f"replay rows have keys {sorted(rows)}, the buffer holds {sorted(self._rows)}")
        if len(self):  # remove_old: relative to the newest row held before this batch
            self._select((self._steps - self._steps.max()).abs() <= self.tolerate_steps)
        n = int(admit.sum())
        if n:
            new = {k: v[admit] for k, v in rows.items()}
            if self._rows:
                new = {k: self._cat(k, self._rows[k], v) for k, v in new.items()}
            self._rows = new
            self._steps = torch.cat([self._steps, torch.full((n,), int(step), dtype=torch.long, device=self.device)])
        if self.capacity is not None and len(self) > self.capacity:
            self._select(torch.arange(len(self), device=self.device) >= len(self) - self.capacity)  # the newest
        return n

    def sample(self, n: int, generator: torch.Generator | None = None) -> Rows | None:
        """``n`` distinct held rows in random order (``torch.randperm`` from ``generator``), None when fewer are
        held or ``n < 1``. ``sample(len(buf), g)`` is every row, shuffled, as the code's replay draws them."""
        if n < 1 or n > len(self):
            return None
        idx = torch.randperm(len(self), generator=generator)[:n].to(self.device)
        return {k: v[idx] for k, v in self._rows.items()}

    def _select(self, which: torch.Tensor) -> None:
        self._rows = {k: v[which] for k, v in self._rows.items()} if bool(which.any()) else {}
        self._steps = self._steps[which]

    def _cat(self, key: str, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        if old.dim() != new.dim() or old.shape[2:] != new.shape[2:]:
            raise ValueError(f"replay key {key!r}: held shape {tuple(old.shape)} cannot take {tuple(new.shape)}")
        if old.dim() >= 2 and old.shape[1] != new.shape[1]:
            width = max(old.shape[1], new.shape[1])
            old, new = self._widen(key, old, width), self._widen(key, new, width)
        return torch.cat([old, new.to(old.dtype)])

    def _widen(self, key: str, x: torch.Tensor, width: int) -> torch.Tensor:
        """``x [B, T, ...]`` padded to ``[B, width, ...]``: on the left for ``prompt_*`` keys, else on the right."""
        extra = width - x.shape[1]
        if extra == 0:
            return x
        fill = torch.full((x.shape[0], extra, *x.shape[2:]), self.pad.get(key, 0.0), device=x.device).to(x.dtype)
        return torch.cat([fill, x] if key.startswith("prompt_") else [x, fill], dim=1)

    @staticmethod
    def _shapes(rows: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in rows.items()}

    # ---- baseline FIFO D_R --------------------------------------------------------------------------------

    def add_baseline(self, group_means: torch.Tensor) -> None:
        """Append one batch of per-group mean rewards ``[P]``, first dropping the oldest batches while more than
        ``baseline_capacity`` means are held (the code's order, so it may hold up to capacity + P)."""
        while self._baseline and sum(c.numel() for c in self._baseline) > self.baseline_capacity:
            self._baseline.pop(0)
        chunk = group_means.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
        if chunk.numel():
            self._baseline.append(chunk)

    def baseline(self) -> torch.Tensor:
        """``[M]`` float64: every held group-mean reward, oldest first."""
        return torch.cat(self._baseline) if self._baseline else torch.zeros(0, dtype=torch.float64)

    def p50(self) -> float | None:
        """The median of D_R (linear interpolation, as ``np.percentile``); None while it is empty."""
        held = self.baseline()
        return float(torch.quantile(held, 0.5)) if held.numel() else None

    # ---- checkpoint ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Plain tensors, ints and lists (``torch.load(weights_only=True)`` reads it back)."""
        return {
            "format": STATE_FORMAT,
            "rows": {k: v.cpu().clone() for k, v in self._rows.items()},
            "steps": self._steps.cpu().clone(),
            "baseline": [c.clone() for c in self._baseline],
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore what :meth:`state_dict` returned (the options stay those of the constructor)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"replay buffer state format {state.get('format')!r}, expected {STATE_FORMAT}")
        rows, steps = dict(state["rows"]), state["steps"]
        if any(v.shape[0] != steps.numel() for v in rows.values()) or (steps.numel() and not rows):
            raise ValueError(f"replay buffer state: {steps.numel()} steps for rows {self._shapes(rows)}")
        self._rows = {k: v.to(self.device) for k, v in rows.items()}
        self._steps = steps.to(device=self.device, dtype=torch.long)
        self._baseline = [c.to(dtype=torch.float64) for c in state["baseline"]]


__all__ = ["ReplayBuffer", "Rows"]
