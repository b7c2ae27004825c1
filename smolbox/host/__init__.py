"""Host probing: process identity, the KVM probe, accelerator choice and doctor checks.

Why a separate package: everything here asks the *host* a question (is this pid
still our QEMU? can KVM really run a guest? is qemu installed?) and must answer
from measurements at run time, never from assumptions written into the code.
"""
