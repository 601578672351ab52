"""The blocking-call guard of tests/conftest.py fails tests whose event loop computed > 50 ms in one
callback, or was blocked > 1 s off the CPU (sleep, blocking I/O).

Runs a small test file in a fresh pytest process (pytester) with this repository's conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")

TESTS = """
import asyncio
import time

import pytest


def burn(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def test_sleeps_in_a_coroutine():
    time.sleep(1.2)


async def test_computes_in_a_coroutine():
    burn(0.08)


async def test_short_sleep_is_not_flagged():
    time.sleep(0.1)  # off the CPU: cannot be told from waiting for the GIL on a loaded box


async def test_blocks_in_a_callback():
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def slow_callback():
        burn(0.08)
        done.set_result(None)

    loop.call_soon(slow_callback)
    await done


@pytest.fixture
async def blocking_fixture():
    yield
    burn(0.1)  # at teardown


async def test_blocks_in_a_fixture_teardown(blocking_fixture):
    pass


async def test_awaits_instead():
    await asyncio.sleep(0.1)
    await asyncio.to_thread(time.sleep, 0.1)


@pytest.mark.allow_blocking(reason="demonstrates the opt-out")
async def test_blocks_but_is_allowed():
    time.sleep(0.1)


def test_sync_tests_are_not_watched():
    time.sleep(0.1)
"""


def test_guard_fails_tests_that_block_the_event_loop(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini(
        "[pytest]\n"
        "asyncio_mode = auto\n"
        "asyncio_default_fixture_loop_scope = function\n"
        "markers =\n    allow_blocking(reason): may block the event loop\n"
    )
    pytester.makepyfile(test_blocking=TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-W", "error::pytest.PytestUnknownMarkWarning"
    )
    # each blocking test passes its body, then errors at teardown
    result.assert_outcomes(passed=8, errors=4)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_sleeps_in_a_coroutine*",
            "*blocked the event loop (more than 50 ms of CPU or 1000 ms off it*",
            "*Executing <Task*test_sleeps_in_a_coroutine*took 1.2*",
            "*ERROR at teardown of test_computes_in_a_coroutine*",
            "*ERROR at teardown of test_blocks_in_a_callback*",
            "*Executing <Handle*slow_callback*took 0.*",
            "*ERROR at teardown of test_blocks_in_a_fixture_teardown*",
        ],
        consecutive=False,
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_awaits_instead*")
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_short_sleep_is_not_flagged*")
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_blocks_but_is_allowed*")
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_sync_tests_are_not_watched*")
