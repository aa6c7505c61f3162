"""How llama.cpp's threads behave in this process: set before llama.cpp is first imported.

This build of llama.cpp runs its CPU threads on OpenMP (``llama_print_system_info`` says
``OPENMP = 1``; ``libggml-cpu.so`` links GNU ``libgomp``). libgomp reads its settings once,
when the library is loaded, that is at the first ``import llama_cpp``. By default an OpenMP
thread that waits (at a barrier between graph nodes, or between two forward passes) spins for
a while before it sleeps; two processes doing so on the same cores take turns burning each
other's time (two sessions on two cores: 100 s each spinning, 46 s each passive). The
``PASSIVE`` policy makes a waiting thread sleep at once.

ggml's own threadpool has a similar ``poll`` setting (``ggml_threadpool_params.poll``), but it
is only used when llama.cpp is built without OpenMP; llama-cpp-python does not expose it and
a context built here never creates such a pool. With one thread (what ``n_threads: auto``
chooses for small models on two cores) OpenMP is not entered at all.

A value the user set in the environment always wins (``setdefault``). Standard library only:
the package's ``__init__`` calls :func:`apply_wait_policy`, so every module of the LLM layer
(and anything importing one) has it in place before its first ``import llama_cpp``.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY_DEFAULTS: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_wait_policy() -> dict[str, str]:
    """Set the thread wait policy unless the environment has one; returns what is in force.

    Once ``llama_cpp`` is imported the OpenMP runtime has read its environment, so a change
    after that would not take effect; a late call still sets the variables (child processes
    inherit them) and says so in ``wait_policy_state()``.
    """
    for key, value in WAIT_POLICY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in WAIT_POLICY_DEFAULTS}


def wait_policy_state() -> dict[str, object]:
    """What the threads of this process wait with (for ``models verify`` and ``run --json``)."""
    return {
        **{key.lower(): os.environ.get(key) for key in WAIT_POLICY_DEFAULTS},
        "set_before_llama_cpp": _SET_BEFORE_IMPORT,
    }


_SET_BEFORE_IMPORT = "llama_cpp" not in sys.modules
apply_wait_policy()
