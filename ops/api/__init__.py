"""The control plane: the supervisor of pipeline processes, batch runs and cron schedules."""

from ops.api._schedule import Scheduler
from ops.api._supervisor import (
    PipelineStatus,
    ProcessInfo,
    RunRecord,
    Supervisor,
    SupervisorError,
    SupervisorSettings,
)

__all__ = [
    "PipelineStatus",
    "ProcessInfo",
    "RunRecord",
    "Scheduler",
    "Supervisor",
    "SupervisorError",
    "SupervisorSettings",
]
