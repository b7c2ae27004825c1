"""smolbox: disposable, hardware-isolated Linux microVM sandboxes."""

from smolbox import errors
from smolbox.config import MachineConfig, NetworkPolicy

__all__ = ["MachineConfig", "NetworkPolicy", "errors"]
__version__ = "0.1.0"
