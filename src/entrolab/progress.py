"""The training progress display: a rich bar, or a plain line every 10 steps when it is off."""

from __future__ import annotations

from typing import Any


class Progress:
    """A rich progress bar with step, reward, entropy and s/step; a plain line every 10 steps when off."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.total, self.start, self.enabled = total, start, enabled
        self.bar = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def update(self, step: int, m: dict[str, float]) -> None:
        info = f"reward {m['reward/mean']:.3f}  entropy {m['entropy/token_mean']:.3f}  {m['time/step']:.2f} s/step"
        if "eval/pass@1" in m:
            info += f"  pass@1 {m['eval/pass@1']:.3f}"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif step % 10 == 0 or step == self.total:
            print(f"step {step}/{self.total}  {info}", flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()


__all__ = ["Progress"]
