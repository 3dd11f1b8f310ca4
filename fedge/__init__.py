"""fedge: edge-and-cloud federated learning on Flower."""

import os as _os

# Before anything imports grpc. With gRPC's fork support left at its default, a process that has
# used gRPC and then forks to exec (subprocess with preexec_fn, as fedge's simulator does) loses
# about one child in five to a crash before exec (SIGSEGV, or "epoll_wait: Bad file descriptor";
# grpc/grpc#43055, measured here with grpcio 1.85). fedge forks only to exec (daemons, relays, run
# workers, export workers), so it needs no fork support. "0" rather than "false": both stop the
# crash, but "false" leaves gRPC core logging a line on every fork. A value the user set wins.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

__version__ = "0.1.0"
