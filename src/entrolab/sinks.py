"""Metric sinks besides ``metrics.jsonl``: TensorBoard and MLflow (local file store), optional extras.

``pip install 'entrolab[sinks]'`` installs both. A sink gets every line the trainer writes to metrics.jsonl.
Both resume: TensorBoard appends to ``RUN_DIR/tensorboard``; MLflow continues the run whose id is kept in
``RUN_DIR/mlruns/entrolab_run_id``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal, Protocol

SinkName = Literal["tensorboard", "mlflow"]


class Sink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    """Scalars under their metric names in ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR``)."""

    def __init__(self, run: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ValueError("--log-to tensorboard needs the tensorboard package: pip install 'entrolab[sinks]'") from e
        self.writer = SummaryWriter(log_dir=str(run / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def mlflow_key(key: str) -> str:
    """MLflow metric names allow [A-Za-z0-9_-. /]: ``eval/pass@1`` becomes ``eval/pass_at_1``."""
    return key.replace("@", "_at_")


class MLflowSink:
    """Metrics (``@`` spelled ``_at_``) and the run config as params, in a local store at ``RUN_DIR/mlruns``."""

    def __init__(self, run: Path, config: dict[str, Any]) -> None:
        try:
            import mlflow
        except ImportError as e:
            raise ValueError("--log-to mlflow needs the mlflow package: pip install 'entrolab[sinks]'") from e
        # MLflow 3 keeps the local file store behind this switch; it is the store that needs no server.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        store = run / "mlruns"
        store.mkdir(parents=True, exist_ok=True)
        self.client = mlflow.tracking.MlflowClient(tracking_uri=store.resolve().as_uri())
        id_file = store / "entrolab_run_id"
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
        else:
            exp = self.client.get_experiment_by_name("entrolab")
            exp_id = exp.experiment_id if exp else self.client.create_experiment("entrolab")
            self.run_id = self.client.create_run(exp_id, run_name=run.name).info.run_id
            id_file.write_text(self.run_id)
            for k, v in config.items():
                self.client.log_param(self.run_id, k, str(v)[:500])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(mlflow_key(k), float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        pass


def make_sinks(names: tuple[str, ...], run: Path, config: dict[str, Any]) -> list[Sink]:
    """The sinks named in ``--log-to``; a missing optional package is a clear error naming the extra."""
    sinks: list[Sink] = []
    for name in names:
        if name == "tensorboard":
            sinks.append(TensorBoardSink(run))
        elif name == "mlflow":
            sinks.append(MLflowSink(run, config))
        else:
            raise ValueError(f"unknown log_to sink {name!r}; allowed: tensorboard, mlflow")
    return sinks
