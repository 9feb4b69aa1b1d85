"""SPA's progress estimator (arXiv:2505.20732): a linear head on the policy's hidden states at each step's end.

The estimator maps the state after each step to a contribution c_t and is trained so that, over a trajectory,
sum_t c_t matches the final reward R (``entrolab.methods.spa.progress_loss``). Its contributions, detached, are
the ``progress`` input of the ``spa`` advantage.

It reads the behaviour policy's last-layer hidden states ``[B, T, d]`` (the ``hidden_states`` need), detached:
only the head learns. The released code (``prm/train_our_progress_model.py``) instead puts Linear(vocab, 1) on
the *vocabulary logits* of a copy of the SFT agent and fine-tunes the whole copy (lr 3e-6, one epoch over the
explored trajectories); a head on hidden states needs no second model and no backbone update.
"""

from __future__ import annotations

import torch

from entrolab.methods.spa import progress_loss, step_end_mask


class ProgressEstimator(torch.nn.Module):
    """c_t = w . h_t + b at the last model token of each step, h_t the policy's detached hidden state there.

    Example:
        >>> torch.manual_seed(0) and None
        >>> est = ProgressEstimator(4)
        >>> h, ids = torch.randn(1, 5, 4), torch.tensor([[0, 0, -1, 1, 1]])
        >>> c = est.contributions(h, ids, (ids >= 0).float())
        >>> (c[0, [0, 2, 3]] == 0).all().item(), (c[0, [1, 4]] != 0).all().item()
        (True, True)
    """

    def __init__(self, hidden_size: int) -> None:
        """A ``Linear(hidden_size, 1)`` head in float32 (PyTorch's default initialisation)."""
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"ProgressEstimator hidden_size must be >= 1, got {hidden_size}")
        self.head = torch.nn.Linear(hidden_size, 1)

    def contributions(self, hidden_states: torch.Tensor, step_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """c_t on the last model token of each step, 0 elsewhere (with grad through the head).  [B, T]

        Args:
            hidden_states: ``[B, T, d]`` the policy's last-layer hidden states at the response tokens (detached
                here; read only at step ends, so values elsewhere, even nan, change nothing).
            step_ids: ``[B, T]`` long, the step (turn) of each model token, -1 elsewhere.
            mask: ``[B, T]`` 1 on model tokens; ``step_ids`` count only there.
        """
        ends = step_end_mask(torch.where(mask.bool(), step_ids, -1))  # [B, T]
        w = self.head.weight
        out = torch.zeros(ends.shape, dtype=w.dtype, device=w.device)  # [B, T]
        values = self.head(hidden_states.detach()[ends].to(w.dtype)).squeeze(-1)  # [N] step ends, row-major
        return out.masked_scatter(ends, values)

    def forward(self, hidden_states: torch.Tensor, step_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`contributions`."""
        return self.contributions(hidden_states, step_ids, mask)

    def fit_step(
        self,
        hidden_states: torch.Tensor,
        step_ids: torch.Tensor,
        mask: torch.Tensor,
        rewards: torch.Tensor,
        optimizer: torch.optim.Optimizer,
    ) -> dict[str, float]:
        """One gradient step of ``progress_loss`` (mean over trajectories of (sum_t c_t - R)^2) on this batch.

        ``rewards [B]`` are the final episode rewards; ``optimizer`` holds this module's parameters. Returns the
        metrics as floats, measured before the step: ``spa/estimator_loss`` and ``spa/progress_sum_mean``.
        A batch without any step leaves the parameters as they are.
        """
        optimizer.zero_grad(set_to_none=True)
        contrib = self.contributions(hidden_states, step_ids, mask)  # [B, T]
        loss, metrics = progress_loss(contrib, step_ids, rewards, mask)
        if bool((torch.where(mask.bool(), step_ids, -1) >= 0).any()):
            loss.backward()
            optimizer.step()
        return {key: float(value) for key, value in metrics.items()}


__all__ = ["ProgressEstimator"]
