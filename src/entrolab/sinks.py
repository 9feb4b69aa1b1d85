"""Metric sinks besides ``metrics.jsonl``: TensorBoard, MLflow (local file store) and Weights & Biases.

``pip install 'entrolab[sinks]'`` installs TensorBoard and MLflow, ``pip install 'entrolab[wandb]'`` wandb. A sink
gets every line the trainer writes to metrics.jsonl. TensorBoard appends to ``RUN_DIR/tensorboard`` on resume;
MLflow continues the run whose id is kept in ``RUN_DIR/mlruns/entrolab_run_id``; wandb writes an offline run
under ``RUN_DIR/wandb`` (``wandb sync RUN_DIR/wandb/offline-run-*`` uploads it), with an id derived from the
run folder, so a resumed run's second offline folder (``...-1``) syncs into the same wandb run.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

SinkName = Literal["tensorboard", "mlflow", "wandb"]
SINKS: tuple[str, ...] = get_args(SinkName)


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


def wandb_run_id(run: Path) -> str:
    """A wandb run id for the run folder: its name (``[A-Za-z0-9_-]``, at most 48 characters) and a hash of
    its absolute path, e.g. ``grpo-seed0-3f2a9c1e``; the same folder always gets the same id."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", run.resolve().name).strip("-")[:48] or "run"
    return f"{slug}-{hashlib.sha1(str(run.resolve()).encode()).hexdigest()[:8]}"


class WandbSink:
    """Metrics (under their own names, at the trainer's step) and the run config, through the ``wandb`` library.

    Offline by default: ``WANDB_MODE=offline`` unless ``WANDB_MODE`` (or ``WANDB_DISABLED``) is set, so nothing
    is sent anywhere until ``wandb sync``; the project is ``WANDB_PROJECT`` or ``entrolab``. wandb is kept
    quiet (``WANDB_SILENT`` unless set otherwise) and off the console: no stdout capture, no system-metrics
    sampling, no git, code or requirements snapshot. wandb's service process exits with this process.
    """

    def __init__(self, run: Path, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as e:
            raise ValueError("--log-to wandb needs the wandb package: pip install 'entrolab[wandb]'") from e
        run.mkdir(parents=True, exist_ok=True)
        # Read here, not left to wandb: it reads its environment once per process, at the first wandb.init.
        disabled = os.environ.get("WANDB_DISABLED", "").strip().lower() in ("true", "1", "yes")
        mode = os.environ.get("WANDB_MODE") or ("disabled" if disabled else "offline")
        silent = os.environ.get("WANDB_SILENT", "true").strip().lower() in ("true", "1", "yes")
        settings = wandb.Settings(
            console="off",
            x_disable_stats=True,
            x_disable_meta=True,
            x_disable_machine_info=True,
            disable_git=True,
            save_code=False,
            disable_job_creation=True,
            x_save_requirements=False,
            silent=silent,
        )
        self.run = wandb.init(
            dir=str(run),  # wandb writes into dir/wandb
            project=os.environ.get("WANDB_PROJECT") or "entrolab",
            name=run.resolve().name,
            id=wandb_run_id(run),
            resume="allow",
            config=config,
            mode=mode,
            settings=settings,
            reinit="create_new",
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def make_sinks(names: tuple[str, ...], run: Path, config: dict[str, Any]) -> list[Sink]:
    """The sinks named in ``--log-to``; a missing optional package is a clear error naming the extra."""
    sinks: list[Sink] = []
    for name in names:
        if name == "tensorboard":
            sinks.append(TensorBoardSink(run))
        elif name == "mlflow":
            sinks.append(MLflowSink(run, config))
        elif name == "wandb":
            sinks.append(WandbSink(run, config))
        else:
            raise ValueError(f"unknown log_to sink {name!r}; allowed: {', '.join(SINKS)}")
    return sinks
