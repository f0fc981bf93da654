"""Dead letters on the dashboard, in a real headless chromium over real pipeline runs: a run's
page lists the steps that failed for good; with the token (and a broker) Replay runs one again:
its value shown and the row gone, or, failing again, the row kept and the error shown as text.
Without the token there is no button and the action is refused."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from headless import Page, headless_page
from taskiq import InMemoryBroker

from taskiq_flow import (
    DataflowPipeline,
    DeadLetter,
    DeadLetterQueue,
    PipelineTrackingManager,
    StepFailedError,
    pipeline_task,
)
from taskiq_flow.dashboard import serve
from taskiq_flow.distributed import RedisPipelineStorage
from tests.test_dashboard import HOSTILE, _evil_site, _wait_event, only_own_requests, until_js
from tests.test_dashboard_redis import CLI
from tests.test_dead_letters_redis import dl_app, dl_workers
from tests.test_distributed import TESTS

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["dl_app", "dl_workers"]  # fixtures of the Redis test, used here

ROWS = "Array.from(document.querySelectorAll('#letters tr'))"


class Payments:
    """The cause of the failures: down until the test fixes it; a gate holds each call."""

    def __init__(self, error: str = "payment service unavailable") -> None:
        self.up = False
        self.error = error
        self.gate = asyncio.Event()
        self.gate.set()
        self.called = asyncio.Event()
        self.calls = 0


def payment_pipeline(
    broker: InMemoryBroker, payments: Payments, tracking: PipelineTrackingManager
) -> DataflowPipeline:
    @broker.task
    @pipeline_task(output="receipt")
    async def charge(order: int) -> dict[str, Any]:
        payments.calls += 1
        payments.called.set()
        await payments.gate.wait()
        if not payments.up:
            raise RuntimeError(f"{payments.error} (order {order})")
        return {"order": order, "charged": True}

    pipeline = DataflowPipeline.from_tasks(broker, [charge], name="pay")
    return pipeline.with_tracking(tracking).with_retry(max_attempts=2, delay=0.01)


async def _post(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(url, headers=headers) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body


async def _cells(page: Page) -> list[list[str]]:
    rows: list[list[str]] = await page.evaluate(
        f"{ROWS}.map(tr => Array.from(tr.children).map(td => td.textContent))"
    )
    return rows


async def _click_replay(page: Page, letter: str) -> None:
    button = f"document.querySelector('#letters button.replay[data-letter=\"{letter}\"]')"
    assert await page.evaluate(f"{button} !== null && !{button}.disabled")
    await page.evaluate(f"{button}.click()")


async def test_a_dead_letter_is_listed_and_replayed_from_its_runs_page(
    broker: InMemoryBroker, tmp_path: Path
) -> None:
    """The page is open while the step fails: its dead letter appears; Replay while the cause
    is not fixed keeps it and says why; once fixed, Replay shows the value and the row goes."""
    payments = Payments()
    payments.gate.clear()
    tracking = PipelineTrackingManager()
    queue = DeadLetterQueue()
    pipeline = payment_pipeline(broker, payments, tracking).with_dead_letters(queue)
    run = asyncio.create_task(pipeline.kiq_dataflow(order=7))
    await asyncio.wait_for(payments.called.wait(), 10)
    run_id = pipeline.pipeline_id
    async with (
        await serve(tracking, dead_letters=queue, broker=broker) as server,
        headless_page(tmp_path / "profile") as page,
    ):
        load = await page.open(f"{server.base_url}/runs/{run_id}?token={server.token}")
        await until_js(page, "document.body.dataset.ready === '1'")
        assert await page.evaluate(ROWS + ".length") == 0
        assert await page.evaluate("document.getElementById('letters-none').hidden") is False
        payments.gate.set()  # both attempts fail: a dead letter
        with pytest.raises(StepFailedError, match="payment service unavailable"):
            await asyncio.wait_for(run, 10)
        [record] = queue.list(run_id)
        await until_js(page, ROWS + ".length === 1")
        assert await page.evaluate("document.body.dataset.letters") == "1"
        [cells] = await _cells(page)
        assert cells[:5] == [
            record.id,
            "charge",
            record.task_name,
            "2",
            "RuntimeError: payment service unavailable (order 7)",
        ]
        assert cells[5].startswith("20") and cells[5].endswith("Z")  # when, in UTC
        assert await page.evaluate("document.getElementById('letters-none').hidden")

        # Replayed while the cause is not fixed: it fails again, the row stays and says why.
        await _click_replay(page, record.id)
        said = await until_js(
            page,
            "(e => e && e.textContent)(document.querySelector("
            f"'#letters tr[data-letter=\"{record.id}\"] .outcome'))",
        )
        assert said.startswith("replay failed (409): the replay of step 'charge' failed again")
        assert "payment service unavailable (order 7)" in said
        assert queue.list(run_id) == [record] and payments.calls == 3
        assert await page.evaluate(ROWS + ".length") == 1

        payments.up = True  # the cause, fixed
        await until_js(page, "!document.querySelector('#letters button.replay').disabled")
        await _click_replay(page, record.id)
        note = await until_js(
            page,
            "(e => e.dataset.replayed && e.textContent)(document.getElementById('letters-note'))",
        )
        assert note == f'replayed {record.id} (step charge): {{"order":7,"charged":true}}'
        await until_js(page, ROWS + ".length === 0")
        assert queue.list(run_id) == [] and payments.calls == 4
        # The feed says so too (it read the run's dead letters anew after the replay).
        await until_js(page, "document.body.dataset.letters === '0'")
        assert await page.evaluate(ROWS + ".length") == 0
        assert load.problems == []
        only_own_requests(load, server.base_url)


async def test_without_the_token_or_a_broker_a_dead_letter_is_only_read(
    broker: InMemoryBroker, tmp_path: Path
) -> None:
    """An error holding markup shows as text, with no console error; without the token there is
    no Replay button and the action is refused (401, 403 through the cookie without the CSRF
    token, a form of another site refused); without a broker, 503."""
    payments = Payments(error=HOSTILE)
    tracking = PipelineTrackingManager()
    queue = DeadLetterQueue()
    pipeline = payment_pipeline(broker, payments, tracking).with_dead_letters(queue)
    with pytest.raises(StepFailedError):
        await asyncio.wait_for(pipeline.kiq_dataflow(order=1), 10)
    run_id = pipeline.pipeline_id
    [record] = queue.list(run_id)
    async with await serve(tracking, dead_letters=queue, broker=broker) as server:
        base = server.base_url
        target = f"{base}/api/runs/{run_id}/dead-letters/{record.id}/replay"
        evil = await _evil_site(target)
        try:
            assert (await _post(target))[0] == 401
            assert (await _post(target, {"Authorization": "Bearer wrong"}))[0] == 401
            async with headless_page(tmp_path / "profile") as page:
                load = await page.open(f"{base}/runs/{run_id}")
                await until_js(page, "document.body.dataset.ready === '1'")
                await until_js(page, ROWS + ".length === 1")
                [cells] = await _cells(page)
                assert cells == [
                    record.id,
                    "charge",
                    record.task_name,
                    "2",
                    f"RuntimeError: {HOSTILE} (order 1)",
                    cells[5],
                ]
                assert await page.evaluate("document.querySelectorAll('#letters img').length") == 0
                assert await page.evaluate("window.pwned === undefined")
                assert await page.evaluate("document.querySelector('button.replay') === null")
                fetch = f"fetch('{target}', {{method: 'POST'}}).then(r => r.status)"
                assert await page.evaluate(fetch) == 401
                assert load.problems == []
                # With the session cookie but no CSRF header (any script could do that): 403.
                await page.open(f"{base}/runs/{run_id}?token={server.token}")
                await until_js(page, ROWS + ".length === 1")
                assert await page.evaluate("document.querySelector('button.replay') !== null")
                assert await page.evaluate(fetch) == 403
                # A form on another site (the cookie is sent): refused.
                await page.open(evil.url)
                await page.evaluate("document.forms[0].submit()")
                await _wait_event(page, "Page.loadEventFired")
                assert "refused" in await page.evaluate("document.body.innerText")
            assert queue.list(run_id) == [record] and payments.calls == 2
            bearer = {"Authorization": f"Bearer {server.token}"}
            # Unknown ids, and a letter asked for under another run: 404, nothing sent.
            missing = f"{base}/api/runs/{run_id}/dead-letters/nope/replay"
            assert (await _post(missing, bearer))[0] == 404
            other = f"{base}/api/runs/another-run/dead-letters/{record.id}/replay"
            assert (await _post(other, bearer))[0] == 404
            # A task the broker does not know: 409, nothing sent, the record kept.
            stranger = DeadLetter(run_id, "ship", "app:ship", (1,), {}, "E: x", "E", 1)
            queue.add(stranger)
            url = f"{base}/api/runs/{run_id}/dead-letters/{stranger.id}/replay"
            status, body = await _post(url, bearer)
            assert status == 409 and "no task named 'app:ship'" in body["error"]
            assert queue.remove(stranger.id) is stranger
            assert payments.calls == 2
        finally:
            await evil.close()

    # Served without a broker: no button even with the token, and the action says why.
    async with await serve(tracking, dead_letters=queue) as server:
        async with headless_page(tmp_path / "profile2") as page:
            load = await page.open(f"{server.base_url}/runs/{run_id}?token={server.token}")
            await until_js(page, ROWS + ".length === 1")
            assert await page.evaluate("document.getElementById('delete-run') !== null")
            assert await page.evaluate("document.querySelector('button.replay') === null")
            assert load.problems == []
        bearer = {"Authorization": f"Bearer {server.token}"}
        status, body = await _post(
            f"{server.base_url}/api/runs/{run_id}/dead-letters/{record.id}/replay", bearer
        )
        assert status == 503 and "--broker" in body["error"] and "serve(" in body["error"]
    assert queue.list(run_id) == [record] and payments.calls == 2


async def test_a_replay_under_way_leaves_the_dashboard_answering(
    broker: InMemoryBroker,
) -> None:
    """The replay is awaited in the server's loop: while its task runs, pages are still served,
    a second replay of the same letter is refused (409), and the first answers once done."""
    payments = Payments()
    tracking = PipelineTrackingManager()
    queue = DeadLetterQueue()
    pipeline = payment_pipeline(broker, payments, tracking).with_dead_letters(queue)
    with pytest.raises(StepFailedError):
        await asyncio.wait_for(pipeline.kiq_dataflow(order=3), 10)
    run_id = pipeline.pipeline_id
    [record] = queue.list(run_id)
    async with await serve(tracking, dead_letters=queue, broker=broker) as server:
        url = f"{server.base_url}/api/runs/{run_id}/dead-letters/{record.id}/replay"
        bearer = {"Authorization": f"Bearer {server.token}"}
        payments.up, payments.called = True, asyncio.Event()
        payments.gate.clear()
        first = asyncio.create_task(_post(url, bearer))
        await asyncio.wait_for(payments.called.wait(), 10)  # its task runs, held
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.base_url}/runs/{run_id}") as r:
                assert r.status == 200
            why = f"{server.base_url}/api/runs/{run_id}/steps/0/why"
            async with session.get(why) as r:
                assert r.status == 200
        status, body = await _post(url, bearer)
        assert status == 409 and "being replayed already" in body["error"]
        assert not first.done()
        payments.gate.set()
        status, body = await asyncio.wait_for(first, 10)
        assert status == 200
        assert body == {
            "id": record.id,
            "run": run_id,
            "replayed": True,
            "step": "charge",
            "value": {"order": 3, "charged": True},
        }
        assert queue.list(run_id) == []
        assert (await _post(url, bearer))[0] == 404  # gone


# -- over Redis: `taskiq-flow dashboard --broker`, real workers ----------------------------------


async def test_over_redis_the_dashboard_process_replays_through_real_workers(
    redis: Redis, redis_url: str, dl_workers: dict[str, str], dl_app: Any, tmp_path: Path
) -> None:
    """A step fails for good on a `taskiq worker`; `taskiq-flow dashboard --redis URL --broker
    dead_letters_app:broker`, in a process of its own, lists its dead letter (kept in Redis by
    the run), replays it failing again (kept, the error shown), then, once the cause is fixed,
    through the workers: the value shown, the record gone from Redis."""
    storage = RedisPipelineStorage(redis, prefix="dldash")
    pipeline = DataflowPipeline.from_tasks(dl_app.broker, [dl_app.charge])
    pipeline.with_tracking(PipelineTrackingManager(storage)).with_retry(max_attempts=2, delay=0.01)
    with pytest.raises(StepFailedError, match="payment service unavailable for order 7"):
        await asyncio.wait_for(pipeline.kiq_dataflow(order=7, note={"lines": [1, 2]}), 60)
    run_id = pipeline.pipeline_id
    [member] = await redis.smembers(f"dldash:run:{run_id}:deadletters")
    letter = member.decode()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLI,
        "--redis",
        redis_url,
        "--prefix",
        "dldash",
        "--port",
        "0",
        "--broker",
        "dead_letters_app:broker",
        "--replay-timeout",
        "60",
        cwd=TESTS,
        env=dl_workers,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        first = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        second = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        base = re.search(r"serving (http://\S+)", first)
        token = re.search(r"\?token=(\S+)", second)
        assert base and token, (first, second, await process.stderr.read(2000))
        async with headless_page(tmp_path / "profile") as page:
            load = await page.open(f"{base.group(1)}/runs/{run_id}?token={token.group(1)}")
            await until_js(page, ROWS + ".length === 1", timeout=20)
            [cells] = await _cells(page)
            assert cells[:5] == [
                letter,
                "charge",
                dl_app.charge.task_name,
                "2",
                "RemoteTaskError: RuntimeError: payment service unavailable for order 7",
            ]
            await _click_replay(page, letter)
            said = await until_js(
                page,
                "(e => e && e.textContent)(document.querySelector("
                f"'#letters tr[data-letter=\"{letter}\"] .outcome'))",
                timeout=60,
            )
            assert said.startswith("replay failed (409): the replay of step 'charge' failed")
            assert "payment service unavailable for order 7" in said
            assert await redis.exists(f"dldash:deadletter:{letter}")

            await redis.set("payments:up", 1)  # the cause, fixed
            await until_js(page, "!document.querySelector('#letters button.replay').disabled")
            await _click_replay(page, letter)
            note = await until_js(
                page,
                "(e => e.dataset.replayed && e.textContent)"
                "(document.getElementById('letters-note'))",
                timeout=60,
            )
            value = {"order": 7, "note": {"lines": [1, 2]}, "charged": True}
            assert note == f"replayed {letter} (step charge): " + json.dumps(
                value, separators=(",", ":")
            )
            await until_js(page, "document.body.dataset.letters === '0'", timeout=20)
            assert load.problems == []
            only_own_requests(load, base.group(1))
        assert not await redis.exists(f"dldash:deadletter:{letter}")
        assert await redis.smembers(f"dldash:run:{run_id}:deadletters") == set()
        assert int(await redis.get("charge:7:calls")) == 4  # 2 attempts, 2 replays
    finally:
        process.terminate()
        code = await asyncio.wait_for(process.wait(), 30)
        err = (await process.stderr.read()).decode()
    assert code == 0, err
    assert "Traceback" not in err, err
