import asyncio

from shared.batching import Batcher


async def test_calls_arriving_while_a_flush_is_in_flight_go_together_in_the_next_one():
    flushed: list[tuple[str, list[int]]] = []
    release = asyncio.Event()

    async def flush(key, items):
        flushed.append((key, items))
        if len(flushed) == 1:
            await release.wait()
        return [i * 10 for i in items]

    b = Batcher(flush, max_batch=3)
    first = asyncio.create_task(b.submit("a", 1))
    await asyncio.sleep(0.01)  # the first is in flight, alone
    rest = [asyncio.create_task(b.submit("a", i)) for i in (2, 3, 4, 5)]
    other = asyncio.create_task(b.submit("b", 6))  # another key does not wait for "a"
    await asyncio.sleep(0.01)
    assert await other == 60
    release.set()
    assert await first == 10 and await asyncio.gather(*rest) == [20, 30, 40, 50]
    assert flushed == [("a", [1]), ("b", [6]), ("a", [2, 3, 4]), ("a", [5])]


async def test_a_failed_flush_fails_every_call_of_its_batch_and_the_next_batch_still_runs():
    async def flush(key, items):
        if 0 in items:
            raise ValueError("boom")
        return items

    b = Batcher(flush)
    results = await asyncio.gather(b.submit(None, 1), b.submit(None, 0), return_exceptions=True)
    assert [type(r) for r in results] == [ValueError, ValueError]
    assert await b.submit(None, 7) == 7


async def test_a_flush_giving_the_wrong_number_of_results_is_an_error_for_each_caller():
    async def flush(key, items):
        return items[:1]

    b = Batcher(flush)
    results = await asyncio.gather(b.submit(None, 1), b.submit(None, 2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
