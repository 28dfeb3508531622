"""The config of a pipeline job: an ``ExperimentConfig`` plus a ``pipeline`` section.

The ``pipeline`` section says how the experiment runs (Ray workers, retries,
where MLflow is); everything the model learns from stays in the experiment
part, so ``recsys.train`` and the pipeline read the same YAML files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recsys.experiment import ExperimentConfig


@dataclass
class PipelineConfig:
    # None: $RAY_ADDRESS when set (as under `ray job submit`), else start a local instance;
    # "auto" joins a local instance started with `ray start --head`.
    ray_address: str | None = None
    num_workers: int = 2  # Ray Train workers, one rank each
    use_gpu: bool = False  # NCCL and CUDA on the workers; gloo on CPU otherwise
    max_failures: int = 1  # worker failures survived by restarting from the last checkpoint
    # Only when this job starts its own local Ray instance (ignored when joining a cluster).
    local_num_cpus: int | None = None  # None: max(num_workers, cpu count)
    local_object_store_mb: int = 500
    # None: $MLFLOW_TRACKING_URI when set, else sqlite:///<output_root>/mlflow.db
    tracking_uri: str | None = None
    experiment_name: str = "recsys"
    # None: "<family>-<dataset>", e.g. hstu-synthetic
    registered_model_name: str | None = None
    champion_alias: str = "champion"
    log_every_steps: int = 10  # per-step metrics to MLflow and a progress line to the job log
    system_metrics: bool = True  # CPU/memory/GPU of the driver's node, sampled by MLflow
    # For tests only: rank 1 exits (as a dying worker would) before this global step,
    # once per run; the job must recover from the last checkpoint.
    fail_at_step: int | None = None

    def check(self):
        problems = []
        for key in ("num_workers", "log_every_steps", "local_object_store_mb"):
            if getattr(self, key) < 1:
                problems.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if self.max_failures < 0:
            problems.append(("max_failures", f"must be >= 0, got {self.max_failures}"))
        if self.local_num_cpus is not None and self.local_num_cpus < self.num_workers:
            problems.append(
                (
                    "local_num_cpus",
                    f"{self.local_num_cpus} CPUs cannot hold {self.num_workers} workers",
                )
            )
        if self.fail_at_step is not None and self.fail_at_step < 1:
            problems.append(("fail_at_step", f"must be >= 1 or null, got {self.fail_at_step}"))
        return problems


@dataclass
class RecsysJobConfig(ExperimentConfig):
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def check(self):
        problems = super().check()
        if self.pipeline.fail_at_step is not None and self.pipeline.num_workers < 2:
            problems.append(("pipeline.fail_at_step", "needs num_workers >= 2 (rank 1 exits)"))
        if self.eval.protocol != "A":
            problems.append(
                ("eval.protocol", "the pipeline runs protocol A; use recsys.train for protocol B")
            )
        if 10 not in self.eval.ks:
            problems.append(("eval.ks", "must include 10 (the champion is chosen on NDCG@10)"))
        if not self.pipeline.use_gpu and self.train.weight_decay:
            # The sharded item table trains with fused Adagrad on CPU, which has no weight decay.
            problems.append(
                (
                    "train.weight_decay",
                    "must be 0 when training sharded on CPU (pipeline.use_gpu false)",
                )
            )
        return problems

    def experiment(self) -> ExperimentConfig:
        """The experiment part alone (what the model and ``recsys.train`` see)."""
        fields = {k: getattr(self, k) for k in ExperimentConfig.__dataclass_fields__}
        return ExperimentConfig(**fields)

    @property
    def model_name(self) -> str:
        return self.pipeline.registered_model_name or f"{self.model.family}-{self.data.dataset}"
