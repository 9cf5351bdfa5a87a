"""Running images under runc: instances, their monitors, the supervisor, rollouts, exports."""

from noops.runtime.instances import Instance, InstanceManager, InstanceSpec
from noops.runtime.kubernetes import ReleaseInfo, export_manifests, to_yaml, write_manifests
from noops.runtime.local import run_foreground
from noops.runtime.rollout import DeployError, RolloutPlan, rollout
from noops.runtime.supervisor import RouteSink, Slot, Supervisor

__all__ = [
    "DeployError",
    "Instance",
    "InstanceManager",
    "InstanceSpec",
    "ReleaseInfo",
    "RolloutPlan",
    "RouteSink",
    "Slot",
    "Supervisor",
    "export_manifests",
    "rollout",
    "run_foreground",
    "to_yaml",
    "write_manifests",
]
