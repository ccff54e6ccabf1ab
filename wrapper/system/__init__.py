"""The operating system's side of a run: child processes (one supervisor), programs (one lookup) and run
directories (owned, swept after a killed run). A boundary package beside ``wrapper.containerd`` and
``wrapper.registry``; it imports only ``wrapper.core``."""
