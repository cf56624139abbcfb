"""An upstream deadline that passes as the call is being stopped never keeps the lease.

The deadlines and the call's exit both cancel the reader. When both cancels
come in the same loop turn, the reader sees one CancelledError: it must not
take it for the deadline alone and wait to queue the timeout error in a queue
nobody drains any more, which would hold the call's exit (and its
connection) for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb

from sidecar.call import FLUSHED, Call, Command, Flush, Text
from sidecar.emulator import Emulator
from sidecar.rpc._config import resolve
from tests.conftest import StartSidecar
from tests.helpers import assert_pool_settles, eventually
from tests.timing import scaled


async def test_a_deadline_passing_as_the_call_stops_does_not_hold_the_lease(
    start_sidecar: StartSidecar, emulator: Emulator
) -> None:
    emulator.update_knobs(first_packet_delay_s=3600)  # the reader waits for audio
    server = await start_sidecar()
    call = Call(
        server.pool, server.config, resolve(pb.SynthesisConfig(), server.config), request_id="r"
    )
    never = asyncio.Event()

    async def commands() -> AsyncIterator[Command]:
        yield Text("A short sentence.")
        yield Flush()
        await never.wait()  # the caller sends nothing more
        yield Flush()

    async with asyncio.timeout(scaled(5)):
        async with call.running(commands(), acquire_timeout=scaled(5)):
            # The feeder got to the text; the reader (started first) waits for audio.
            await eventually(lambda: call._text.sent_any, what="text sent")
            while not call.events.full():  # the writer has stopped draining
                call.events.put_nowait(FLUSHED)
            reader = call._reader
            assert reader is not None
            assert not reader.done()
            # The first-audio deadline passes in the very turn the call is left: the
            # overdue cancel and the exit's cancel reach the reader together.
            call._on_overdue()
    assert reader.done()
    await assert_pool_settles(server, emulator)
