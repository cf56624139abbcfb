"""Text that arrives after DashScope failed the task never masks the task's own error.

Found by the soak (3 calls in 10,000 answered INTERNAL ``InvalidTaskState``):
the reader had queued task-failed, then the feeder sent the caller's next
fragment (or the finish of a half-close) to the failed task, and its error
replaced task-failed in the queue. The caller must see DashScope's code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb

from sidecar.call import Call, Command, Finish, Flush, Text
from sidecar.emulator import Emulator
from sidecar.errors import UpstreamTaskFailed
from sidecar.rpc._config import resolve
from tests.conftest import StartSidecar
from tests.helpers import assert_pool_settles, eventually
from tests.timing import scaled


@pytest.mark.parametrize("then", [Text("More text after the failure."), Finish()])
async def test_the_caller_sees_task_failed_not_the_feeders_late_send(
    start_sidecar: StartSidecar, emulator: Emulator, then: Command
) -> None:
    emulator.update_knobs(fail_mid_every=1, fail_message="Internal server error.")
    server = await start_sidecar()
    call = Call(
        server.pool, server.config, resolve(pb.SynthesisConfig(), server.config), request_id="r"
    )
    more = asyncio.Event()

    async def commands() -> AsyncIterator[Command]:
        yield Text("A short sentence.")
        yield Flush()
        await more.wait()  # the caller's next command comes after the task failed
        yield then

    async def write() -> None:
        """This test is the writer: it reads nothing until the feeder has sent
        the late command to the task the reader saw fail."""
        async with call.running(commands(), acquire_timeout=scaled(5)):
            task = call._task
            assert task is not None
            await eventually(lambda: task.state.is_over, what="the reader saw task-failed")
            more.set()
            feeder = call._feeder
            assert feeder is not None
            await asyncio.wait_for(asyncio.shield(feeder), scaled(5))
            while True:  # audio, if any, then the call's error (the writer raises it)
                event = await call.events.get()
                if isinstance(event, BaseException):
                    raise event

    with pytest.raises(UpstreamTaskFailed) as info:
        await write()
    assert info.value.code == "InternalError"
    await assert_pool_settles(server, emulator)
