"""The test lab: hosts (namespace sets) wired by bridges in a switch namespace.

    with Lab() as lab:
        lan = lab.add_switch("lan")
        fw1 = lab.add_host("fw1")
        lab.connect(fw1, "lan", "enp0s3", "192.168.0.1/24")
        fw1.exec(["ip", "-br", "addr"])

See lab/README.md.
"""

from .host import Host, HostCommandError
from .lab import Lab
from .names import LabError

__all__ = ["Lab", "Host", "HostCommandError", "LabError"]
