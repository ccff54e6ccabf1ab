"""``soci-wrapper startup``: a container of an image started through containerd and timed, lazily through the
SOCI snapshotter and (``--baseline``) from a full pull; ``--record`` lists the files it opens before it is ready.

run.py is the entry point (``run_startup``); sandbox.py and nsinit.py the namespaces everything runs in;
daemon.py and lazy.py the daemons; rootfs.py the pull into snapshots; spec.py the runtime spec; container.py,
stdio.py and netns.py the container's run and readiness; recorder.py the recorder; meter.py the byte count;
report.py the report.
"""
