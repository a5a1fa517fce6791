"""The process's in-flight body bytes (`service.sync.inflight.BodyBudget`), on its own:
room is granted in order, waits end when bytes come back, and half-read bodies cannot
block each other for ever."""

from __future__ import annotations

import asyncio

import pytest

from service.sync.inflight import BodyBudget, BodyHold


async def _started(hold: BodyHold, n: int) -> asyncio.Task[None]:
    """`hold.grow(n)` as a task, run until it either has its bytes or waits."""
    task = asyncio.create_task(hold.grow(n))
    await asyncio.sleep(0)
    return task


async def test_bytes_within_the_budget_are_granted_at_once() -> None:
    budget = BodyBudget(1000)
    first, second = budget.hold(), budget.hold()

    assert first.try_grow(600)
    assert second.try_grow(400)

    assert (budget.used, first.held, second.held) == (1000, 600, 400)


async def test_a_body_waits_for_room_until_another_is_released() -> None:
    budget = BodyBudget(1000)
    first = budget.hold()
    await first.grow(800)
    first.settle()  # read and decoded: its page is being stored
    second = budget.hold()

    waiting = await _started(second, 500)

    assert not waiting.done()
    assert (budget.used, second.held) == (800, 0)
    first.release()
    await waiting
    assert (budget.used, second.held, budget.peak) == (500, 500, 800)


async def test_room_is_granted_in_order() -> None:
    """A small request does not overtake a larger one that waits before it."""
    budget = BodyBudget(1000)
    first = budget.hold()
    await first.grow(900)
    first.settle()
    large, small = budget.hold(), budget.hold()
    large.settle()  # neither is the oldest body being read: no way past the budget
    small.settle()

    waiting_large = await _started(large, 500)
    waiting_small = await _started(small, 50)

    assert not waiting_small.done()  # 50 would fit, but 500 asked first
    first.release()
    await asyncio.gather(waiting_large, waiting_small)
    assert budget.used == 550


async def test_a_cancelled_wait_leaves_the_line() -> None:
    budget = BodyBudget(1000)
    first = budget.hold()
    await first.grow(900)
    first.settle()
    cancelled, behind = budget.hold(), budget.hold()
    cancelled.settle()
    behind.settle()
    waiting = await _started(cancelled, 500)
    waiting_behind = await _started(behind, 50)

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await waiting_behind  # the 50 behind it fit now

    assert (budget.used, cancelled.held, behind.held) == (950, 0, 50)


async def test_half_read_bodies_do_not_wait_for_each_other_for_ever() -> None:
    """Two bodies being read hold the whole budget and both want more: the one that
    started first is let past it, the other waits for it."""
    budget = BodyBudget(1000)
    older, younger = budget.hold(), budget.hold()
    await older.grow(500)
    await younger.grow(500)

    younger_waits = await _started(younger, 300)
    await older.grow(300)  # would wait for ever if it waited

    assert not younger_waits.done()
    assert budget.used == 1300  # past the budget by part of one body
    older.release()
    await younger_waits
    assert (budget.used, budget.peak) == (800, 1300)


async def test_nobody_goes_past_the_budget_while_a_page_in_hand_will_free_room() -> None:
    """A page in its caller's hands comes back without anyone's help: the oldest body
    being read waits for that rather than take the process past its budget."""
    budget = BodyBudget(1000)
    done, reading = budget.hold(), budget.hold()
    await done.grow(700)
    done.settle()
    await reading.grow(300)

    waiting = await _started(reading, 200)

    assert not waiting.done()
    done.release()
    await waiting
    assert budget.peak == 1000


async def test_a_page_fetched_ahead_does_not_block_the_one_before_it() -> None:
    """A page fetched ahead and done, but not handed over (its caller takes the earlier
    page first), frees nothing: the earlier page, still being read, is let past."""
    budget = BodyBudget(1000)
    earlier, ahead = budget.hold(), budget.hold()
    await earlier.grow(300)
    await ahead.grow(700)  # read whole; waits for `earlier` to be taken first

    await earlier.grow(200)  # would wait for ever if it waited

    assert budget.used == 1200


async def test_release_gives_everything_back_once() -> None:
    budget = BodyBudget(1000)
    hold = budget.hold()
    await hold.grow(400)
    hold.charge(100)  # counted after the fact: already in memory
    hold.settle()

    hold.release()
    hold.release()

    assert (budget.used, hold.held) == (0, 0)


async def test_without_a_limit_bytes_are_counted_and_never_waited_for() -> None:
    budget = BodyBudget(None)
    hold = budget.hold()

    assert hold.try_grow(10**12)

    assert budget.peak == 10**12


async def test_a_kept_page_stays_counted_until_it_is_let_go() -> None:
    budget = BodyBudget(1000)
    hold = budget.hold()
    hold.charge(600)
    hold.settle()
    hold.keep()  # a ledger holds the page for its next commit

    hold.release()  # what the engine does once the caller asks for the next page
    assert budget.used == 600
    assert not budget.hold().try_grow(500)  # no room: the kept bytes are still there

    hold.let_go()
    assert budget.used == 0
    hold.release()  # idempotent still
    assert budget.used == 0
