"""`StopOnSignal`, the driver's SIGTERM / SIGINT handling, with real signals sent to this process
(the end-to-end runs through the CLI are in test_trainer_faults.py): in the training loop a first
signal only asks the loop to stop after its step, a second one, or one outside the loop, stops at
once as RunStopped with exit status 128 + the signal; the previous handlers come back afterwards."""

from __future__ import annotations

import signal

import pytest

from distill_ray.pipeline.driver import RunStopped, StopOnSignal


@pytest.fixture
def handlers():
    before = {s: signal.getsignal(s) for s in StopOnSignal.SIGNALS}
    yield before
    for s, handler in before.items():  # whatever the test did, leave pytest's handlers as they were
        signal.signal(s, handler)


def test_in_the_loop_a_first_signal_asks_to_stop_after_the_step_and_a_second_stops_at_once(handlers, capfd):
    with pytest.raises(RunStopped) as info:
        with StopOnSignal() as stop:
            stop.install()
            stop.in_loop = True
            signal.raise_signal(signal.SIGINT)
            assert stop.requested and stop.name == "SIGINT"  # no exception: the step under way goes on
            assert "[run] SIGINT: stopping after the step under way, with a checkpoint of it" in capfd.readouterr().err
            signal.raise_signal(signal.SIGINT)
            pytest.fail("a second SIGINT did not stop at once")
    assert info.value.exit_status == 130
    assert str(info.value).startswith("stopped at once by a second SIGINT; --resume continues")
    assert "\n" not in str(info.value)
    assert {s: signal.getsignal(s) for s in StopOnSignal.SIGNALS} == handlers  # restored


def test_outside_the_loop_a_signal_stops_at_once_with_its_exit_status(handlers):
    with pytest.raises(RunStopped) as info:
        with StopOnSignal() as stop:
            stop.install()
            signal.raise_signal(signal.SIGTERM)
            pytest.fail("SIGTERM outside the loop did not stop at once")
    assert info.value.exit_status == 143 and str(info.value).startswith("stopped at once by SIGTERM;")
    assert {s: signal.getsignal(s) for s in StopOnSignal.SIGNALS} == handlers


def test_a_sigterm_after_a_ctrl_c_is_named_and_sets_the_exit_status(handlers):
    with pytest.raises(RunStopped) as info:
        with StopOnSignal() as stop:
            stop.install()
            stop.in_loop = True
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGTERM)
    assert info.value.exit_status == 143 and str(info.value).startswith("stopped at once by SIGTERM after SIGINT;")


def test_a_graceful_stop_raised_by_the_loop_passes_through_unchanged(handlers):
    with pytest.raises(RunStopped) as info:
        with StopOnSignal() as stop:
            stop.install()
            stop.in_loop = True
            signal.raise_signal(signal.SIGTERM)
            raise RunStopped("stopped by SIGTERM after step 3: ...", stop.signum)  # what the loop does after saving
    assert info.value.exit_status == 143 and str(info.value) == "stopped by SIGTERM after step 3: ..."
    assert {s: signal.getsignal(s) for s in StopOnSignal.SIGNALS} == handlers
