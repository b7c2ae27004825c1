"""The smolbox engine: machine lifecycle, reconcile, snapshots and templates.

Why a package of small modules: lifecycle code touches many host resources
(processes, disks, sockets, network) and each must be cleaned up on every error
path, which is easiest to get right when every module owns one job. The state
machine lives in :mod:`smolbox.store.states` so transitions are checked in one
place; the store (:mod:`smolbox.store`) applies that check inside its write
transaction, making it the single enforcement point across processes.
"""
