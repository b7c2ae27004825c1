"""The VMM layer: QEMU command lines, process spawn, QMP and the shutdown ladder.

Like Firecracker's split between its API server and the VMM, nothing here knows
about machine names, the store or users: it takes a :class:`VMSpec`, runs QEMU and
speaks QMP. The engine decides *what* to run; this layer only knows *how*.
"""
