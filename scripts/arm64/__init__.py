"""The arm64 check: run the runtime's artifacts under qemu-user as arm64 CPUs and compare their
vectors with the same artifacts run natively on this x86 host (scripts/check-arm64.sh).

``texts`` picks the small text set, ``emulator`` runs Python in the arm64 root that
scripts/setup-arm64.sh builds, ``guest`` is what runs inside it, ``check`` is the host-side command.
"""
