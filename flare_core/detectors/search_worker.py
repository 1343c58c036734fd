"""A worker process of the subspace search (:mod:`.execution`): ``python3 -m flare_core.detectors.search_worker``.

Reads ``(function, arguments)`` pickles from stdin, one at a time, and writes ``(True, result)`` or
``(False, exception)`` for each to stdout, until stdin closes.  Its parent is the only writer of its stdin
(the pickles come from the process that started it, never from a file or a user).  Anything the task
prints goes to stderr, so it cannot corrupt the stream of results.
"""
from __future__ import annotations

import pickle
import sys


def serve(inp, out) -> None:
    """Answer every task read from the binary stream ``inp`` on the binary stream ``out``."""
    while True:
        try:
            fn, args = pickle.load(inp)
        except EOFError:
            return
        try:
            reply = (True, fn(*args))
        except Exception as exc:  # sent back and raised in the parent, at that task's turn
            reply = (False, exc)
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an unpicklable result or exception
            data = pickle.dumps((False, RuntimeError(f"the worker could not send its result back: {exc!r}")))
        out.write(data)
        out.flush()


if __name__ == "__main__":
    results = sys.stdout.buffer
    sys.stdout = sys.stderr
    serve(sys.stdin.buffer, results)
