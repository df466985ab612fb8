"""Ctrl-C always stops a command: also when Python swallows it inside a garbage-collection callback."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_an_interrupt_swallowed_by_a_weakref_callback_is_raised_again_quietly():
    out = _run("""
        import gc, os, signal, sys, time, weakref
        from sycam.cli import insistent_interrupt

        class Thing:
            pass

        def callback(_ref):  # what SQLAlchemy's class registry does when a mapped class dies
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the SIGINT's handler runs here, inside the callback: Python swallows it

        try:
            with insistent_interrupt():
                thing = Thing()
                ref = weakref.ref(thing, callback)
                del thing
                gc.collect()
                t0 = time.monotonic()
                while time.monotonic() - t0 < 20:  # the run that would have gone on
                    time.sleep(0.01)
                print("not interrupted")
        except KeyboardInterrupt:
            print(f"interrupted after {time.monotonic() - t0:.2f} s")
    """)
    assert out.stdout.startswith("interrupted after 0.0"), out
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr


def test_other_unraisable_errors_are_still_reported_and_handlers_restored():
    out = _run("""
        import gc, signal, sys, weakref
        from sycam.cli import insistent_interrupt

        class Thing:
            pass

        before = signal.getsignal(signal.SIGINT), sys.unraisablehook
        with insistent_interrupt():
            thing = Thing()
            ref = weakref.ref(thing, lambda _r: 1 / 0)
            del thing
            gc.collect()
        print((signal.getsignal(signal.SIGINT), sys.unraisablehook) == before)
    """)
    assert out.stdout.strip() == "True"
    assert "ZeroDivisionError" in out.stderr


def test_a_plain_ctrl_c_still_raises_keyboard_interrupt_at_once():
    proc = subprocess.Popen([sys.executable, "-c", "import time\nfrom sycam.cli import insistent_interrupt\n"
                             "with insistent_interrupt():\n    print('ready', flush=True)\n    time.sleep(30)\n"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
