"""KubeKVM: lab virtual machines for university courses.

A teacher declares a *lab* (a name, a VM template and a number of replicas); the platform
keeps one VM per replica on the KVM hosts, through an agent on each host.
"""

__version__ = "0.1.0"
